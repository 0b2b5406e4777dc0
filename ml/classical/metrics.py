"""Diagnostic metrics with percentile-bootstrap 95% CIs, calibration, Brier score, ROC band.

At a probability threshold ``c`` (positive if ``p >= c``), with TP/FP/TN/FN counts:
``Se = TP/(TP+FN)``, ``Sp = TN/(TN+FP)``, ``PPV = TP/(TP+FP)``, ``NPV = TN/(TN+FN)``,
``accuracy = (TP+TN)/N``; AUC is the Mann-Whitney probability that a positive case scores above a
negative one (ties count 1/2; Hanley & McNeil, Radiology 1982). CIs: percentile bootstrap over
cases (Efron & Tibshirani 1993, ch. 13), B = 1000 resamples by default; resamples where a metric
is undefined (one class only, no predicted positive) are skipped for that metric.
Brier score ``mean (p - y)^2`` (Brier, Mon Weather Rev 1950); calibration curve: observed
frequency vs mean predicted probability in quantile bins (sklearn ``calibration_curve``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve

__all__ = [
    "METRICS",
    "MetricCI",
    "binary_metrics",
    "mann_whitney_auc",
    "bootstrap_metrics",
    "brier_score",
    "calibration",
    "roc_band",
]

METRICS: tuple[str, ...] = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv")


@dataclass(frozen=True)
class MetricCI:
    """A point estimate with its percentile-bootstrap CI (NaN when undefined)."""

    estimate: float
    lower: float
    upper: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-safe (NaN -> None)."""
        return {k: (None if not np.isfinite(v) else float(v))
                for k, v in (("estimate", self.estimate), ("lower", self.lower),
                             ("upper", self.upper))}


def _check(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"y_true/prob: need equal non-zero lengths, got {y.size} and {p.size}")
    if not np.all(np.isfinite(p)):
        raise ValueError("prob: NaN or infinite values")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("y_true: labels must be 0/1")
    return y, p


def mann_whitney_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos the sum of the positives'
    mid-ranks (ties count 1/2); NaN with one class only."""
    y = np.asarray(y_true).astype(int)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(prob)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _thresholds(threshold: float | np.ndarray, n: int) -> np.ndarray:
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        return np.full(n, float(t))
    if t.shape != (n,):
        raise ValueError(f"threshold: one value or one per case ({n}), got shape {t.shape}")
    return t


def binary_metrics(
    y_true: np.ndarray, prob: np.ndarray, threshold: float | np.ndarray
) -> dict[str, float]:
    """AUC, accuracy, Se, Sp, PPV, NPV at ``threshold`` (NaN where undefined).

    ``threshold`` is one number or one per case (N,), e.g. the cut-off of each case's CV fold.
    """
    y, p = _check(y_true, prob)
    pred = p >= _thresholds(threshold, p.size)
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    tn = float(np.sum(~pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    auc = mann_whitney_auc(y, p)
    return {
        "auc": auc,
        "accuracy": (tp + tn) / y.size,
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
    }


def bootstrap_metrics(
    y_true: np.ndarray,
    prob: np.ndarray,
    threshold: float | np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, MetricCI]:
    """Point estimates and percentile-bootstrap ``1 - alpha`` CIs of :data:`METRICS`."""
    y, p = _check(y_true, prob)
    t = _thresholds(threshold, p.size)
    point = binary_metrics(y, p, t)
    rng = np.random.default_rng(seed)
    samples = np.full((n_boot, len(METRICS)), np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        m = binary_metrics(y[idx], p[idx], t[idx])
        samples[b] = [m[k] for k in METRICS]
    out = {}
    for j, name in enumerate(METRICS):
        col = samples[:, j][np.isfinite(samples[:, j])]
        if col.size == 0:
            lo = hi = float("nan")
        else:
            lo, hi = (float(v) for v in np.percentile(col, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
        out[name] = MetricCI(point[name], lo, hi)
    return out


def brier_score(y_true: np.ndarray, prob: np.ndarray) -> float:
    """``mean (p - y)^2``."""
    y, p = _check(y_true, prob)
    return float(np.mean((p - y) ** 2))


def calibration(y_true: np.ndarray, prob: np.ndarray, *, n_bins: int = 5) -> dict[str, list[float]]:
    """``{"prob_pred": [...], "prob_true": [...]}`` over quantile bins."""
    y, p = _check(y_true, prob)
    frac, mean_pred = calibration_curve(y, p, n_bins=min(n_bins, y.size), strategy="quantile")
    return {"prob_pred": mean_pred.tolist(), "prob_true": frac.tolist()}


def roc_band(
    y_true: np.ndarray, prob: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05,
    seed: int = 0, n_grid: int = 101,
) -> dict[str, list[float]]:
    """ROC on a fixed FPR grid with a pointwise percentile-bootstrap band of the TPR.

    Returns:
        ``{"fpr": grid, "tpr": point, "tpr_lower": ..., "tpr_upper": ...}``.
    """
    y, p = _check(y_true, prob)
    grid = np.linspace(0.0, 1.0, n_grid)

    def tpr_on_grid(yy: np.ndarray, pp: np.ndarray) -> np.ndarray:
        fpr, tpr, _ = roc_curve(yy, pp)
        return np.interp(grid, fpr, tpr)

    point = tpr_on_grid(y, p) if 0 < y.sum() < y.size else np.full(n_grid, np.nan)
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        if 0 < y[idx].sum() < y.size:
            curves.append(tpr_on_grid(y[idx], p[idx]))
    if curves:
        lo, hi = np.percentile(np.array(curves), [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    else:
        lo = hi = np.full(n_grid, np.nan)
    return {"fpr": grid.tolist(), "tpr": point.tolist(), "tpr_lower": lo.tolist(),
            "tpr_upper": hi.tolist()}
