"""U-statistic analysis against iMRMC outputs, split-plot designs, and the AI-alone comparison."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from reader_study.analysis import (
    ReaderStudyData,
    or_analysis,
    read_ratings,
    standalone_vs_readers,
    ustat_analysis,
)

from .published import FIXTURES, close, parse_imrmc

IMRMC = {"vandyke_imrmc_output.txt": "vandyke.imrmc", "imrmc_example_output.txt": "imrmc_example.imrmc"}


@functools.cache
def ustat(name: str):
    return ustat_analysis(read_ratings(FIXTURES / name))


def value(res, key: tuple) -> float:
    kind = key[0]
    if kind == "reader_auc":
        return res.reader_auc[key[1], key[2]]
    if kind == "reader_var":
        return res.reader_var[key[1], key[2]]
    if kind == "reader_diff_var":
        return next(iter(res.reader_diff_var.values()))[key[1]]
    if kind == "modality":
        m = res.modality[key[1]]
        return m.auc if key[2] == "auc" else getattr(m, key[2])
    if kind == "diff":
        return getattr(res.differences[0], key[1])
    raise KeyError(key)


CASES = [
    pytest.param(data, key, printed, id=f"{data}-{'-'.join(map(str, key))}")
    for out, data in IMRMC.items()
    for key, printed in parse_imrmc((FIXTURES / out).read_text())
]


@pytest.mark.parametrize(("data", "key", "printed"), CASES)
def test_matches_imrmc(data: str, key: tuple, printed: str) -> None:
    actual = float(value(ustat(data), key))
    assert close(actual, printed), f"{key}: library {actual!r}, iMRMC printed {printed}"


def test_reference_values_imrmc() -> None:
    ref = json.loads((FIXTURES / "reference_values.json").read_text())["VanDyke"]["iMRMC_Ustat_computed_by_helper"]
    res = ustat("vandyke.imrmc")
    d = res.differences[0]
    assert close(res.modality[0].var, repr(ref["varAUC_trt1"]))
    assert close(res.modality[1].var, repr(ref["varAUC_trt2"]))
    assert close(d.var, repr(ref["varDiff"]))
    assert close(d.df, repr(ref["dfBDG_diff"]))
    assert close(d.p_value, repr(ref["pValueBDG"]))
    assert close(d.ci_low, repr(ref["CI_BDG"][0])) and close(d.ci_high, repr(ref["CI_BDG"][1]))
    assert close(d.p_value_normal, repr(ref["pValueNormal"]))


# ----------------------------------------------------------------- split plot
def _imrmc_pair_sums(x1, y1, x2, y2):
    """Literal port of iMRMC doAUC for one reader pair (NaN = not read): numer, denom (4,)."""
    s1 = np.where(np.isnan(x1)[:, None] | np.isnan(y1)[None, :], np.nan,
                  (y1[None, :] > x1[:, None]) + 0.5 * (y1[None, :] == x1[:, None]))
    s2 = np.where(np.isnan(x2)[:, None] | np.isnan(y2)[None, :], np.nan,
                  (y2[None, :] > x2[:, None]) + 0.5 * (y2[None, :] == x2[:, None]))
    d1, d2 = (~np.isnan(s1)).astype(float), (~np.isnan(s2)).astype(float)
    a, b = np.nan_to_num(s1), np.nan_to_num(s2)
    numer = [np.sum(a * b), np.sum(a.sum(0) * b.sum(0)), np.sum(a.sum(1) * b.sum(1)), a.sum() * b.sum()]
    denom = [np.sum(d1 * d2), np.sum(d1.sum(0) * d2.sum(0)), np.sum(d1.sum(1) * d2.sum(1)), d1.sum() * d2.sum()]
    return np.array(numer), np.array(denom), a.sum(), d1.sum()


def _loop_variance(data: ReaderStudyData, t: int) -> tuple[float, float]:
    """Reader-averaged AUC and its U-statistic variance by explicit loops over reader pairs."""
    neg, pos = data.negatives()[t], data.positives()[t]
    same, allp = np.zeros((2, 4)), np.zeros((2, 4))
    num_auc = den_auc = 0.0
    for r1 in range(data.n_readers):
        num_auc += _imrmc_pair_sums(neg[r1], pos[r1], neg[r1], pos[r1])[2]
        den_auc += _imrmc_pair_sums(neg[r1], pos[r1], neg[r1], pos[r1])[3]
        for r2 in range(data.n_readers):
            n, d, _, _ = _imrmc_pair_sums(neg[r1], pos[r1], neg[r2], pos[r2])
            allp += [n, d]
            if r1 == r2:
                same += [n, d]
    num = np.r_[same[0], allp[0]]
    den = np.r_[same[1], allp[1]]
    # unbiased sums: subtract the sums with more shared indices (inclusion-exclusion)
    def unb(v):
        u = v.copy()
        u[1] = v[1] - v[0]
        u[2] = v[2] - v[0]
        u[3] = v[3] - v[1] - v[2] + v[0]
        u[4] = v[4] - v[0]
        u[5] = v[5] - v[4] - v[1] + v[0]
        u[6] = v[6] - v[4] - v[2] + v[0]
        u[7] = v[7] - v[6] - v[5] + v[4] - v[3] + v[2] + v[1] - v[0]
        return u
    nu, du = unb(num), unb(den)
    m = np.divide(nu, du, out=np.zeros(8), where=du > 0)
    c = du / den[7]
    c[7] -= 1
    return num_auc / den_auc, float(c @ m)


def split_plot(data: ReaderStudyData) -> ReaderStudyData:
    """Readers 0-1 read the first half of each truth class, readers 2-4 the second half."""
    ratings = data.ratings.copy()
    for truth in (0, 1):
        idx = np.flatnonzero(data.truth == truth)
        first, second = idx[: idx.size // 2], idx[idx.size // 2:]
        ratings[:, 2:, first] = np.nan
        ratings[:, :2, second] = np.nan
    return ReaderStudyData(ratings=ratings, truth=data.truth, modalities=data.modalities,
                           readers=data.readers, cases=data.cases, source="split-plot Van Dyke")


def test_split_plot_matches_loop_port_of_imrmc() -> None:
    sp = split_plot(read_ratings(FIXTURES / "vandyke_long.csv"))
    assert not sp.is_fully_crossed
    res = ustat_analysis(sp)
    for t in range(2):
        auc, var = _loop_variance(sp, t)
        assert res.modality[t].auc == pytest.approx(auc, rel=1e-12)
        assert res.modality[t].var == pytest.approx(var, rel=1e-10)
        assert res.modality[t].var > 0
    # fewer cases per reader: larger variance than the fully crossed study
    full = ustat("vandyke.imrmc")
    assert res.differences[0].var > full.differences[0].var


def test_or_refuses_split_plot_and_names_a_missing_reading() -> None:
    sp = split_plot(read_ratings(FIXTURES / "vandyke_long.csv"))
    with pytest.raises(ValueError, match="fully crossed.*missing.*ustat_analysis"):
        or_analysis(sp)


def test_per_reader_ustat_variance_is_the_unbiased_or_covariance_diagonal() -> None:
    """Fully crossed: iMRMC's per-reader variance and the OR 'unbiased' covariance agree."""
    data = read_ratings(FIXTURES / "vandyke_long.csv")
    res = ustat("vandyke.imrmc")
    o = or_analysis(data, cov="unbiased")
    assert res.reader_var.ravel() == pytest.approx(np.diag(o.fom_covariance), rel=1e-10)


