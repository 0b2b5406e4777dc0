"""Figures of merit, binary-FOM MRMC, per-reader performance table and power."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from reader_study.analysis import (
    ReaderStudyData,
    dbm_analysis,
    or_analysis,
    or_power,
    read_ratings,
    reader_performance,
    sample_size_cases,
)
from reader_study.analysis.anova import two_way_ms
from reader_study.analysis.covariance import jackknife_covariance
from reader_study.analysis.fom import (
    average_roc,
    binary_components,
    jackknife_fom,
    placement_values,
    roc_points,
)
from reader_study.analysis.or_ import or_from_fom_covariance

from .published import FIXTURES

REF = json.loads((FIXTURES / "reference_values.json").read_text())


@functools.cache
def vandyke() -> ReaderStudyData:
    return read_ratings(FIXTURES / "vandyke_long.csv")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    neg = rng.integers(1, 6, size=(3, 40)).astype(float)
    pos = rng.integers(2, 7, size=(3, 25)).astype(float)
    auc, v10, v01 = placement_values(neg, pos)
    for i in range(3):
        y = np.r_[np.zeros(40), np.ones(25)]
        assert auc[i] == pytest.approx(roc_auc_score(y, np.r_[neg[i], pos[i]]), rel=1e-12)
        assert v10[i].mean() == pytest.approx(v01[i].mean(), rel=1e-12)


def test_vandyke_reader_aucs_match_reference() -> None:
    ref = REF["VanDyke"]["auc"]
    res = or_analysis(vandyke())
    np.testing.assert_allclose(res.fom_values, [ref["trt1"], ref["trt2"]], atol=5e-9)


def test_roc_points_area_is_the_auc_and_average_curve() -> None:
    data = vandyke()
    curves = []
    for j in range(data.n_readers):
        f, t = roc_points(data.negatives()[0, j], data.positives()[0, j])
        assert np.all(np.diff(f) >= 0) and np.all(np.diff(t) >= 0)
        assert (f[0], t[0], f[-1], t[-1]) == (0.0, 0.0, 1.0, 1.0)
        assert np.trapezoid(t, f) == pytest.approx(or_analysis(data).fom_values[0, j], rel=1e-12)
        curves.append((f, t))
    grid, tpr = average_roc(curves, np.linspace(0, 1, 2001))
    assert np.trapezoid(tpr, grid) == pytest.approx(np.mean(or_analysis(data).fom_values[0]), abs=2e-3)


def _brute_binary_jackknife(data: ReaderStudyData, threshold: float, fom: str) -> np.ndarray:
    dec = data.ratings >= threshold
    t, r, k = data.ratings.shape
    out = np.empty((t, r, k))
    for kk in range(k):
        keep = np.arange(k) != kk
        if fom == "sensitivity":
            sel = keep & (data.truth == 1)
            out[:, :, kk] = dec[:, :, sel].mean(axis=2)
        else:
            sel = keep & (data.truth == 0)
            out[:, :, kk] = (~dec[:, :, sel]).mean(axis=2)
    return out


@pytest.mark.parametrize("fom", ["sensitivity", "specificity"])
def test_binary_fom_mrmc_matches_brute_force_jackknife(fom: str) -> None:
    data = vandyke()
    sc = binary_components(data, fom, threshold=3)
    jk = _brute_binary_jackknife(data, 3, fom)
    np.testing.assert_allclose(jackknife_fom(sc), jk, rtol=1e-12, atol=1e-15)
    expected = or_from_fom_covariance(jk.mean(axis=2) * 0 + sc.theta, jackknife_covariance(jk),
                                      modalities=data.modalities, readers=data.readers,
                                      n_negative=data.n_negative, n_positive=data.n_positive, fom=fom)
    res = or_analysis(data, fom=fom, threshold=3)
    assert res.rrrc.global_test.statistic == pytest.approx(expected.rrrc.global_test.statistic, rel=1e-10)
    assert res.rrrc.differences[0].se == pytest.approx(expected.rrrc.differences[0].se, rel=1e-10)
    # the FOM itself is the plain proportion
    pos = data.positives() >= 3
    neg = data.negatives() < 3
    np.testing.assert_allclose(res.fom_values, pos.mean(axis=2) if fom == "sensitivity" else neg.mean(axis=2))
    # DBM on the same FOM agrees with OR for RRRC (jackknife identity)
    d = dbm_analysis(data, fom=fom, threshold=3)
    assert d.rrrc.global_test.statistic == pytest.approx(res.rrrc.global_test.statistic, rel=1e-9)


def test_binary_fom_needs_threshold_for_graded_ratings() -> None:
    with pytest.raises(ValueError, match="threshold"):
        or_analysis(vandyke(), fom="sensitivity")


def test_two_way_ms_equals_statsmodels_anova() -> None:
    import pandas as pd
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    y = or_analysis(vandyke()).fom_values
    ms = two_way_ms(y)
    df = pd.DataFrame([(t, r, y[t, r]) for t in range(2) for r in range(5)], columns=["t", "r", "y"])
    tab = sm.stats.anova_lm(smf.ols("y ~ C(t) + C(r)", df).fit())
    assert ms["T"] == pytest.approx(tab.loc["C(t)", "mean_sq"], rel=1e-10)
    assert ms["R"] == pytest.approx(tab.loc["C(r)", "mean_sq"], rel=1e-10)
    assert ms["TR"] == pytest.approx(tab.loc["Residual", "mean_sq"], rel=1e-10)


def test_reader_performance_counts_and_wilson_intervals() -> None:
    data = vandyke()
    ai = data.ratings[1].mean(axis=0)
    perf = reader_performance(data, threshold=3, ai_ratings=ai)
    assert len(perf.rows) == 2 * (5 + 1)
    row = perf.rows[0]
    x, y = data.negatives()[0, 0], data.positives()[0, 0]
    assert row.tp == int((y >= 3).sum()) and row.fn == int((y < 3).sum())
    assert row.tn == int((x < 3).sum()) and row.fp == int((x >= 3).sum())
    lo, hi = proportion_confint(row.tp, row.tp + row.fn, method="wilson")
    assert row.sensitivity_ci == pytest.approx((lo, hi), rel=1e-10)
    lo, hi = proportion_confint(row.tn, row.tn + row.fp, method="wilson")
    assert row.specificity_ci == pytest.approx((lo, hi), rel=1e-10)
    assert row.auc == pytest.approx(0.91964573, abs=5e-9)
    # DeLong SE of one reader equals the square root of the DeLong variance
    o = or_analysis(data, cov="delong")
    assert row.auc_se == pytest.approx(np.sqrt(o.fom_covariance[0, 0]), rel=1e-10)
    assert perf.rows[5].reader == "AI"
    assert set(perf.frame().columns) >= {"auc", "auc_low", "sensitivity_high", "ppv"}
    json.dumps(perf.to_dict())


# ---------------------------------------------------------------- power
# RJafroc (dpc10ster/RJafroc tests/testthat/test-SsSampleSizeRoc.R): OR, Van Dyke pilot
@pytest.mark.parametrize(("analysis", "effect", "j", "k", "expected"), [
    ("RRRC", -0.043800322, 10, 165, 0.80541995),
    ("FRRC", -0.043800322, 10, 131, 0.80091813),
    ("RRFC", -0.043800322, 10, 53, 0.80496663),
    ("RRRC", None, 6, 111, 0.5526116),
])
def test_power_matches_rjafroc(analysis, effect, j, k, expected) -> None:
    res = or_analysis(vandyke())
    eff = res.rrrc.differences[0].estimate if effect is None else effect
    p = or_power(res.components, effect=eff, n_readers=j, n_cases=k, analysis=analysis)
    assert p.power == pytest.approx(expected, abs=5e-8)


def test_sample_size_matches_rjafroc() -> None:
    res = or_analysis(vandyke())
    ss = sample_size_cases(res.components, effect=res.rrrc.differences[0].estimate, n_readers=6)
    assert ss.n_cases == 251  # RJafroc SsSampleSizeKGivenJ(dataset02, J = 6)
    franken = or_analysis(read_ratings(FIXTURES / "franken_long.csv"))
    ss = sample_size_cases(franken.components, effect=0.05, n_readers=6)
    assert ss.power == pytest.approx(0.8004469, abs=5e-8)  # RJafroc dataset03, J = 6


def test_power_is_alpha_without_effect_and_grows_with_cases() -> None:
    c = or_analysis(vandyke()).components
    assert or_power(c, effect=0.0, n_readers=5, n_cases=100).power == pytest.approx(0.05, rel=1e-9)
    p = [or_power(c, effect=0.04, n_readers=5, n_cases=k).power for k in (50, 100, 200, 400)]
    assert np.all(np.diff(p) > 0)
