"""Per-reader, per-arm performance table: AUC and the binary-decision FOMs with CIs.

AUC: empirical (Wilcoxon) with the DeLong et al. (1988) standard error ``sqrt(S10/K1 + S01/K0)``
and a Wald interval clipped to [0, 1]. Sensitivity, specificity, accuracy, PPV and NPV at the
decision ``rating >= threshold``, each with a Wilson score interval (Newcombe 1998). The AI can
be added as one more "reader" with fixed output, shown in every arm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .data import ReaderStudyData
from .fom import decisions, placement_values, wilson_interval
from .results import format_table, jsonable

__all__ = ["ReaderPerformance", "PerformanceResult", "reader_performance"]


@dataclass(frozen=True)
class ReaderPerformance:
    """Figures of merit of one reader in one arm.

    Attributes:
        modality: arm.
        reader: reader label (``"AI"`` for the algorithm).
        n_negative: non-diseased cases read.
        n_positive: diseased cases read.
        auc: empirical AUC (ties 1/2).
        auc_se: DeLong standard error.
        auc_ci: Wald CI clipped to [0, 1].
        sensitivity: TP / (TP + FN), with ``sensitivity_ci`` (Wilson).
        specificity: TN / (TN + FP), with ``specificity_ci``.
        accuracy: (TP + TN) / n, with ``accuracy_ci``.
        ppv: TP / (TP + FP), with ``ppv_ci`` (NaN when no positive decision).
        npv: TN / (TN + FN), with ``npv_ci``.
        tp, fp, tn, fn: the confusion counts.
    """

    modality: str
    reader: str
    n_negative: int
    n_positive: int
    auc: float
    auc_se: float
    auc_ci: tuple[float, float]
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]
    accuracy: float
    accuracy_ci: tuple[float, float]
    ppv: float
    ppv_ci: tuple[float, float]
    npv: float
    npv_ci: tuple[float, float]
    tp: int
    fp: int
    tn: int
    fn: int


@dataclass(frozen=True)
class PerformanceResult:
    """Per-reader performance for every arm.

    Attributes:
        rows: one :class:`ReaderPerformance` per (arm, reader), AI last in each arm.
        threshold: decision threshold (None when the ratings were binary or not given).
        alpha: 1 - confidence level.
    """

    rows: tuple[ReaderPerformance, ...]
    threshold: float | None
    alpha: float

    def frame(self) -> pd.DataFrame:
        """One row per (arm, reader); CI tuples split into ``_low`` / ``_high`` columns."""
        recs = []
        for r in self.rows:
            d = jsonable(r)
            for key in [k for k, v in d.items() if k.endswith("_ci")]:
                d[key[:-3] + "_low"], d[key[:-3] + "_high"] = d.pop(key)
            recs.append(d)
        return pd.DataFrame(recs)

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary."""
        return jsonable(self)

    def summary(self) -> str:
        """Text table."""
        rows = [[r.modality, r.reader, r.auc, f"{r.auc_ci[0]:.3f}-{r.auc_ci[1]:.3f}", r.sensitivity,
                 r.specificity, r.accuracy, r.ppv, r.npv] for r in self.rows]
        return format_table(["arm", "reader", "AUC", "AUC CI", "Se", "Sp", "Acc", "PPV", "NPV"], rows,
                            title="Reader performance")


def _one(modality: str, reader: str, rating: np.ndarray, truth: np.ndarray, threshold: float | None,
         binary_ok: bool, alpha: float) -> ReaderPerformance:
    read = ~np.isnan(rating)
    x, y = rating[read & (truth == 0)], rating[read & (truth == 1)]
    auc, v10, v01 = placement_values(x, y)
    auc = float(auc)
    var = (np.var(v10, ddof=1) / y.size if y.size > 1 else 0.0) + (
        np.var(v01, ddof=1) / x.size if x.size > 1 else 0.0)
    se = float(np.sqrt(var))
    z = stats.norm.ppf(1 - alpha / 2)
    auc_ci = (max(0.0, auc - z * se), min(1.0, auc + z * se))
    nan2 = (float("nan"), float("nan"))
    if threshold is None and not binary_ok:
        tp = fp = tn = fn = 0
        vals = dict(sensitivity=float("nan"), specificity=float("nan"), accuracy=float("nan"),
                    ppv=float("nan"), npv=float("nan"))
        cis = dict(sensitivity_ci=nan2, specificity_ci=nan2, accuracy_ci=nan2, ppv_ci=nan2, npv_ci=nan2)
    else:
        d = decisions(rating[read], threshold)
        t = truth[read]
        tp, fn = int(((d == 1) & (t == 1)).sum()), int(((d == 0) & (t == 1)).sum())
        tn, fp = int(((d == 0) & (t == 0)).sum()), int(((d == 1) & (t == 0)).sum())

        def prop(k: int, n: int) -> tuple[float, tuple[float, float]]:
            return (k / n if n else float("nan")), (wilson_interval(k, n, alpha) if n else nan2)

        vals, cis = {}, {}
        for name, (k, n) in {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp),
                             "accuracy": (tp + tn, tp + tn + fp + fn), "ppv": (tp, tp + fp),
                             "npv": (tn, tn + fn)}.items():
            vals[name], cis[name + "_ci"] = prop(k, n)
    return ReaderPerformance(modality, reader, int(x.size), int(y.size), auc, se, auc_ci, **vals, **cis,
                             tp=tp, fp=fp, tn=tn, fn=fn)


def reader_performance(
    data: ReaderStudyData,
    *,
    threshold: float | None = None,
    ai_ratings: np.ndarray | None = None,
    ai_threshold: float | None = None,
    alpha: float = 0.05,
) -> PerformanceResult:
    """AUC, Se, Sp, accuracy, PPV, NPV with CIs per reader and arm (and for the AI).

    Args:
        data: ratings (any design; each reader uses the cases they read).
        threshold: decision threshold (``rating >= threshold``); binary 0/1 ratings need none.
            Without one, non-binary ratings give the AUC only (binary FOMs NaN).
        ai_ratings: the AI output per case in ``data.cases`` order, added as reader ``"AI"``.
        ai_threshold: decision threshold for the AI (default: ``threshold``).
        alpha: 1 - confidence level.
    """
    binary = bool(np.all(np.isin(data.ratings[~np.isnan(data.ratings)], (0.0, 1.0))))
    rows = []
    for ti, m in enumerate(data.modalities):
        for j, r in enumerate(data.readers):
            rows.append(_one(m, r, data.ratings[ti, j], data.truth, threshold, binary, alpha))
        if ai_ratings is not None:
            ai = np.asarray(ai_ratings, dtype=float)
            if ai.shape != (data.n_cases,):
                raise ValueError(f"ai_ratings has shape {ai.shape}, expected ({data.n_cases},)")
            ai_bin = bool(np.all(np.isin(ai[~np.isnan(ai)], (0.0, 1.0))))
            thr = ai_threshold if ai_threshold is not None else threshold
            rows.append(_one(m, "AI", ai, data.truth, thr, ai_bin, alpha))
    return PerformanceResult(tuple(rows), threshold, alpha)
