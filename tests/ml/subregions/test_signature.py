"""Habitat signature and the marker association table against independent computations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression

from ml.subregions.signature import (
    encode_marker,
    habitat_signature,
    marker_association,
    rank_biserial,
)


def test_signature_fractions_sum_to_one_and_stats_per_habitat():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(10, 10, 10))  # 0 outside, habitats 1..3 (h = 0..2)
    suv = rng.random(labels.shape) * 5
    ttp = rng.random(labels.shape) * 30
    sig = habitat_signature(labels, 4, suv=suv, ttp_min=ttp)
    assert sum(sig[f"frac_h{h}"] for h in range(4)) == pytest.approx(1.0)
    assert sig["frac_h3"] == 0.0 and np.isnan(sig["suvmean_h3"])  # habitat 3 absent
    for h in range(3):
        sel = labels == h + 1
        assert sig[f"frac_h{h}"] == pytest.approx(sel.sum() / (labels > 0).sum())
        assert sig[f"suvmax_h{h}"] == suv[sel].max()
        assert sig[f"ttp_h{h}"] == pytest.approx(ttp[sel].mean())
    with pytest.raises(ValueError, match="labels"):
        habitat_signature(labels, 2, suv=suv)


def _cohort(n: int = 60, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    grade = rng.choice([2, 3, 4], size=n)
    idh = np.where(grade == 4, "wildtype", np.where(rng.random(n) < 0.3, "wildtype", "mutant"))
    codel = np.where(idh == "mutant", np.where(rng.random(n) < 0.4, "codeleted", "intact"), "n/a")
    sig = pd.DataFrame({
        "frac_h0": np.clip(0.2 + 0.15 * (grade == 4) + rng.normal(0, 0.08, n), 0, 1),  # grade-related
        "suvmean_h0": rng.normal(2.0, 0.4, n),  # noise
    }, index=[f"sub-{i}/ses-01" for i in range(n)])
    markers = pd.DataFrame({"idh": idh, "codeletion_1p19q": codel, "who_grade": grade}, index=sig.index)
    return sig, markers


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values written out: q_(i) = min_{j >= i} p_(j) m / j."""
    m = len(p)
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = q
    return out


def test_association_against_scipy_and_a_hand_bh():
    sig, markers = _cohort()
    res = marker_association(sig, markers, n_boot=200, random_state=0)
    t = res.table
    assert len(t) == 6
    for marker in ("idh", "codeletion_1p19q", "who_grade"):
        y = encode_marker(marker, markers[marker].tolist())
        for feat in sig.columns:
            row = t.loc[(marker, feat)]
            ok = np.isfinite(y)
            x, yy = sig[feat].to_numpy()[ok], y[ok]
            x1, x0 = x[yy == 1], x[yy == 0]
            u = stats.mannwhitneyu(x1, x0, alternative="two-sided")
            assert row["p_mwu"] == pytest.approx(u.pvalue)
            assert row["rank_biserial"] == pytest.approx(2 * u.statistic / (len(x1) * len(x0)) - 1)
            assert row["rb_lo"] <= row["rank_biserial"] <= row["rb_hi"]
            high = x > np.median(x)
            table = [[(high & (yy == 1)).sum(), (~high & (yy == 1)).sum()],
                     [(high & (yy == 0)).sum(), (~high & (yy == 0)).sum()]]
            assert row["p_fisher"] == pytest.approx(stats.fisher_exact(table).pvalue)
            # OR per SD: unpenalised logistic regression on the standardised feature (sklearn)
            lr = LogisticRegression(C=np.inf, max_iter=1000).fit(((x - x.mean()) / x.std(ddof=1))[:, None], yy)
            assert row["or_per_sd"] == pytest.approx(np.exp(lr.coef_[0, 0]), rel=1e-3)
            assert row["or_lo"] < row["or_per_sd"] < row["or_hi"]
            assert row["n"] == ok.sum()
    for test in ("mwu", "logit", "fisher"):
        np.testing.assert_allclose(t[f"q_{test}"], _bh(t[f"p_{test}"].to_numpy()))
    # the grade-related feature is found, the noise one is not
    assert t.loc[("who_grade", "frac_h0"), "q_mwu"] < 0.001
    assert t.loc[("who_grade", "frac_h0"), "rank_biserial"] > 0.5
    assert ("who_grade", "suvmean_h0") not in res.significant(0.05).index


def test_association_output_and_errors(tmp_path):
    sig, markers = _cohort(n=30, seed=1)
    res = marker_association(sig, markers, n_boot=50)
    path = res.to_csv(tmp_path / "assoc.csv")
    back = pd.read_csv(path, index_col=[0, 1])
    assert back.shape == res.table.shape
    assert res.summary_frame()["q_mwu"].is_monotonic_increasing
    with pytest.raises(ValueError, match="same index"):
        marker_association(sig, markers.iloc[::-1])
    with pytest.raises(ValueError, match="not one of"):
        encode_marker("idh", ["wildtype", "positive"])


def test_rank_biserial_is_cliffs_delta():
    x1, x0 = np.array([3.0, 4.0, 5.0]), np.array([1.0, 2.0, 4.0])
    # pairs: greater 7, less 1, ties 1 -> (7 - 1) / 9
    assert rank_biserial(x1, x0) == pytest.approx(6 / 9)
