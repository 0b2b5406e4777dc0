"""Results of a reader study: its submitted readings as the analysis library's data, and the report.

The one place where database rows become statistics: :func:`readings_frame` turns a study's
submitted readings into a long table (one row per reading, pseudonymous reader and case codes
only), which is also the analysis-ready CSV export; :func:`study_results` builds
:class:`reader_study.analysis.ReaderStudyData`, the AI ratings and the reading times from that
table and calls :func:`reader_study.analysis.study_report`, adding the acceptability summaries
(agreement with the AI, usefulness of the explanation, SUS, trust) that the library does not know.

Ratings (``docs/statistician.md``): the ROC rating is the reader's score on the study's scale
(confidence 0-100 that the case is positive, or the 5-point scale) nudged by half a step towards
the reader's binary decision, so ``rating >= threshold`` is exactly the reader's decision whenever
decision and score agree and ties at the scale's midpoint are split by the decision.

Who may see results: :func:`results_studies_for`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from django.db.models import Q, QuerySet

from apps.accounts.models import Membership, Role
from apps.accounts.permissions import has_role
from apps.registry.models import Prediction
from reader_study.analysis import ReaderStudyData, StudyReport, study_report
from reader_study.analysis.results import jsonable
from reader_study.models import (
    AiAgreement,
    Arm,
    Assignment,
    QuestionnaireResponse,
    RatingScale,
    Reading,
    Study,
    StudyReader,
    StudyStatus,
)

#: Roles that may see a study's results and exports (the study's sites; see results_studies_for).
RESULTS_STUDY_ROLES = (Role.STATISTICIAN, Role.COORDINATOR)

ARMS = (Arm.UNAIDED.value, Arm.AIDED.value)

#: Decision threshold on the ROC rating of each scale: ``rating >= threshold`` is a positive decision.
THRESHOLDS = {RatingScale.CONFIDENCE.value: 50.0, RatingScale.FIVE_POINT.value: 3.0}
#: How far the decision moves the rating from the score (half a step below the scale's resolution).
NUDGE = {RatingScale.CONFIDENCE.value: 0.5, RatingScale.FIVE_POINT.value: 0.25}

#: Columns of the long table / CSV export, with their meaning (docs/statistician.md repeats them).
COLUMNS: dict[str, str] = {
    "reader": "pseudonymous reader code (R01...)",
    "reader_site": "site(s) where the reader holds the reader role",
    "case": "pseudonymous case code (C001...)",
    "modality": "arm: unaided (without AI) or aided (with AI)",
    "arm_label": "arm, readable",
    "session": "reading session (1; 2 in a crossover)",
    "order": "position of the case in the reader's session (1-based, randomised)",
    "truth": "reference standard, 1 = positive (progression), 0 = negative",
    "truth_label": "reference standard, readable",
    "truth_basis": "histology or follow_up",
    "decision": "reader's binary decision, 1 = positive (progression)",
    "decision_label": "decision, readable",
    "confidence": "confidence that the case is positive, 0-100 (confidence scale)",
    "scale": "5-point score, 1 = definitely negative ... 5 = definitely positive (5-point scale)",
    "rating": "ROC rating: score moved half a step towards the decision (rating >= threshold = positive)",
    "threshold": "decision threshold on the rating",
    "ai_probability": "AI probability of a positive case, 0-1 (study model; shown in the aided arm only)",
    "ai_decision": "AI decision at the model's threshold, 1 = positive",
    "ai_agreement": "aided arm: agree / disagree / unsure with the AI",
    "ai_agreement_label": "agreement with the AI, readable",
    "explanation_usefulness": "aided arm: usefulness of the explanation, 1 (useless) - 5 (very useful)",
    "reading_seconds": "server time from case opened to answer submitted, seconds",
    "active_seconds": "time the reading page was visible and active, seconds",
    "comment": "reader's free-text comment (may be empty)",
    "target_x_mm": "biopsy target placed by the reader, x in scanner mm (RAS+; diagnosis studies only)",
    "target_y_mm": "biopsy target, y in scanner mm (RAS+)",
    "target_z_mm": "biopsy target, z in scanner mm (RAS+)",
    "target_i": "biopsy target, voxel index i on the 2 mm common grid (0-based)",
    "target_j": "biopsy target, voxel index j on the common grid (0-based)",
    "target_k": "biopsy target, voxel index k on the common grid (0-based)",
}


# --------------------------------------------------------------------------------------------- access
def results_studies_for(user) -> QuerySet[Study]:
    """Studies whose results and exports ``user`` may see.

    The study selectors' rule (:func:`reader_study.selectors.studies_for_results`: superusers all;
    statisticians and coordinators the studies whose cohort holds an exam of one of their sites,
    coordinators also those they created), for users holding one of :data:`RESULTS_STUDY_ROLES`;
    and a reader of a study never sees its results while it is not closed (blinding), whatever
    other role they hold.
    """
    from reader_study.selectors import studies_for_results

    if not getattr(user, "is_authenticated", False) or not has_role(user, RESULTS_STUDY_ROLES):
        return Study.objects.none()
    reading = StudyReader.objects.filter(user=user).exclude(study__status=StudyStatus.CLOSED).values("study")
    return studies_for_results(user).exclude(pk__in=reading)


# ------------------------------------------------------------------------------------------- ratings
def reading_rating(*, rating_scale: str, decision: bool, confidence: int | None, scale: int | None) -> float:
    """The ROC rating of one answer (higher = more likely positive).

    The score on the study's scale, moved by ``NUDGE`` towards the decision: with the confidence
    scale a positive decision at confidence 62 gives 62.5, a negative one at 50 gives 49.5, so at
    the threshold 50 the decision is the reader's own. A reader whose decision contradicts the score
    (positive at confidence 20) keeps the score's side; :func:`study_results` counts these.
    """
    if rating_scale not in THRESHOLDS:
        raise ValueError(f"unknown rating scale {rating_scale!r}")
    score = confidence if rating_scale == RatingScale.CONFIDENCE else scale
    if score is None:
        raise ValueError(f"a {rating_scale} answer needs its score")
    return float(score) + (NUDGE[rating_scale] if decision else -NUDGE[rating_scale])


def _site_names(study: Study) -> dict[int, str]:
    """Reader user id -> their reader sites (names), joined with '+'."""
    rows = Membership.objects.filter(role=Role.READER, user__study_readers__study=study).values_list(
        "user_id", "site__name").order_by("site__name")
    out: dict[int, list[str]] = {}
    for uid, name in rows:
        out.setdefault(uid, []).append(name)
    return {uid: "+".join(names) for uid, names in out.items()}


def ai_outputs(study: Study) -> dict[str, tuple[float, bool]]:
    """Case code -> (AI probability, AI decision) of the study's model version, where it has one."""
    if study.model_version_id is None:
        return {}
    codes = dict(study.cases.values_list("exam_id", "code"))
    rows = Prediction.objects.filter(model_version_id=study.model_version_id, exam_id__in=list(codes))
    return {codes[p.exam_id]: (float(p.probability), bool(p.decision)) for p in rows}


