"""Figures of merit (FOMs): empirical AUC, sensitivity, specificity and friends, ROC points.

Every FOM used by the MRMC analyses is expressed through its *structural components*
(DeLong, DeLong & Clarke-Pearson 1988; Hanley & Hajian-Tilaki 1997): a value per diseased case
``v10`` and a value per non-diseased case ``v01`` whose means are the FOM. For the empirical
(Wilcoxon) AUC these are the placement values

    v10_j = (1/K0) sum_i psi(y_j, x_i),   v01_i = (1/K1) sum_j psi(y_j, x_i),
    psi(y, x) = 1 if y > x, 1/2 if y = x, 0 otherwise,

(y diseased, x non-diseased ratings); for sensitivity v10_j is the decision on diseased case j
and v01 is constant; for specificity the reverse. Leave-one-case-out FOMs then follow in closed
form, ``theta_(-j) = (K1 theta - v10_j) / (K1 - 1)`` for a diseased case and likewise for a
non-diseased one, which makes the jackknife O(K log K) per reader instead of O(K^3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from .data import ReaderStudyData

__all__ = [
    "FOMS",
    "StructuralComponents",
    "auc_components",
    "binary_components",
    "empirical_auc",
    "fom_components",
    "jackknife_fom",
    "placement_values",
    "roc_points",
    "average_roc",
    "roc_curves",
    "wilson_interval",
    "decisions",
]

FOMS = ("auc", "sensitivity", "specificity")
FomName = Literal["auc", "sensitivity", "specificity"]


@dataclass(frozen=True, eq=False)
class StructuralComponents:
    """FOM values with their DeLong structural components, for a fully crossed study.

    Attributes:
        fom: name of the figure of merit.
        theta: FOM per modality and reader, shape (T, R).
        v10: component per diseased case, shape (T, R, K1); ``theta = mean(v10, -1)``.
        v01: component per non-diseased case, shape (T, R, K0); ``theta = mean(v01, -1)``.
        truth: truth per case (K,), to put leave-one-out values back in case order.
    """

    fom: str
    theta: np.ndarray
    v10: np.ndarray
    v01: np.ndarray
    truth: np.ndarray

    @property
    def n_negative(self) -> int:
        """K0, the number of non-diseased cases."""
        return self.v01.shape[-1]

    @property
    def n_positive(self) -> int:
        """K1, the number of diseased cases."""
        return self.v10.shape[-1]


def placement_values(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical AUC and placement values, vectorised over leading axes.

    Midranks give the counts without forming the K0 x K1 comparison matrix: for a diseased
    rating, its midrank among all ratings minus its midrank among diseased ratings equals
    ``#(x < y) + #(x = y)/2`` (ties count one half).

    Args:
        neg: non-diseased ratings (..., K0).
        pos: diseased ratings (..., K1).

    Returns:
        ``(auc (...), v10 (..., K1), v01 (..., K0))``.
    """
    neg = np.asarray(neg, dtype=float)
    pos = np.asarray(pos, dtype=float)
    k0, k1 = neg.shape[-1], pos.shape[-1]
    both = np.concatenate([neg, pos], axis=-1)
    rank_all = stats.rankdata(both, axis=-1)
    below_pos = rank_all[..., k0:] - stats.rankdata(pos, axis=-1)  # #(x<y) + #(x=y)/2
    below_neg = rank_all[..., :k0] - stats.rankdata(neg, axis=-1)  # #(y<x) + #(y=x)/2
    v10 = below_pos / k0
    v01 = (k1 - below_neg) / k1
    return v10.mean(axis=-1), v10, v01


