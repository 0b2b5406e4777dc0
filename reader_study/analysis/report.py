"""One call for the results page and exports: every reader-study analysis of an aided/unaided study.

:func:`study_report` runs the per-reader performance table, the OR analysis of AUC (and of
sensitivity and specificity when a decision threshold applies), the DBM analysis, agreement,
decision changes, the AI-alone comparison and the reading-time model, and bundles them in one
frozen :class:`StudyReport` with ``summary()`` and ``to_dict()``. Parts that do not apply (no AI
output, no times, an incomplete design) are None, with the reason in ``notes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .agreement import AgreementResult, DecisionChangeResult, agreement, decision_changes
from .data import ReaderStudyData
from .dbm import DBMResult, dbm_analysis
from .design import StandaloneResult, UStatResult, standalone_vs_readers, ustat_analysis
from .or_ import ORResult, or_analysis
from .performance import PerformanceResult, reader_performance
from .results import jsonable
from .timing import ReadingTimeResult, reading_time_model

__all__ = ["StudyReport", "study_report"]


@dataclass(frozen=True, eq=False)
class StudyReport:
    """All analyses of one reader study (None where not applicable; see ``notes``).

    Attributes:
        performance: per-reader, per-arm FOM table (AI included when given).
        or_auc: OR analysis of AUC (fully crossed designs).
        dbm_auc: DBM analysis of AUC (fully crossed designs).
        ustat_auc: U-statistic analysis of AUC (always; the one for split-plot designs).
        or_sensitivity: OR analysis of sensitivity at the threshold.
        or_specificity: OR analysis of specificity at the threshold.
        agreement: Fleiss and Cohen kappa on the decisions (or rating categories).
        decision_changes: unaided -> aided decision changes.
        standalone: AI alone versus the unaided readers.
        reading_time: mixed model on log reading time.
        notes: why a part is missing.
    """

    performance: PerformanceResult
    or_auc: ORResult | None
    dbm_auc: DBMResult | None
    ustat_auc: UStatResult
    or_sensitivity: ORResult | None
    or_specificity: ORResult | None
    agreement: AgreementResult | None
    decision_changes: DecisionChangeResult | None
    standalone: StandaloneResult | None
    reading_time: ReadingTimeResult | None
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary (each part's own ``to_dict()``)."""
        out = {}
        for name in ("performance", "or_auc", "dbm_auc", "ustat_auc", "or_sensitivity", "or_specificity",
                     "agreement", "decision_changes", "standalone", "reading_time"):
            part = getattr(self, name)
            out[name] = part.to_dict() if part is not None else None
        out["notes"] = list(self.notes)
        return jsonable(out)

    def summary(self) -> str:
        """All text reports, one after the other."""
        parts = [p.summary() for p in (self.performance, self.or_auc, self.dbm_auc, self.ustat_auc,
                                       self.or_sensitivity, self.or_specificity, self.agreement,
                                       self.decision_changes, self.standalone, self.reading_time)
                 if p is not None]
        if self.notes:
            parts.append("Notes:\n" + "\n".join(f"- {n}" for n in self.notes))
        return ("\n" + "=" * 78 + "\n").join(parts)


def study_report(
    data: ReaderStudyData,
    *,
    unaided: str | None = None,
    aided: str | None = None,
    threshold: float | None = None,
    ai_ratings: np.ndarray | None = None,
    ai_threshold: float | None = None,
    times: pd.DataFrame | None = None,
    cov: str = "jackknife",
    alpha: float = 0.05,
) -> StudyReport:
    """Run every applicable analysis of a reader study.

    Args:
        data: ratings of all arms.
        unaided: label of the unaided arm (default: first modality).
        aided: label of the aided arm (default: second modality, if any).
        threshold: decision threshold ``rating >= threshold`` for Se/Sp, agreement and decision
            changes; binary 0/1 ratings need none.
        ai_ratings: AI output per case in ``data.cases`` order.
        ai_threshold: decision threshold for the AI (default ``threshold``).
        times: reading times, columns reader, case, arm, time (seconds).
        cov: case covariance for the OR analyses.
        alpha: 1 - confidence level.
    """
    notes: list[str] = []
    unaided = unaided or data.modalities[0]
    if aided is None and data.n_modalities > 1:
        aided = next(m for m in data.modalities if m != unaided)
    binary = bool(np.all(np.isin(data.ratings[~np.isnan(data.ratings)], (0.0, 1.0))))
    has_decision = threshold is not None or binary
    perf = reader_performance(data, threshold=threshold, ai_ratings=ai_ratings, ai_threshold=ai_threshold,
                              alpha=alpha)
    o = d = se = sp = agr = dc = sa = None
    if data.is_fully_crossed:
        o = or_analysis(data, cov=cov, alpha=alpha)
        d = dbm_analysis(data, alpha=alpha)
        if has_decision:
            se = or_analysis(data, fom="sensitivity", cov=cov, threshold=threshold, alpha=alpha)
            sp = or_analysis(data, fom="specificity", cov=cov, threshold=threshold, alpha=alpha)
        else:
            notes.append("no decision threshold: sensitivity/specificity MRMC skipped, agreement on rating categories")
        agr = agreement(data, threshold=threshold if has_decision else None)
        if ai_ratings is not None:
            sa = standalone_vs_readers(data, ai_ratings, modality=unaided, cov=cov, alpha=alpha)
    else:
        notes.append("incomplete design: OR/DBM, agreement and AI-alone comparison need every reader to "
                     "read every case; see the U-statistic analysis")
    if aided is not None and has_decision:
        dc = decision_changes(data, unaided=unaided, aided=aided, threshold=threshold)
    elif aided is None:
        notes.append("one arm only: no decision changes")
    rt = None
    if times is not None:
        rt = reading_time_model(times, reference_arm=unaided, alpha=alpha)
    return StudyReport(perf, o, d, ustat_analysis(data, alpha=alpha), se, sp, agr, dc, sa, rt, tuple(notes))