# ----------------------------------------------------------- AI standalone
@pytest.mark.parametrize("cov", ["jackknife", "delong", "unbiased"])
def test_standalone_equals_or_with_ai_as_second_modality(cov: str) -> None:
    """AI-minus-readers analysis == OR analysis with every reader's 2nd modality replaced by the AI."""
    data = read_ratings(FIXTURES / "vandyke_long.csv")
    rng = np.random.default_rng(4)
    ai = data.ratings[1].mean(axis=0) + rng.normal(0, 0.5, data.n_cases)
    res = standalone_vs_readers(data, ai, modality="0", cov=cov)
    aug = ReaderStudyData(ratings=np.stack([data.ratings[0], np.broadcast_to(ai, data.ratings[0].shape)]),
                          truth=data.truth, modalities=("readers", "AI"), readers=data.readers,
                          cases=data.cases)
    o = or_analysis(aug, cov=cov)
    d = o.rrrc.differences[0]  # readers - AI
    assert res.difference == pytest.approx(-d.estimate, rel=1e-12)
    assert res.rrrc.se == pytest.approx(d.se, rel=1e-10)
    assert res.rrrc.df == pytest.approx(d.df, rel=1e-10)
    assert res.p_value_rrrc == pytest.approx(d.p_value, rel=1e-9)
    f = o.frrc.differences[0]
    assert res.frrc.se == pytest.approx(f.se, rel=1e-10)
    assert res.ai_fom == pytest.approx(o.fom_values[1, 0], rel=1e-12)


def test_standalone_rejects_bad_ai_vector() -> None:
    data = read_ratings(FIXTURES / "vandyke_long.csv")
    with pytest.raises(ValueError, match="expected \\(114,\\)"):
        standalone_vs_readers(data, np.zeros(10))


def test_readers_nested_in_modalities() -> None:
    """Readers 0-2 read only modality 0, readers 3-4 only modality 1 (no same-reader pairs across)."""
    data = read_ratings(FIXTURES / "vandyke_long.csv")
    ratings = data.ratings.copy()
    ratings[1, :3] = np.nan
    ratings[0, 3:] = np.nan
    nested = ReaderStudyData(ratings=ratings, truth=data.truth, modalities=data.modalities,
                             readers=data.readers, cases=data.cases)
    res = ustat_analysis(nested)
    for t in range(2):
        auc, var = _loop_variance(nested, t)
        assert res.modality[t].auc == pytest.approx(auc, rel=1e-12)
        assert res.modality[t].var == pytest.approx(var, rel=1e-10)
    assert np.isnan(res.reader_auc[1, 0]) and np.isfinite(res.reader_auc[0, 0])
    assert res.differences[0].var > 0
