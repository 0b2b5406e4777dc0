"""Case covariance estimators against MRMCaov (jackknife, DeLong, unbiased) and brute force."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from reader_study.analysis import ORResult, or_analysis, read_ratings
from reader_study.analysis.covariance import (
    delong_covariance,
    jackknife_covariance,
    unbiased_covariance,
)
from reader_study.analysis.fom import auc_components

from .published import FIXTURES, close

REF = json.loads((FIXTURES / "reference_values.json").read_text())["VanDyke"]
BLOCKS = {
    "jackknife": "or_jackknife_full_precision_MRMCaov",
    "delong": "OR_DeLong_MRMCaov",
    "unbiased": "OR_unbiased_MRMCaov",
}


@functools.cache
def vandyke():
    return read_ratings(FIXTURES / "vandyke_long.csv")


@functools.cache
def result(cov: str) -> ORResult:
    return or_analysis(vandyke(), cov=cov)


def mrmcaov_value(res: ORResult, key: str) -> float | list[float]:
    """MRMCaov's RRRC summary for the 1 - 2 difference (its 'Denominator' is the F error term)."""
    c = res.components
    d = res.rrrc.differences[0]
    g = res.rrrc.global_test
    return {
        "VarR": c.var_r, "VarTR": c.var_tr, "Var": c.var_error, "Cov1": c.cov1, "Cov2": c.cov2,
        "Cov3": c.cov3, "Denominator": g.error_term, "F": g.statistic, "df2": g.df_den, "p": g.p_value,
        "SE": d.se, "CI": [d.ci_low, d.ci_high], "t": d.statistic,
    }[key]


CASES = [
    pytest.param(cov, key, val, id=f"{cov}-{key}")
    for cov, block in BLOCKS.items()
    for key, val in REF[block].items()
    if key != "source"
]


@pytest.mark.parametrize(("cov", "key", "expected"), CASES)
def test_matches_mrmcaov(cov: str, key: str, expected) -> None:
    actual = mrmcaov_value(result(cov), key)
    for a, e in zip(np.atleast_1d(actual), np.atleast_1d(expected)):
        assert close(float(a), repr(float(e))), f"{cov} {key}: {a!r} vs MRMCaov {e!r}"


def _brute_kernel(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return np.array([[1.0 if y > x else 0.5 if y == x else 0.0 for y in pos] for x in neg])


def test_jackknife_closed_form_equals_recomputed_leave_one_out() -> None:
    data = vandyke()
    sc = auc_components(data)
    t, r, k = data.n_modalities, data.n_readers, data.n_cases
    jk = np.empty((t, r, k))
    for ti in range(t):
        for ri in range(r):
            for kk in range(k):
                keep = np.arange(k) != kk
                x = data.ratings[ti, ri, keep & (data.truth == 0)]
                y = data.ratings[ti, ri, keep & (data.truth == 1)]
                jk[ti, ri, kk] = _brute_kernel(x, y).mean()
    np.testing.assert_allclose(jackknife_covariance(jk), result("jackknife").fom_covariance, rtol=1e-10)
    from reader_study.analysis.fom import jackknife_fom

    np.testing.assert_allclose(jackknife_fom(sc), jk, rtol=1e-12)


def test_delong_and_unbiased_from_kernel_matrices() -> None:
    """DeLong and the U-statistic estimator written out from the full kernel matrices."""
    data = vandyke()
    t, r = data.n_modalities, data.n_readers
    kern = [_brute_kernel(data.negatives()[ti, ri], data.positives()[ti, ri])
            for ti in range(t) for ri in range(r)]
    k0, k1 = kern[0].shape
    a = len(kern)
    dl = np.empty((a, a))
    ub = np.empty((a, a))
    for i in range(a):
        for j in range(a):
            p, q = kern[i], kern[j]
            v10p, v10q = p.mean(axis=0), q.mean(axis=0)
            v01p, v01q = p.mean(axis=1), q.mean(axis=1)
            dl[i, j] = np.cov(v10p, v10q)[0, 1] / k1 + np.cov(v01p, v01q)[0, 1] / k0
            s1 = (p * q).sum()
            s_i = (p.sum(axis=1) * q.sum(axis=1)).sum() - s1
            s_j = (p.sum(axis=0) * q.sum(axis=0)).sum() - s1
            s4 = p.sum() * q.sum() - s1 - s_i - s_j
            m4 = s4 / (k0 * (k0 - 1) * k1 * (k1 - 1))
            # Cov = E[AB] - E[A]E[B]: AB itself is unbiased for E[AB]; M4 (no shared case) for E[A]E[B]
            ub[i, j] = (s1 + s_i + s_j + s4) / (k0 * k1) ** 2 - m4
    sc = auc_components(data)
    np.testing.assert_allclose(delong_covariance(sc), dl, rtol=1e-10)
    np.testing.assert_allclose(unbiased_covariance(data), ub, rtol=1e-8, atol=1e-15)


def test_unbiased_variance_equals_imrmc_per_reader() -> None:
    """iMRMC prints the per-reader U-statistic variance: the diagonal of the unbiased matrix."""
    from .published import parse_imrmc

    expected = dict(parse_imrmc((FIXTURES / "vandyke_imrmc_output.txt").read_text()))
    cov = unbiased_covariance(vandyke())
    for ti in range(2):
        for ri in range(5):
            assert close(cov[ti * 5 + ri, ti * 5 + ri], expected[("reader_var", ti, ri)])
