"""DBM analysis against every number of the JAFROC 4.2.1 output for Van Dyke, and DBM-OR identities.

JAFROC computes in single precision (its AUCs differ from Iowa's double-precision values in the
8th digit, e.g. 0.85877615 vs 0.85877617), so its numbers are compared at the printed precision
or 2e-5 relative, whichever is looser. The Iowa DBM components (double precision) are checked
in test_or_iowa.py at 1e-6.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from reader_study.analysis import DBMResult, dbm_analysis, or_analysis, read_ratings

from .published import FIXTURES, close, parse_jafroc_dbm

JAFROC_REL = 2e-5


@functools.cache
def result() -> DBMResult:
    return dbm_analysis(read_ratings(FIXTURES / "vandyke_long.csv"))


def value(res: DBMResult, key: tuple) -> float:
    kind = key[0]
    m = res.modalities
    if kind == "auc":
        return res.fom_values[key[2], key[1]]
    if kind == "mean":
        return res.modality_means[key[1]]
    if kind in ("ss", "ms", "df"):
        return getattr(res, kind)[key[1]]
    if kind == "ms_trt":
        return res.ms_by_modality[key[1]][key[2]]
    if kind == "dbm":
        return getattr(res.components, key[1])
    if kind == "or":
        return or_result().components.__getattribute__(key[1])
    if kind in ("rrrc", "frrc", "rrfc"):
        g = getattr(res, kind).global_test
        return {"ms_t": res.ms["T"], "F": g.statistic, "p": g.p_value, "ddf": g.df_den,
                "error_term": g.error_term}[key[1]]
    if kind.endswith("_diff"):
        return getattr(getattr(res, kind[:-5]).difference(m[key[1]], m[key[2]]), key[3])
    if kind.endswith("_single"):
        return getattr(getattr(res, kind[:-7]).modality_cis[key[1]], key[2])
    if kind == "ss_reader":
        return res.ss_by_reader[key[1]][key[2]]
    if kind == "ms_reader":
        return res.ms_by_reader[key[1]][key[2]]
    if kind == "frrc_reader":
        return getattr(res.frrc.difference(m[key[2]], m[key[3]], reader=res.readers[key[1]]), key[4])
    raise KeyError(key)


@functools.cache
def or_result():
    return or_analysis(read_ratings(FIXTURES / "vandyke_long.csv"))


TEXT = (FIXTURES / "vandyke_jafroc_dbm_output.txt").read_text(encoding="utf-8", errors="replace")
CASES = [pytest.param(key, printed, id="-".join(map(str, key))) for key, printed in parse_jafroc_dbm(TEXT)]


def test_every_section_was_parsed() -> None:
    kinds = {c.values[0][0] for c in CASES}
    assert kinds >= {"auc", "ss", "ms", "ms_trt", "dbm", "or", "rrrc", "rrrc_diff", "rrrc_single", "frrc",
                     "frrc_diff", "frrc_single", "frrc_reader", "ms_reader", "ss_reader", "rrfc",
                     "rrfc_diff", "rrfc_single"}
    assert len(CASES) > 170


@pytest.mark.parametrize(("key", "printed"), CASES)
def test_matches_jafroc(key: tuple, printed: str) -> None:
    actual = float(value(result(), key))
    assert close(actual, printed, rel=JAFROC_REL), f"{key}: library {actual!r}, JAFROC printed {printed}"


@pytest.mark.parametrize("name", ["vandyke", "franken", "fedroc"])
def test_dbm_rrrc_equals_or_rrrc_with_jackknife(name: str) -> None:
    """Hillis et al. (2005): with jackknife covariances DBM and OR give the same RRRC F and ddf."""
    data = read_ratings(FIXTURES / f"{name}_long.csv")
    d, o = dbm_analysis(data), or_analysis(data)
    assert d.rrrc.global_test.statistic == pytest.approx(o.rrrc.global_test.statistic, rel=1e-9)
    assert d.rrrc.global_test.df_den == pytest.approx(o.rrrc.global_test.df_den, rel=1e-9)
    dbm_from_or = o.components.dbm()
    for f, v in dbm_from_or.items():
        assert getattr(d.components, f) == pytest.approx(v, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(d.fom_values, o.fom_values, rtol=1e-12)


def test_reference_values_json_dbm() -> None:
    import json

    ref = json.loads((FIXTURES / "reference_values.json").read_text())["VanDyke"]
    res = result()
    for k, v in ref["DBM_JAFROC_4.2.1"]["MS"].items():
        assert res.ms[k] == pytest.approx(v, rel=JAFROC_REL)
    comp = ref["DBM_varcomp_Iowa"]
    c = res.components
    for attr, key in (("var_r", "VarR"), ("var_c", "VarC"), ("var_tr", "VarTR"), ("var_tc", "VarTC"),
                      ("var_rc", "VarRC"), ("var_trc_error", "VarTRC_plus_Err")):
        assert close(getattr(c, attr), repr(comp[key]))
