"""Case-sampling covariance of the reader x modality FOMs, and the Obuchowski-Rockette summaries.

Three estimators of the (T*R) x (T*R) covariance matrix of the FOMs theta_tr caused by case
sampling, all computed from the structural components of :mod:`.fom`:

* ``jackknife``: ``(K-1)/K * sum_k (theta_(k) - theta_(.))(theta'_(k) - theta'_(.))`` over all
  K cases, as in OR-DBM MRMC (Hillis et al. 2005, eq. 8; Efron 1982).
* ``delong``: ``S10/K1 + S01/K0`` with S10, S01 the sample covariances (divisor n-1) of the
  structural components over diseased and non-diseased cases (DeLong et al. 1988, eq. 5).
* ``unbiased``: the U-statistic estimator of Gallas (2006) / Gallas et al. (2009) that splits
  the product of two AUCs into moments by which cases the two kernel evaluations share and
  subtracts the unbiased estimate of the product of means (see :func:`unbiased_covariance`).

The OR error-covariance summaries (Obuchowski & Rockette 1995) average this matrix over the
entries of each kind: Var (same modality, same reader), Cov1 (different modality, same
reader), Cov2 (same modality, different readers) and Cov3 (both different).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .data import ReaderStudyData
from .fom import StructuralComponents, jackknife_fom, placement_values

__all__ = [
    "COV_METHODS",
    "ORCovariances",
    "case_covariance",
    "delong_covariance",
    "jackknife_covariance",
    "kernel_gram",
    "kernel_matrices",
    "or_covariances",
    "unbiased_covariance",
    "unbiased_moments",
]

COV_METHODS = ("jackknife", "delong", "unbiased")
CovMethod = Literal["jackknife", "delong", "unbiased"]


def jackknife_covariance(jk: np.ndarray) -> np.ndarray:
    """Jackknife covariance matrix of the FOMs from leave-one-case-out values.

    Args:
        jk: leave-one-out FOMs (T, R, K).

    Returns:
        (T*R, T*R) matrix, row index ``t * R + r``.
    """
    t, r, k = jk.shape
    x = jk.reshape(t * r, k)
    x = x - x.mean(axis=1, keepdims=True)
    return (k - 1) / k * (x @ x.T)


def delong_covariance(sc: StructuralComponents) -> np.ndarray:
    """DeLong et al. (1988) covariance matrix ``S10/K1 + S01/K0``, index ``t * R + r``."""
    t, r = sc.theta.shape
    v10 = sc.v10.reshape(t * r, -1)
    v01 = sc.v01.reshape(t * r, -1)
    k1, k0 = v10.shape[1], v01.shape[1]
    s10 = np.cov(v10, ddof=1) if k1 > 1 else np.zeros((t * r, t * r))
    s01 = np.cov(v01, ddof=1) if k0 > 1 else np.zeros((t * r, t * r))
    return np.atleast_2d(s10) / k1 + np.atleast_2d(s01) / k0


def kernel_matrices(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Twice the Wilcoxon kernel, ``2 psi(y_j, x_i)`` in {0, 1, 2}, as int8 (A, K0, K1).

    NaN ratings (unread cases) compare False both ways, so their kernel is 0. int8 keeps the
    memory at K0 K1 bytes per reader-modality (0.25 MB for 500 x 500).
    """
    d = pos[:, None, :] - neg[:, :, None]
    return (2 * (d > 0) + (d == 0)).astype(np.int8)


