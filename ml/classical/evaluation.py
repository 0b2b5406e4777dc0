"""Evaluation of out-of-sample predictions: metrics with CIs, calibration, ROC band, plots.

:class:`EvaluationResult` is what the model registry stores for "cross-validation" (nested CV,
out-of-fold probabilities, each case judged at the cut-off learned in its training folds) and for
"external" (a held-out site, judged at the final model's stored cut-off).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ml.classical import plots
from ml.classical.metrics import (
    METRICS,
    MetricCI,
    bootstrap_metrics,
    brier_score,
    calibration,
    roc_band,
)

__all__ = ["EvaluationResult", "evaluate_predictions", "json_safe"]


def json_safe(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python and NaN/inf into None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


@dataclass(frozen=True)
class EvaluationResult:
    """Out-of-sample performance of one model on one set of cases.

    Attributes:
        name: ``"cross-validation"`` or ``"external:<site>"``.
        cases: case identifiers (the features' index, as str).
        y_true: 0/1 truth (N,).
        prob: predicted probability of the positive class (N,).
        thresholds: decision cut-off applied to each case (N,).
        metrics: :data:`~ml.classical.metrics.METRICS` -> :class:`MetricCI`.
        brier: Brier score.
        calibration: ``{"prob_pred", "prob_true"}``.
        roc: ``{"fpr", "tpr", "tpr_lower", "tpr_upper"}``.
    """

    name: str
    cases: tuple[str, ...]
    y_true: np.ndarray
    prob: np.ndarray
    thresholds: np.ndarray
    metrics: dict[str, MetricCI]
    brier: float
    calibration: dict[str, list[float]]
    roc: dict[str, list[float]]

    @property
    def n(self) -> int:
        """Number of cases."""
        return int(self.y_true.size)

    @property
    def n_positive(self) -> int:
        """Number of positive cases."""
        return int(self.y_true.sum())

    def summary_frame(self) -> pd.DataFrame:
        """One row per metric: estimate, lower, upper."""
        return pd.DataFrame(
            {k: [v.estimate, v.lower, v.upper] for k, v in self.metrics.items()},
            index=["estimate", "lower", "upper"],
        ).T

    def summary(self) -> str:
        """Plain-text table of the metrics with 95% CIs."""
        lines = [f"{self.name}: n={self.n} ({self.n_positive} positive), Brier {self.brier:.3f}"]
        for k in METRICS:
            m = self.metrics[k]
            lines.append(f"  {k:<12}{m.estimate:6.3f}  [{m.lower:.3f}, {m.upper:.3f}]")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: metrics, Brier, calibration, ROC band and per-case predictions."""
        return json_safe({
            "name": self.name,
            "n": self.n,
            "n_positive": self.n_positive,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "brier": self.brier,
            "calibration": self.calibration,
            "roc": self.roc,
            "cases": list(self.cases),
            "y_true": self.y_true.astype(int).tolist(),
            "prob": self.prob.tolist(),
            "thresholds": self.thresholds.tolist(),
        })

    def roc_figure(self) -> Figure:
        """ROC curve with the 95% bootstrap band."""
        return plots.roc_figure(self.roc, auc=self.metrics["auc"].to_dict(), title=self.name)

    def calibration_figure(self) -> Figure:
        """Calibration curve with the Brier score."""
        return plots.calibration_figure(self.calibration, brier=self.brier, title=self.name)


def evaluate_predictions(
    name: str,
    y_true: np.ndarray,
    prob: np.ndarray,
    thresholds: float | np.ndarray,
    *,
    cases: tuple[str, ...] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> EvaluationResult:
    """Build an :class:`EvaluationResult` (bootstrap metrics, calibration, ROC band)."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), p.shape).copy()
    return EvaluationResult(
        name=name,
        cases=tuple(str(c) for c in (cases if cases is not None else range(y.size))),
        y_true=y,
        prob=p,
        thresholds=t,
        metrics=bootstrap_metrics(y, p, t, n_boot=n_bootstrap, seed=seed),
        brier=brier_score(y, p),
        calibration=calibration(y, p),
        roc=roc_band(y, p, n_boot=n_bootstrap, seed=seed),
    )