def _target_columns(reading: Reading) -> dict:
    """The biopsy target's columns: scanner mm and common-grid voxel, or empty (None) without one."""
    mm = reading.target_mm if reading.target_mm and len(reading.target_mm) == 3 else [None] * 3
    ijk = reading.target_voxel if reading.target_voxel and len(reading.target_voxel) == 3 else [None] * 3
    return {"target_x_mm": mm[0], "target_y_mm": mm[1], "target_z_mm": mm[2],
            "target_i": ijk[0], "target_j": ijk[1], "target_k": ijk[2]}


def readings_frame(study: Study) -> pd.DataFrame:
    """The study's submitted readings as a long table with :data:`COLUMNS` (no identifiers).

    Sorted unaided before aided, then by reader and case code, so the analysis sees the arms,
    readers and cases in a stable order.
    """
    sites = _site_names(study)
    ai = ai_outputs(study)
    threshold = THRESHOLDS[study.rating_scale]
    agreement_labels = dict(AiAgreement.choices)
    arm_labels = dict(Arm.choices)
    rows = []
    qs = (Reading.objects.filter(reader__study=study, submitted_at__isnull=False)
          .select_related("reader", "case", "assignment__session"))
    for rd in qs:
        prob, ai_dec = ai.get(rd.case.code, (math.nan, None))
        rows.append({
            "reader": rd.reader.code,
            "reader_site": sites.get(rd.reader.user_id, ""),
            "case": rd.case.code,
            "modality": rd.arm,
            "arm_label": arm_labels.get(rd.arm, rd.arm),
            "session": rd.assignment.session.number,
            "order": rd.assignment.position,
            "truth": int(rd.case.truth),
            "truth_label": rd.case.truth_label,
            "truth_basis": rd.case.truth_basis,
            "decision": int(rd.decision),
            "decision_label": "positive (progression)" if rd.decision else "negative",
            "confidence": rd.confidence,
            "scale": rd.scale,
            "rating": reading_rating(rating_scale=study.rating_scale, decision=rd.decision,
                                     confidence=rd.confidence, scale=rd.scale),
            "threshold": threshold,
            "ai_probability": prob,
            "ai_decision": None if ai_dec is None else int(ai_dec),
            "ai_agreement": rd.ai_agreement,
            "ai_agreement_label": agreement_labels.get(rd.ai_agreement, ""),
            "explanation_usefulness": rd.explanation_usefulness,
            "reading_seconds": max((rd.submitted_at - rd.opened_at).total_seconds(), 0.0),
            "active_seconds": rd.active_seconds,
            "comment": rd.comment or "",
            **_target_columns(rd),
        })
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if frame.empty:
        return frame
    frame["_arm"] = frame["modality"].map({a: i for i, a in enumerate(ARMS)})
    frame = frame.sort_values(["_arm", "reader", "case"], kind="stable").drop(columns="_arm")
    for col in ("confidence", "scale", "ai_decision", "explanation_usefulness", "target_i", "target_j", "target_k"):
        frame[col] = frame[col].astype("Int64")
    for col in ("target_x_mm", "target_y_mm", "target_z_mm"):
        frame[col] = frame[col].astype(float)
    return frame.reset_index(drop=True)