def empirical_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Empirical (Wilcoxon/Mann-Whitney) AUC of one reader; ties count one half."""
    return float(placement_values(np.asarray(neg), np.asarray(pos))[0])


def auc_components(data: ReaderStudyData) -> StructuralComponents:
    """Structural components of the empirical AUC for every modality and reader."""
    data.require_fully_crossed("the AUC structural components")
    theta, v10, v01 = placement_values(data.negatives(), data.positives())
    return StructuralComponents("auc", theta, v10, v01, data.truth)


def decisions(ratings: np.ndarray, threshold: float | None) -> np.ndarray:
    """Binary decisions ``rating >= threshold``; binary 0/1 ratings need no threshold.

    Raises:
        ValueError: when ratings are not binary and no threshold is given.
    """
    ratings = np.asarray(ratings, dtype=float)
    if threshold is None:
        vals = np.unique(ratings[~np.isnan(ratings)])
        if not np.all(np.isin(vals, (0.0, 1.0))):
            raise ValueError(
                "ratings are not binary 0/1; give threshold= (a rating >= threshold is positive)"
            )
        threshold = 0.5
    out = (ratings >= threshold).astype(float)
    out[np.isnan(ratings)] = np.nan
    return out


def binary_components(
    data: ReaderStudyData, fom: Literal["sensitivity", "specificity"], *, threshold: float | None = None
) -> StructuralComponents:
    """Structural components of sensitivity (TPF) or specificity (TNF) at a binary decision.

    Sensitivity = mean over diseased cases of the positive decision: v10_j = d_j and
    v01_i = theta (constant, so non-diseased cases carry no sampling variance); specificity
    is the mirror image with v01_i = 1 - d_i.
    """
    data.require_fully_crossed(f"the {fom} structural components")
    dec = decisions(data.ratings, threshold)
    pos = dec[:, :, data.truth == 1]
    neg = 1.0 - dec[:, :, data.truth == 0]
    if fom == "sensitivity":
        theta = pos.mean(axis=-1)
        v10, v01 = pos, np.repeat(theta[..., None], neg.shape[-1], axis=-1)
    elif fom == "specificity":
        theta = neg.mean(axis=-1)
        v01, v10 = neg, np.repeat(theta[..., None], pos.shape[-1], axis=-1)
    else:  # pragma: no cover - guarded by callers
        raise ValueError(f"unknown binary FOM {fom!r}")
    return StructuralComponents(fom, theta, v10, v01, data.truth)


def fom_components(
    data: ReaderStudyData, fom: str = "auc", *, threshold: float | None = None
) -> StructuralComponents:
    """Structural components for ``fom`` in ``FOMS`` ("auc", "sensitivity", "specificity")."""
    if fom == "auc":
        return auc_components(data)
    if fom in ("sensitivity", "specificity"):
        return binary_components(data, fom, threshold=threshold)
    raise ValueError(f"fom must be one of {FOMS}, got {fom!r}")


def jackknife_fom(sc: StructuralComponents) -> np.ndarray:
    """Leave-one-case-out FOMs in case order, shape (T, R, K), in closed form.

    Removing diseased case j: ``(K1 theta - v10_j)/(K1 - 1)``; removing non-diseased case i:
    ``(K0 theta - v01_i)/(K0 - 1)``. Exact for the empirical AUC and for proportions.
    """
    k0, k1 = sc.n_negative, sc.n_positive
    th = sc.theta[..., None]
    out = np.empty(sc.theta.shape + (k0 + k1,))
    out[..., sc.truth == 1] = (k1 * th - sc.v10) / (k1 - 1)
    out[..., sc.truth == 0] = (k0 * th - sc.v01) / (k0 - 1)
    return out


def wilson_interval(successes: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Newcombe 1998, method 3)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z = stats.norm.ppf(1 - alpha / 2)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def roc_points(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical ROC operating points of one reader, from (0,0) to (1,1).

    One point per distinct rating used as threshold (``rating >= c`` is positive); the
    trapezoidal area under these points equals the Wilcoxon AUC.

    Returns:
        ``(fpf, tpf)`` increasing arrays.
    """
    neg = np.asarray(neg, dtype=float)
    pos = np.asarray(pos, dtype=float)
    neg = neg[~np.isnan(neg)]
    pos = pos[~np.isnan(pos)]
    cuts = np.unique(np.concatenate([neg, pos]))[::-1]
    fpf = np.concatenate([[0.0], (neg[None, :] >= cuts[:, None]).mean(axis=1)])
    tpf = np.concatenate([[0.0], (pos[None, :] >= cuts[:, None]).mean(axis=1)])
    return fpf, tpf


def average_roc(
    curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reader-averaged ROC curve by vertical averaging (TPF averaged at fixed FPF).

    Each reader's empirical ROC is the piecewise-linear path through its operating points;
    the average of these paths at each FPF of ``grid`` is returned (Chen & Samuelson 2014,
    "vertical average"). Its area equals the mean of the readers' trapezoidal AUCs up to the
    grid resolution.
    """
    grid = np.linspace(0.0, 1.0, 201) if grid is None else np.asarray(grid, dtype=float)
    tprs = [np.interp(grid, f, t) for f, t in curves]
    return grid, np.mean(tprs, axis=0)


def roc_curves(
    data: ReaderStudyData, *, ai_ratings: np.ndarray | None = None, grid_points: int = 101
) -> dict[str, dict]:
    """JSON-ready ROC curves: per reader and reader-averaged per arm, plus the AI if given.

    Returns:
        ``{modality: {"readers": {reader: {"fpf": [...], "tpf": [...], "auc": a}},
        "average": {"fpf": [...], "tpf": [...], "mean_auc": m}}, "AI": {"fpf", "tpf", "auc"}}``;
        each reader's curve uses the cases that reader read.
    """
    grid = np.linspace(0.0, 1.0, grid_points)
    out: dict[str, dict] = {}
    for ti, m in enumerate(data.modalities):
        readers, curves, aucs = {}, [], []
        for j, r in enumerate(data.readers):
            neg, pos = data.negatives()[ti, j], data.positives()[ti, j]
            neg, pos = neg[~np.isnan(neg)], pos[~np.isnan(pos)]
            if neg.size == 0:
                continue  # reader absent from this modality
            f, t = roc_points(neg, pos)
            auc = empirical_auc(neg, pos)
            readers[r] = {"fpf": f.tolist(), "tpf": t.tolist(), "auc": auc}
            curves.append((f, t))
            aucs.append(auc)
        g, tpr = average_roc(curves, grid)
        out[m] = {"readers": readers,
                  "average": {"fpf": g.tolist(), "tpf": tpr.tolist(), "mean_auc": float(np.mean(aucs))}}
    if ai_ratings is not None:
        ai = np.asarray(ai_ratings, dtype=float)
        f, t = roc_points(ai[data.truth == 0], ai[data.truth == 1])
        out["AI"] = {"fpf": f.tolist(), "tpf": t.tolist(),
                     "auc": empirical_auc(ai[data.truth == 0], ai[data.truth == 1])}
    return out
