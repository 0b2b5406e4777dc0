"""OR analysis against every number printed by OR-DBM MRMC 2.51 (Univ. of Iowa).

Van Dyke (2 modalities), Franken (Cov2 < Cov3, so the max() truncation applies) and FedRoc
(5 modalities, global test and 10 pairwise comparisons). Each printed number is one test case,
compared at the precision it was printed (or 1e-6 relative when printed with more digits).
"""

from __future__ import annotations

import functools

import pytest

from reader_study.analysis import ORResult, or_analysis, read_ratings

from .published import FIXTURES, close, parse_iowa_or

DATASETS = ("vandyke", "franken", "fedroc")


@functools.cache
def result(name: str) -> ORResult:
    return or_analysis(read_ratings(FIXTURES / f"{name}_long.csv"), cov="jackknife")


def value(res: ORResult, key: tuple) -> float:
    """The library's number for a key of :func:`parse_iowa_or`."""
    kind = key[0]
    m = res.modalities
    c = res.components
    if kind == "auc":
        return res.fom_values[key[2], key[1]]
    if kind == "mean":
        return res.modality_means[key[1]]
    if kind == "mean_diff":
        return res.modality_means[key[1]] - res.modality_means[key[2]]
    if kind in ("ss", "ms", "df"):
        t, r = len(m), len(res.readers)
        df = {"T": t - 1, "R": r - 1, "TR": (t - 1) * (r - 1)}[key[1]]
        ms = {"T": res.ms_t, "R": res.ms_r, "TR": res.ms_tr}[key[1]]
        return {"ss": ms * df, "ms": ms, "df": df}[kind]
    if kind == "ms_r_trt":
        return res.ms_r_by_modality[key[1]]
    if kind == "or":
        return getattr(c, key[1])
    if kind == "rho":
        return getattr(c, {"cov1": "rho1", "cov2": "rho2", "cov3": "rho3"}[key[1]])
    if kind == "dbm":
        return c.dbm()[key[1]]
    if kind in ("rrrc", "frrc", "rrfc"):
        g = getattr(res, kind).global_test
        return {"ndf": g.df_num, "ms_t": res.ms_t, "F": g.statistic, "X2": g.statistic, "p": g.p_value,
                "ddf": g.df_den, "error_term": g.error_term}[key[1]]
    if kind.endswith("_diff"):
        g = getattr(res, kind[:-5])
        return getattr(g.difference(m[key[1]], m[key[2]]), key[3])
    if kind.endswith("_single"):
        g = getattr(res, kind[:-7])
        ci = g.modality_cis[key[1]]
        if key[2] == "cov2":
            return res.covariances.cov2_by_modality[key[1]]
        if key[2] == "ms_r":
            return res.ms_r_by_modality[key[1]]
        return getattr(ci, key[2])
    if kind == "frrc_reader":
        return getattr(res.frrc.difference(m[key[2]], m[key[3]], reader=res.readers[key[1]]), key[4])
    if kind == "var_trt":
        return res.covariances.var_by_modality[key[1]]
    if kind == "cov2_trt":
        return res.covariances.cov2_by_modality[key[1]]
    if kind == "var_reader":
        return res.covariances.var_by_reader[key[1]]
    if kind == "cov1_reader":
        return res.covariances.cov1_by_reader[key[1]]
    raise KeyError(key)


CASES = [
    pytest.param(name, key, printed, id=f"{name}-{'-'.join(map(str, key))}")
    for name in DATASETS
    for key, printed in parse_iowa_or((FIXTURES / f"{name}_iowa_or_output.txt").read_text())
]


def test_every_section_was_parsed() -> None:
    kinds = {key[0] for name, key, _ in (c.values for c in CASES) if name == "vandyke"}
    assert kinds >= {"auc", "ms", "or", "dbm", "rrrc", "rrrc_diff", "rrrc_single", "frrc", "frrc_diff",
                     "frrc_single", "frrc_reader", "rrfc", "rrfc_diff", "rrfc_single", "var_reader"}
    assert len(CASES) > 900


@pytest.mark.parametrize(("name", "key", "printed"), CASES)
def test_matches_iowa(name: str, key: tuple, printed: str) -> None:
    actual = float(value(result(name), key))
    assert close(actual, printed), f"{key}: library {actual!r}, Iowa printed {printed}"


def test_franken_truncation_gives_conventional_ddf() -> None:
    res = result("franken")
    assert res.covariances.cov2 < res.covariances.cov3
    assert res.rrrc.global_test.df_den == pytest.approx(3.0, abs=1e-12)  # (t-1)(r-1)
    # Iowa does not truncate inside Var(TR): RJafroc's max() would give MS(TR) - Var + Cov1
    c = res.components
    assert c.var_tr == pytest.approx(res.ms_tr - c.var_error + c.cov1 + c.cov2 - c.cov3, rel=1e-12)


def test_documented_mrmcaov_frrc_difference_for_franken() -> None:
    """MRMCaov drops the max() in the FRRC denominator; from our components its formula gives
    MRMCaov's numbers, while the library (like Iowa) keeps the truncation."""
    import json

    from scipy import stats

    from .published import close

    ref = json.loads((FIXTURES / "reference_values.json").read_text())["Franken"]
    res = result("franken")
    c, t, r = res.components, len(res.modalities), len(res.readers)
    den = c.var_error - c.cov1 + (r - 1) * (c.cov2 - c.cov3)  # no max()
    x2 = (t - 1) * res.ms_t / den
    mrmcaov = ref["FRRC_MRMCaov_HEAD_no_max_computed_by_helper"]
    assert close(x2, repr(mrmcaov["X2"]))
    assert close(stats.chi2.sf(x2, t - 1), repr(mrmcaov["p"]))
    assert close((2 / r * den) ** 0.5, repr(mrmcaov["SE"]))
    iowa = ref["FRRC_OR_Iowa"]
    assert close(res.frrc.global_test.statistic, repr(iowa["X2"]))
    assert close(res.frrc.differences[0].se, repr(iowa["SE"]))