# ------------------------------------------------------------------------------------- the analysis
def analysable(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop the reader/arm cells the MRMC library cannot use yet (no positive or no negative case
    read in that arm: AUC undefined), returning the rest and one note per dropped cell."""
    notes = []
    keep = pd.Series(True, index=frame.index)
    for (reader, arm), cell in frame.groupby(["reader", "modality"], sort=False):
        if cell["truth"].nunique() < 2:
            keep[cell.index] = False
            notes.append(f"reader {reader}, {arm}: {len(cell)} reading(s) without both a positive and "
                         "a negative case yet; left out of the analysis")
    return frame[keep], notes


def time_basis(frame: pd.DataFrame) -> str:
    """``active_seconds`` when every reading has a positive active time, else ``reading_seconds``."""
    active = pd.to_numeric(frame["active_seconds"], errors="coerce")
    return "active_seconds" if len(frame) and active.notna().all() and (active > 0).all() else "reading_seconds"


def analysis_inputs(frame: pd.DataFrame, *, ai_threshold: float | None = None) -> dict[str, Any]:
    """``ReaderStudyData``, ``ai_ratings`` and ``times`` for ``study_report`` from a long table.

    The same function serves the results page and anyone re-running the analysis on the CSV export
    (``pd.read_csv``), which is what keeps the two equal.
    """
    data = ReaderStudyData.from_long(frame[["reader", "case", "modality", "truth", "rating"]])
    per_case = frame.drop_duplicates("case").set_index("case")["ai_probability"].astype(float)
    ai = per_case.reindex(list(data.cases)).to_numpy()
    ai_ratings = None if np.isnan(ai).any() else ai
    basis = time_basis(frame)
    times = frame[["reader", "case", "modality"]].rename(columns={"modality": "arm"})
    times["time"] = np.maximum(pd.to_numeric(frame[basis], errors="coerce").astype(float), 0.1)
    return {"data": data, "ai_ratings": ai_ratings, "ai_threshold": ai_threshold, "times": times,
            "time_basis": basis}


def run_report(frame: pd.DataFrame, *, threshold: float, ai_threshold: float | None = None,
               alpha: float = 0.05) -> tuple[StudyReport, dict[str, Any]]:
    """``study_report`` on a long table, as the results page runs it."""
    inputs = analysis_inputs(frame, ai_threshold=ai_threshold)
    data, times = inputs["data"], inputs["times"]
    arms = [a for a in ARMS if a in data.modalities]
    use_times = times if times["arm"].nunique() >= 2 and len(times) >= 4 else None
    kwargs = {"unaided": arms[0], "aided": arms[1] if len(arms) > 1 else None, "threshold": threshold,
              "ai_ratings": inputs["ai_ratings"], "ai_threshold": inputs["ai_threshold"], "alpha": alpha}
    try:
        report = study_report(data, times=use_times, **kwargs)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        if use_times is None:
            raise
        # a mixed model on a handful of interim readings can be singular: everything else still holds
        report = study_report(data, times=None, **kwargs)
        inputs["time_error"] = f"reading-time model not estimable yet ({type(exc).__name__}: {exc})"
    return report, inputs


# -------------------------------------------------------------------------------------- acceptability
def _mean_sd(values) -> dict[str, float | int | None]:
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").dropna().astype(float)
    return {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None,
            "sd": float(v.std(ddof=1)) if len(v) > 1 else None}


def _agreement_counts(sub: pd.DataFrame) -> dict[str, Any]:
    answered = sub[sub["ai_agreement"] != ""]
    counts = {a: int((answered["ai_agreement"] == a).sum()) for a in AiAgreement.values}
    n = len(answered)
    out: dict[str, Any] = {"n": n, **counts}
    out.update({f"{a}_pct": 100.0 * counts[a] / n if n else None for a in AiAgreement.values})
    with_ai = sub[sub["ai_decision"].notna()]
    same = (with_ai["decision"] == with_ai["ai_decision"].astype(int)).sum()
    out["same_decision_as_ai_pct"] = 100.0 * float(same) / len(with_ai) if len(with_ai) else None
    out["usefulness"] = _mean_sd(sub["explanation_usefulness"].dropna())
    return out


def acceptability(study: Study, frame: pd.DataFrame) -> dict[str, Any]:
    """Agreement with the AI and usefulness of its explanation (aided readings) per reader and
    overall, SUS and trust-in-AI items from the questionnaires."""
    aided = frame[frame["modality"] == Arm.AIDED] if len(frame) else frame
    per_reader = {r: _agreement_counts(g) for r, g in aided.groupby("reader", sort=True)} if len(aided) else {}
    overall = _agreement_counts(aided) if len(aided) else None
    unaided = frame[(frame["modality"] == Arm.UNAIDED) & frame["ai_decision"].notna()] if len(frame) else frame
    unaided_same = (100.0 * float((unaided["decision"] == unaided["ai_decision"].astype(int)).mean())
                    if len(unaided) else None)
    responses = list(QuestionnaireResponse.objects.filter(reader__study=study).select_related("reader")
                     .order_by("reader__code"))
    items = list((study.questionnaire or {}).get("trust_items") or [])
    trust_answers = [list((r.answers or {}).get("trust") or []) for r in responses]
    n_items = max([len(items), *(len(a) for a in trust_answers)]) if trust_answers or items else 0
    trust_items = []
    for i in range(n_items):
        vals = [a[i] for a in trust_answers if i < len(a) and a[i] is not None]
        trust_items.append({"item": items[i] if i < len(items) else f"Trust item {i + 1}", **_mean_sd(vals)})
    return {
        "per_reader": per_reader,
        "overall": overall,
        "unaided_same_decision_as_ai_pct": unaided_same,
        "sus": _mean_sd(r.sus_score for r in responses if r.sus_score is not None),
        "sus_per_reader": {r.reader.code: r.sus_score for r in responses},
        "trust": _mean_sd(r.trust_score for r in responses if r.trust_score is not None),
        "trust_items": trust_items,
        "questionnaires": len(responses),
    }


# ------------------------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class StudyResults:
    """Everything the results page, API and exports show for one study.

    Attributes:
        study: the study.
        final: True once the study is closed (else interim).
        n_submitted: submitted readings.
        n_expected: readings the design asks for (one per assignment and arm).
        frame: the long table of submitted readings (:data:`COLUMNS`).
        threshold: decision threshold on the rating.
        report: ``study_report`` (None until the readings allow an analysis).
        time_basis: which time the reading-time model used.
        acceptability: see :func:`acceptability`.
        notes: readings left out and parts not computed, with the reason.
    """

    study: Study
    final: bool
    n_submitted: int
    n_expected: int
    frame: pd.DataFrame
    threshold: float
    report: StudyReport | None
    time_basis: str | None
    acceptability: dict[str, Any]
    notes: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """``final`` or ``interim: N of M readings``."""
        return "final" if self.final else f"interim: {self.n_submitted} of {self.n_expected} readings"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: meta data, the report's ``to_dict()``, acceptability and notes."""
        s = self.study
        return jsonable({
            "study": {"slug": s.slug, "title": s.title, "task": s.task, "design": s.design,
                      "split_plot": s.split_plot, "rating_scale": s.rating_scale, "status": s.status,
                      "model_version": str(s.model_version) if s.model_version_id else None},
            "status": "final" if self.final else "interim",
            "label": self.label,
            "n_submitted": self.n_submitted,
            "n_expected": self.n_expected,
            "threshold": self.threshold,
            "time_basis": self.time_basis,
            "report": self.report.to_dict() if self.report is not None else None,
            "acceptability": self.acceptability,
            "notes": list(self.notes),
        })


def expected_readings(study: Study) -> int:
    """One reading per assignment and arm: two per case in a sequential session, one in a crossover."""
    qs = Assignment.objects.filter(session__reader__study=study)
    return qs.filter(session__arm="").count() * 2 + qs.exclude(session__arm="").count()


def study_results(study: Study, *, alpha: float = 0.05) -> StudyResults:
    """Build the results of ``study`` from its submitted readings (see the module docstring)."""
    frame = readings_frame(study)
    threshold = THRESHOLDS[study.rating_scale]
    notes: list[str] = []
    report = None
    basis = None
    if len(frame):
        score = frame["confidence"] if study.rating_scale == RatingScale.CONFIDENCE else frame["scale"]
        contradicts = ((frame["decision"] == 1) & (score.astype(float) < threshold)) | (
            (frame["decision"] == 0) & (score.astype(float) > threshold))
        if contradicts.any():
            notes.append(f"{int(contradicts.sum())} reading(s) with a decision on the other side of the "
                         f"score's midpoint ({threshold:g}); the score decides in the analysis")
        usable, dropped = analysable(frame)
        notes += dropped
        if usable["reader"].nunique() >= 1 and len(usable):
            ai_threshold = study.model_version.threshold if study.model_version_id else None
            try:
                report, inputs = run_report(usable, threshold=threshold, ai_threshold=ai_threshold, alpha=alpha)
                basis = inputs["time_basis"]
                if "time_error" in inputs:
                    notes.append(inputs["time_error"])
                if inputs["ai_ratings"] is None:
                    notes.append("no AI probability for every case read: AI-alone comparison skipped")
            except ValueError as exc:  # too few readings for an analysis yet
                notes.append(f"analysis not possible yet: {exc}")
    else:
        notes.append("no submitted readings yet")
    return StudyResults(
        study=study, final=study.status == StudyStatus.CLOSED, n_submitted=len(frame),
        n_expected=expected_readings(study), frame=frame, threshold=threshold, report=report,
        time_basis=basis, acceptability=acceptability(study, frame),
        notes=tuple(notes) + (report.notes if report is not None else ()),
    )


def study_results_cached(study: Study, *, timeout: int = 600) -> StudyResults:
    """:func:`study_results`, reused while the study's readings, questionnaires and status are
    unchanged (the mixed model of reading time takes about a second; the page, its figures and the
    API ask for the same results)."""
    from django.core.cache import cache
    from django.db.models import Count, Max

    readings = Reading.objects.filter(reader__study=study).aggregate(
        n=Count("pk", filter=Q(submitted_at__isnull=False)), last=Max("submitted_at"), top=Max("pk"))
    n_q = QuestionnaireResponse.objects.filter(reader__study=study).count()
    stamp = readings["last"].isoformat() if readings["last"] else "-"
    key = (f"reader_study.results:v1:{study.pk}:{study.status}:{readings['n']}:{readings['top']}:{stamp}:"
           f"{n_q}:{study.rating_scale}:{study.model_version_id}")
    results = cache.get(key)
    if results is None:
        results = study_results(study)
        cache.set(key, results, timeout)
    return results