def kernel_gram(kern2: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """``sum_ij psi_a(i,j) psi_b(i,j)`` for all pairs (A, A) from :func:`kernel_matrices`.

    Accumulated over column chunks in float64 (exact: integer sums far below 2^53).
    """
    a = kern2.shape[0]
    flat = kern2.reshape(a, -1)
    out = np.zeros((a, a))
    for start in range(0, flat.shape[1], chunk):
        block = flat[:, start:start + chunk].astype(float)
        out += block @ block.T
    return out / 4.0


def unbiased_moments(data: ReaderStudyData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unbiased U-statistic moments of AUC products for every pair of reader-modalities.

    For FOMs a and b on the same K0 x K1 case pairs, with kernel psi (ties 1/2), the product
    ``AUC_a AUC_b = (K0 K1)^-2 sum psi_a(i,j) psi_b(i',j')`` splits by shared cases into
    (Gallas 2006, eqs. 8-11):

    * M1: i = i', j = j';  M2: i = i', j != j';  M3: i != i', j = j';  M4: i != i', j != j',

    each the mean of the kernel products over its index set.

    Returns:
        ``(M1, M2, M3, M4)``, each (T*R, T*R) with index ``t * R + r``.
    """
    data.require_fully_crossed("the unbiased (U-statistic) covariance")
    t, r = data.n_modalities, data.n_readers
    neg = data.negatives().reshape(t * r, -1)
    pos = data.positives().reshape(t * r, -1)
    k0, k1 = neg.shape[1], pos.shape[1]

    auc, v10, v01 = placement_values(neg, pos)
    s1 = kernel_gram(kernel_matrices(neg, pos))
    s_same_i = (k1 * v01) @ (k1 * v01).T  # sum_i rowsum_a(i) rowsum_b(i): includes j = j'
    s_same_j = (k0 * v10) @ (k0 * v10).T
    s_all = np.outer(k0 * k1 * auc, k0 * k1 * auc)
    s2 = s_same_i - s1
    s3 = s_same_j - s1
    s4 = s_all - s1 - s2 - s3
    m1 = s1 / (k0 * k1)
    m2 = s2 / (k0 * k1 * (k1 - 1))
    m3 = s3 / (k0 * (k0 - 1) * k1)
    m4 = s4 / (k0 * (k0 - 1) * k1 * (k1 - 1))
    return m1, m2, m3, m4


def unbiased_covariance(data: ReaderStudyData) -> np.ndarray:
    """Unbiased U-statistic covariance of empirical AUCs (Gallas 2006; Gallas et al. 2009).

    ``E[AUC_a AUC_b] = [M1 + (K1-1) M2 + (K0-1) M3 + (K0-1)(K1-1) M4] / (K0 K1)`` and M4 is
    unbiased for ``E[AUC_a] E[AUC_b]``, hence

        Cov = [M1 + (K1-1) M2 + (K0-1) M3 - (K0 + K1 - 1) M4] / (K0 K1).
    """
    m1, m2, m3, m4 = unbiased_moments(data)
    k0, k1 = data.n_negative, data.n_positive
    return (m1 + (k1 - 1) * m2 + (k0 - 1) * m3 - (k0 + k1 - 1) * m4) / (k0 * k1)


def case_covariance(
    data: ReaderStudyData, sc: StructuralComponents, method: str = "jackknife"
) -> np.ndarray:
    """Case-sampling covariance matrix of the FOMs by ``method`` (see module docstring).

    For sensitivity and specificity the U-statistic estimator reduces to the sample covariance
    of the decisions divided by the number of cases, i.e. the DeLong form.
    """
    if method == "jackknife":
        return jackknife_covariance(jackknife_fom(sc))
    if method == "delong":
        return delong_covariance(sc)
    if method == "unbiased":
        return unbiased_covariance(data) if sc.fom == "auc" else delong_covariance(sc)
    raise ValueError(f"cov must be one of {COV_METHODS}, got {method!r}")


@dataclass(frozen=True)
class ORCovariances:
    """Obuchowski-Rockette error variance and covariances averaged from the FOM covariance.

    Attributes:
        var: Var(error) = mean of Cov(theta_tr, theta_tr).
        cov1: mean of Cov(theta_tr, theta_t'r), t != t' (same reader, different modality).
        cov2: mean of Cov(theta_tr, theta_tr'), r != r' (same modality, different readers).
        cov3: mean of Cov(theta_tr, theta_t'r'), t != t', r != r'.
        var_by_modality: Var(error) within each modality (T,), for single-modality CIs.
        cov2_by_modality: Cov2 within each modality (T,).
        var_by_reader: Var(error) within each reader (R,), for single-reader comparisons.
        cov1_by_reader: Cov1 within each reader (R,).
    """

    var: float
    cov1: float
    cov2: float
    cov3: float
    var_by_modality: tuple[float, ...]
    cov2_by_modality: tuple[float, ...]
    var_by_reader: tuple[float, ...]
    cov1_by_reader: tuple[float, ...]


def or_covariances(cov: np.ndarray, n_modalities: int, n_readers: int) -> ORCovariances:
    """Average a (T*R, T*R) FOM covariance into the OR Var, Cov1, Cov2, Cov3 (and per-arm/reader)."""
    t, r = n_modalities, n_readers
    c = cov.reshape(t, r, t, r)
    same_t = np.eye(t, dtype=bool)[:, None, :, None]
    same_r = np.eye(r, dtype=bool)[None, :, None, :]
    same_t, same_r = np.broadcast_arrays(same_t, same_r)

    def _mean(mask: np.ndarray) -> float:
        return float(c[mask].mean()) if mask.any() else float("nan")

    var = _mean(same_t & same_r)
    cov1 = _mean(~same_t & same_r)
    cov2 = _mean(same_t & ~same_r)
    cov3 = _mean(~same_t & ~same_r)
    var_t, cov2_t = [], []
    off = ~np.eye(r, dtype=bool)
    for ti in range(t):
        block = c[ti, :, ti, :]
        var_t.append(float(np.diag(block).mean()))
        cov2_t.append(float(block[off].mean()) if r > 1 else float("nan"))
    var_r, cov1_r = [], []
    offt = ~np.eye(t, dtype=bool)
    for ri in range(r):
        block = c[:, ri, :, ri]
        var_r.append(float(np.diag(block).mean()))
        cov1_r.append(float(block[offt].mean()) if t > 1 else float("nan"))
    return ORCovariances(var, cov1, cov2, cov3, tuple(var_t), tuple(cov2_t), tuple(var_r), tuple(cov1_r))
