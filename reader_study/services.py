"""Writes of the reader study: design, opening and closing, readings, questionnaires.

Every function is keyword-only, checks before it writes, runs in one transaction and records an
audit event (``study.create``, ``study.design_change``, ``study.cases_set``, ``study.readers_set``,
``study.open``, ``study.close``, ``reading.open``, ``reading.submit``, ``questionnaire.submit``).
Refusals raise :class:`StudyError` (or a subclass) with a message for the user; views turn them
into a form error or an API 400/409.

Rules enforced here, not in the pages:
- the design is locked once the first :class:`~reader_study.models.Reading` exists (a reader has
  opened a case);
- case orders, crossover groups and split-plot subsets come from the stored ``Study.seed`` and are
  stored (:class:`Assignment` positions), so a study is reproducible;
- a reading is answered once: the update is conditional on ``submitted_at IS NULL``, so of two
  concurrent submits exactly one stores;
- crossover session 2 opens ``washout_days`` after the reader completed session 1.
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Iterable
from datetime import timedelta

import numpy as np
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Count, F, OuterRef, Subquery
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.models import Membership, Role
from apps.audit.services import audit_record
from apps.cohorts.models import Diagnosis, Exam, Timepoint
from apps.registry.models import Prediction
from reader_study.models import (
    AiAgreement,
    Arm,
    Assignment,
    Design,
    QuestionnaireResponse,
    RatingScale,
    Reading,
    ReadingSession,
    Study,
    StudyCase,
    StudyReader,
    StudyStatus,
    StudyTask,
)

#: Fields whose change reshapes sessions and assignments.
DESIGN_FIELDS = ("task", "design", "split_plot", "cases_per_reader", "washout_days", "rating_scale", "cohort",
                 "model_version", "seed")
EDITABLE_FIELDS = ("title", "question", "questionnaire", *DESIGN_FIELDS)
DEFAULT_TRUST_ITEMS = [
    "I trust the AI's probability for cases like these.",
    "The explanation helped me understand why the AI decided as it did.",
    "I would use this AI in my clinical routine.",
]
DEFAULT_QUESTIONNAIRE = {"sus": True, "trust_items": DEFAULT_TRUST_ITEMS}
#: The System Usability Scale (Brooke 1996), "system" read as "the AI-assisted reading".
SUS_ITEMS = [
    "I think that I would like to use this AI-assisted reading frequently.",
    "I found the AI-assisted reading unnecessarily complex.",
    "I thought the AI-assisted reading was easy to use.",
    "I think that I would need the support of a technical person to be able to use it.",
    "I found the various functions well integrated.",
    "I thought there was too much inconsistency.",
    "I would imagine that most physicians would learn to use it very quickly.",
    "I found it very cumbersome to use.",
    "I felt very confident using it.",
    "I needed to learn a lot of things before I could get going with it.",
]
#: Longest active time accepted from a page, whatever the clock says (a forgotten tab).
MAX_ACTIVE_SECONDS = 4 * 3600


class StudyError(ValueError):
    """The request is refused by the study's state or design (the message says why)."""


class DesignLocked(StudyError):
    """The design cannot change: a reading exists."""


class ReadingLocked(StudyError):
    """This reading was already answered (or is not open to this reader now)."""


# --- design -------------------------------------------------------------------------------------

def _audit_study(action: str, study: Study, user, request, details: dict | None = None) -> None:
    audit_record(action=action, actor=user, target=study, details=details or {}, request=request)


def _design_locked(study: Study) -> bool:
    return Reading.objects.filter(reader__study=study).exists()


def _check_design(study: Study) -> None:
    if study.split_plot and not study.cases_per_reader:
        raise StudyError("split-plot: give the number of cases per reader")
    if study.model_version is not None:
        task = "progression" if study.task == StudyTask.PROGRESSION else None
        if task and study.model_version.task != task:
            raise StudyError(f"the model {study.model_version} answers {study.model_version.task!r}, "
                             f"not this study's task")
    questionnaire = study.questionnaire or {}
    items = questionnaire.get("trust_items", [])
    if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
        raise StudyError("trust items must be a list of non-empty texts")


def _unique_slug(title: str) -> str:
    base = slugify(title)[:80] or "study"
    slug, n = base, 1
    while Study.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def study_create(
    *, title: str, question: str, cohort, user, task: str = StudyTask.PROGRESSION,
    design: str = Design.SEQUENTIAL, rating_scale: str = RatingScale.CONFIDENCE, split_plot: bool = False,
    cases_per_reader: int | None = None, washout_days: int = 28, model_version=None, seed: int | None = None,
    questionnaire: dict | None = None, slug: str | None = None, request=None,
) -> Study:
    """A draft study (cases and readers are set with :func:`study_cases_set` / :func:`study_readers_set`)."""
    study = Study(
        title=title.strip(), slug=slug or _unique_slug(title), question=question.strip(), task=task,
        design=design, rating_scale=rating_scale, split_plot=split_plot,
        cases_per_reader=cases_per_reader if split_plot else None, washout_days=washout_days, cohort=cohort,
        model_version=model_version, seed=secrets.randbits(48) if seed is None else seed,
        questionnaire=DEFAULT_QUESTIONNAIRE if questionnaire is None else questionnaire, created_by=user,
    )
    _check_design(study)
    study.full_clean()
    study.save()
    _audit_study("study.create", study, user, request, {"design": design, "task": task, "cohort": cohort.name,
                                                         "seed": study.seed})
    return study


@transaction.atomic
def study_update(*, study: Study, user, request=None, **changes) -> Study:
    """Change the design of a study that no reader has started; refused (:class:`DesignLocked`) after."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise StudyError(f"not editable: {', '.join(sorted(unknown))}")
    if study.status == StudyStatus.CLOSED:
        raise StudyError("the study is closed")
    if _design_locked(study):
        raise DesignLocked("the design is locked: readers have started reading")
    before = {k: getattr(study, k) for k in changes}
    for key, value in changes.items():
        setattr(study, key, value)
    if not study.split_plot:
        study.cases_per_reader = None
    _check_design(study)
    study.full_clean()
    study.save()
    diff = {k: {"old": _jsonable(before[k]), "new": _jsonable(getattr(study, k))}
            for k in changes if before[k] != getattr(study, k)}
    if "cohort" in diff:
        ReadingSession.objects.filter(reader__study=study).delete()
        StudyCase.objects.filter(study=study).delete()
    if study.status == StudyStatus.OPEN and set(diff) & set(DESIGN_FIELDS):
        _sessions_build(study)
    if diff:
        _audit_study("study.design_change", study, user, request, {"changes": diff})
    return study


def _jsonable(value):
    if hasattr(value, "pk"):
        return str(value)
    return value


def _eligible_exams(study: Study):
    if study.task == StudyTask.BIOPSY_TARGET:
        exams = study.cohort.exams.filter(timepoint=Timepoint.INITIAL_DIAGNOSIS, patient__who_grade__isnull=False,
                                          masks__kind="aggressive")
    else:
        exams = study.cohort.exams.filter(timepoint=Timepoint.SUSPECTED_RECURRENCE).exclude(
            diagnosis=Diagnosis.UNKNOWN)
    if study.model_version_id:
        exams = exams.filter(predictions__model_version_id=study.model_version_id)
    return exams.select_related("patient").distinct()


def _truth(study: Study, exam: Exam) -> tuple[bool, str, str]:
    if study.task == StudyTask.BIOPSY_TARGET:
        high = exam.patient.who_grade >= 3
        return high, "high_grade" if high else "low_grade", "histology"
    return exam.diagnosis == Diagnosis.PROGRESSION, exam.diagnosis, exam.diagnosis_basis


@transaction.atomic
def study_cases_set(*, study: Study, user, exams: Iterable[Exam] | None = None, n_cases: int | None = None,
                    request=None) -> list[StudyCase]:
    """The case set: eligible exams of the study's cohort (known reference standard for the task, and
    a prediction of the study's model when one is set), all, the given ones, or ``n_cases`` of them
    drawn with the study's seed. Codes ``C001``... follow a seeded shuffle, never the exam order
    (which would group sites)."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    if _design_locked(study):
        raise DesignLocked("the design is locked: readers have started reading")
    eligible = {e.pk: e for e in _eligible_exams(study)}
    if exams is not None:
        chosen = []
        for exam in exams:
            if exam.pk not in eligible:
                raise StudyError(f"exam {exam.pk} is not eligible: not in the cohort, no reference standard "
                                 f"for this task, or no prediction of the study's model")
            chosen.append(eligible[exam.pk])
    else:
        chosen = list(eligible.values())
    chosen.sort(key=lambda e: e.pk)
    rng = np.random.default_rng([study.seed, 1])
    if n_cases is not None:
        if n_cases < 1 or n_cases > len(chosen):
            raise StudyError(f"{n_cases} cases asked, {len(chosen)} eligible")
        chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), size=n_cases, replace=False))]
    if not chosen:
        raise StudyError("no eligible exam in the cohort for this task")
    truths = [_truth(study, e)[0] for e in chosen]
    if all(truths) or not any(truths):
        raise StudyError("the case set needs positive and negative cases (ROC analysis)")
    ReadingSession.objects.filter(reader__study=study).delete()  # assignments protect the old cases
    StudyCase.objects.filter(study=study).delete()
    order = rng.permutation(len(chosen))
    width = max(3, len(str(len(chosen))))
    cases = []
    for code_number, idx in enumerate(order, start=1):
        exam = chosen[idx]
        truth, label, basis = _truth(study, exam)
        cases.append(StudyCase(study=study, exam=exam, code=f"C{code_number:0{width}d}", truth=truth,
                               truth_label=label, truth_basis=basis))
    StudyCase.objects.bulk_create(cases)
    if study.status == StudyStatus.OPEN:
        _sessions_build(study)
    _audit_study("study.cases_set", study, user, request,
                 {"n_cases": len(cases), "n_positive": int(sum(truths)), "exam_ids": sorted(e.pk for e in chosen)})
    return list(study.cases.all())


def reader_candidates():
    """Users who hold the reader role at some site (a site admin holds every role at its site)."""
    return (get_user_model().objects.filter(memberships__role__in=[Role.READER, Role.ADMIN], is_active=True)
            .distinct().order_by("username"))


@transaction.atomic
def study_readers_set(*, study: Study, user, readers: Iterable, request=None) -> list[StudyReader]:
    """The study's readers (users with the reader role at any site), with shuffled codes ``R01``..."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    if _design_locked(study):
        raise DesignLocked("the design is locked: readers have started reading")
    users = sorted({u.pk: u for u in readers}.values(), key=lambda u: u.pk)
    holders = set(Membership.objects.filter(user__in=users, role__in=[Role.READER, Role.ADMIN])
                  .values_list("user_id", flat=True))
    lacking = [u.get_username() for u in users if u.pk not in holders]
    if lacking:
        raise StudyError(f"not readers at any site: {', '.join(lacking)}")
    if not users:
        raise StudyError("choose at least one reader")
    StudyReader.objects.filter(study=study).delete()
    order = np.random.default_rng([study.seed, 2]).permutation(len(users))
    width = max(2, len(str(len(users))))
    rows = [StudyReader(study=study, user=users[idx], code=f"R{n:0{width}d}") for n, idx in enumerate(order, 1)]
    StudyReader.objects.bulk_create(rows)
    if study.status == StudyStatus.OPEN:
        _sessions_build(study)
    _audit_study("study.readers_set", study, user, request, {"n_readers": len(rows)})
    return list(study.readers.all())


def split_plot_subsets(truths: list[bool], n_readers: int, k: int, seed) -> list[list[int]]:
    """Per-reader case subsets of size ``k``, stratified by truth and balanced over readers.

    Positive and negative cases are shuffled once; reader ``r`` takes the next ``k_pos`` positives and
    ``k_neg`` negatives cyclically from offset ``r * k_pos`` (``r * k_neg``), so every reader reads both
    classes in the case set's proportion and every case is read by ``floor`` or ``ceil`` of
    ``n_readers * k / n`` readers.
    """
    n = len(truths)
    if not 1 <= k <= n:
        raise StudyError(f"cases per reader must be between 1 and {n}")
    rng = np.random.default_rng(seed)
    pos = [i for i, t in enumerate(truths) if t]
    neg = [i for i, t in enumerate(truths) if not t]
    pos = [pos[i] for i in rng.permutation(len(pos))]
    neg = [neg[i] for i in rng.permutation(len(neg))]
    k_pos = min(len(pos), max(1, round(k * len(pos) / n))) if pos else 0
    k_neg = min(len(neg), k - k_pos)
    k_pos = k - k_neg
    subsets = []
    for r in range(n_readers):
        chosen = [pos[(r * k_pos + j) % len(pos)] for j in range(k_pos)] if pos else []
        chosen += [neg[(r * k_neg + j) % len(neg)] for j in range(k_neg)] if neg else []
        subsets.append(sorted(chosen))
    return subsets


def _sessions_build(study: Study) -> None:
    """(Re)create every reader's sessions and randomised case orders from the study's seed."""
    ReadingSession.objects.filter(reader__study=study).delete()
    readers = list(study.readers.order_by("code"))
    cases = list(study.cases.order_by("code"))
    if not readers or not cases:
        return
    rng = np.random.default_rng([study.seed, 3])
    if study.design == Design.CROSSOVER:
        ranks = rng.permutation(len(readers))
        for reader, rank in zip(readers, ranks, strict=True):
            reader.group = "A" if rank % 2 == 0 else "B"
        StudyReader.objects.bulk_update(readers, ["group"])
    if study.split_plot:
        subsets = split_plot_subsets([c.truth for c in cases], len(readers), study.cases_per_reader,
                                     [study.seed, 4])
    else:
        subsets = [list(range(len(cases)))] * len(readers)
    assignments = []
    for reader, subset in zip(readers, subsets, strict=True):
        if study.design == Design.CROSSOVER:
            first, second = (Arm.UNAIDED, Arm.AIDED) if reader.group == "A" else (Arm.AIDED, Arm.UNAIDED)
            plan = [(1, first), (2, second)]
        else:
            plan = [(1, "")]
        for number, arm in plan:
            order_seed = int(rng.integers(0, 2**62))
            session = ReadingSession.objects.create(reader=reader, number=number, arm=arm, order_seed=order_seed)
            order = np.random.default_rng(order_seed).permutation(len(subset))
            assignments += [Assignment(session=session, case=cases[subset[i]], position=pos)
                            for pos, i in enumerate(order, start=1)]
    Assignment.objects.bulk_create(assignments)


@transaction.atomic
def study_open(*, study: Study, user, request=None) -> Study:
    """Open a draft study: build sessions and case orders; readers can start at once."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != StudyStatus.DRAFT:
        raise StudyError(f"the study is {study.get_status_display().lower()}, not a draft")
    cases = list(study.cases.all())
    n_readers = study.readers.count()
    if not cases:
        raise StudyError("choose the cases first")
    if not n_readers:
        raise StudyError("choose the readers first")
    if study.design == Design.CROSSOVER and n_readers < 2:
        raise StudyError("a crossover needs at least two readers (groups A and B)")
    if study.model_version is None:
        raise StudyError("choose the model whose output the aided arm shows")
    predicted = set(Prediction.objects.filter(model_version=study.model_version,
                                              exam__in=[c.exam_id for c in cases]).values_list("exam_id", flat=True))
    missing = [c.code for c in cases if c.exam_id not in predicted]
    if missing:
        raise StudyError(f"no prediction of {study.model_version} for cases {', '.join(missing)}")
    if study.split_plot and study.cases_per_reader > len(cases):
        raise StudyError(f"{study.cases_per_reader} cases per reader, only {len(cases)} cases")
    _check_design(study)
    _sessions_build(study)
    study.status, study.opened_at = StudyStatus.OPEN, timezone.now()
    study.save(update_fields=["status", "opened_at"])
    _audit_study("study.open", study, user, request, {"n_cases": len(cases), "n_readers": n_readers})
    return study


@transaction.atomic
def study_close(*, study: Study, user, request=None) -> Study:
    """Close an open study: no reading can be opened or answered any more."""
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != StudyStatus.OPEN:
        raise StudyError("only an open study can be closed")
    study.status, study.closed_at = StudyStatus.CLOSED, timezone.now()
    study.save(update_fields=["status", "closed_at"])
    _audit_study("study.close", study, user, request,
                 {"n_submitted": Reading.objects.filter(reader__study=study, submitted_at__isnull=False).count()})
    return study


# --- reading ------------------------------------------------------------------------------------

def session_state(session: ReadingSession, *, now=None, sessions: Iterable[ReadingSession] | None = None) -> str:
    """``completed``, ``waiting`` (session 1 not completed), ``washout`` (before opens_at) or ``open``.

    ``sessions``: the reader's sessions when the caller holds them (read at the same time as ``session``),
    else ``session.reader.sessions``."""
    now = now or timezone.now()
    if session.completed_at is not None:
        return "completed"
    if session.number > 1:
        siblings = session.reader.sessions.all() if sessions is None else sessions
        previous = next((s for s in siblings if s.number == session.number - 1), None)
        if previous is not None and previous.completed_at is None:
            return "waiting"
    if session.opens_at is not None and now < session.opens_at:
        return "washout"
    return "open"


def arm_refusal(*, assignment: Assignment, arm: str, now=None, study_status: str | None = None,
                unaided_submitted: bool | None = None) -> str | None:
    """Why ``arm`` of this assignment may not be read now (None: it may).

    The rules of blinding: the study is open; the session is open (washout passed); in a crossover the
    arm is the session's; in a sequential design the aided arm only after the unaided answer is
    submitted (and so locked).

    ``study_status`` and ``unaided_submitted``: facts the caller read from the database in this same
    request (the study's status, whether the reader's unaided answer to this case is submitted); each
    one not given is read here.
    """
    session = assignment.session
    study = session.reader.study
    if arm not in Arm.values:
        return "unknown arm"
    if study_status is None:  # read now: the study may have closed since the objects were loaded
        study_status = Study.objects.filter(pk=study.pk).order_by().values_list("status", flat=True).first()
    if study_status != StudyStatus.OPEN:
        return "the study is not open"
    state = session_state(session, now=now)
    if state == "washout":
        return f"session {session.number} opens on {timezone.localtime(session.opens_at):%Y-%m-%d %H:%M}"
    if state == "waiting":
        return f"session {session.number} opens after session {session.number - 1} is completed"
    if study.design == Design.CROSSOVER:
        if session.arm != arm:
            return "this arm is not read in this session"
    elif arm == Arm.AIDED:
        if unaided_submitted is None:
            unaided_submitted = Reading.objects.filter(
                reader=session.reader, case=assignment.case, arm=Arm.UNAIDED, submitted_at__isnull=False
            ).exists()
        if not unaided_submitted:
            return "answer this case without the AI first"
    return None


def case_readings(reader: StudyReader, case) -> dict[str, Reading]:
    """The reader's readings of ``case`` by arm (opened or submitted), in one query."""
    rows = Reading.objects.filter(reader=reader, case=case).order_by("pk")
    out: dict[str, Reading] = {}
    for row in rows:
        out.setdefault(row.arm, row)
    return out


def reading_open(*, assignment: Assignment, arm: str, user, request=None, readings: dict | None = None,
                 study_status: str | None = None) -> Reading:
    """The reader's reading of this case in this arm, created on first open (server ``opened_at``).

    Idempotent: opening again returns the same row (its ``opened_at`` unchanged). Raises
    :class:`ReadingLocked` when blinding forbids the arm now (see :func:`arm_refusal`).
    ``readings``: :func:`case_readings` of this reader and case when the caller read them in this
    request; ``study_status``: the study's status read in this request (both read here when not given).
    """
    reader, case = assignment.session.reader, assignment.case
    if readings is None:
        readings = case_readings(reader, case)
    unaided = readings.get(Arm.UNAIDED)
    reason = arm_refusal(assignment=assignment, arm=arm, study_status=study_status,
                         unaided_submitted=bool(unaided is not None and unaided.submitted_at is not None))
    if reason:
        raise ReadingLocked(reason)
    now = timezone.now()
    created = False
    reading = readings.get(arm)
    if reading is None:
        try:
            with transaction.atomic():
                reading = Reading.objects.create(reader=reader, case=case, arm=arm, assignment=assignment,
                                                 opened_at=now)
                created = True
        except IntegrityError:  # two tabs opening at once: the other created it (unique reader/case/arm)
            reading = Reading.objects.get(reader=reader, case=case, arm=arm)
    reading.reader, reading.case = reader, case  # the rows it was looked up by: no refetch for the audit
    if created and assignment.session.started_at is None:
        ReadingSession.objects.filter(pk=assignment.session_id, started_at__isnull=True).update(started_at=now)
        assignment.session.started_at = now
    audit_record(action="reading.open", actor=user, target=reading, site=case.exam.patient.site_id,
                 details={"study": reader.study.slug, "case": case.code, "arm": arm, "first": created},
                 request=request)
    return reading


def target_voxel(target_mm: list[float]) -> list[int]:
    """Common-grid voxel indices [i, j, k] of a point in scanner mm; StudyError outside the grid."""
    from ml.io.grid import common_grid  # loads nibabel and scipy: not at Django start-up

    grid = common_grid()
    ijk = np.linalg.solve(grid.affine, np.array([*target_mm, 1.0]))[:3]
    voxel = [int(round(float(v))) for v in ijk]
    if any(not 0 <= v < n for v, n in zip(voxel, grid.shape, strict=True)):
        raise StudyError("the target lies outside the image")
    return voxel


def _answer_fields(reading: Reading, study: Study, answer: dict) -> dict:
    """Validated fields of an answer (StudyError names what is missing or wrong)."""
    decision = answer.get("decision")
    if not isinstance(decision, bool):
        raise StudyError("give your decision")
    fields: dict = {"decision": decision, "comment": str(answer.get("comment") or "")[:5000],
                    "confidence": None, "scale": None, "ai_agreement": "", "explanation_usefulness": None,
                    "target_mm": None, "target_voxel": None}
    if study.rating_scale == RatingScale.CONFIDENCE:
        confidence = answer.get("confidence")
        if not isinstance(confidence, int) or isinstance(confidence, bool) or not 0 <= confidence <= 100:
            raise StudyError("confidence must be a whole number from 0 to 100")
        fields["confidence"] = confidence
    else:
        scale = answer.get("scale")
        if not isinstance(scale, int) or isinstance(scale, bool) or not 1 <= scale <= 5:
            raise StudyError("choose a rating from 1 to 5")
        fields["scale"] = scale
    if study.task == StudyTask.BIOPSY_TARGET:
        mm = answer.get("target_mm")
        if not (isinstance(mm, list | tuple) and len(mm) == 3
                and all(isinstance(v, int | float) and math.isfinite(v) for v in mm)):
            raise StudyError("place the biopsy target in the viewer")
        fields["target_mm"] = [round(float(v), 2) for v in mm]
        fields["target_voxel"] = target_voxel(fields["target_mm"])
    if reading.arm == Arm.AIDED:
        agreement = answer.get("ai_agreement")
        if agreement not in AiAgreement.values:
            raise StudyError("say whether you agree with the AI")
        usefulness = answer.get("explanation_usefulness")
        if not isinstance(usefulness, int) or isinstance(usefulness, bool) or not 1 <= usefulness <= 5:
            raise StudyError("rate the usefulness of the explanation from 1 to 5")
        fields["ai_agreement"], fields["explanation_usefulness"] = agreement, usefulness
    return fields


def clamp_active_seconds(value, *, elapsed: float) -> float | None:
    """The page's active time, clamped to [0, server time since opening] (None when not a number)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(seconds):
        return None
    # down to the 0.1 s, so rounding never takes it above the server's elapsed time
    return math.floor(10 * min(max(seconds, 0.0), max(elapsed, 0.0), MAX_ACTIVE_SECONDS)) / 10


def reading_submit(*, reading: Reading, answer: dict, user, active_seconds=None, request=None) -> Reading:
    """Store the answer once: a second submit (or one after the study closed) raises ReadingLocked.

    ``answer``: ``decision`` (bool), ``confidence`` (0-100) or ``scale`` (1-5) per the study's rating
    scale, ``comment``, for biopsy-target studies ``target_mm`` ([x, y, z] scanner mm; the voxel on
    the common grid is computed here), and in the aided arm ``ai_agreement`` and
    ``explanation_usefulness`` (1-5). ``active_seconds`` comes from the page and is clamped to the
    server time between opening and submitting.
    """
    study = reading.reader.study
    fields = _answer_fields(reading, study, answer)
    with transaction.atomic():
        # the study's status read under the lock (it may have closed since the objects were loaded), in
        # the statement that takes it; only the session row is locked
        session = (ReadingSession.objects.select_for_update(of=("self",))
                   .annotate(n_assignments=Subquery(Assignment.objects.filter(session_id=OuterRef("pk")).order_by()
                                                    .values("session_id").annotate(n=Count("pk")).values("n")[:1]),
                             study_status=F("reader__study__status"))
                   .get(pk=reading.assignment.session_id))
        if session.reader_id == reading.reader_id:
            session.reader = reading.reader
        if session.study_status != StudyStatus.OPEN:
            raise ReadingLocked("the study is not open")
        now = timezone.now()
        fields["active_seconds"] = clamp_active_seconds(
            active_seconds, elapsed=(now - reading.opened_at).total_seconds())
        stored = Reading.objects.filter(pk=reading.pk, submitted_at__isnull=True).update(submitted_at=now, **fields)
        if not stored:
            raise ReadingLocked("this case was already answered; answers are locked once submitted")
        _session_complete_if_done(session, now)
        if session.completed_at is not None:  # the caller's copy of the session learns it too
            reading.assignment.session.completed_at = session.completed_at
        for name, value in fields.items():  # exactly what the conditional update stored
            setattr(reading, name, value)
        reading.submitted_at = now
        audit_record(action="reading.submit", actor=user, target=reading, site=reading.case.exam.patient.site_id,
                     details={"study": study.slug, "case": reading.case.code, "arm": reading.arm,
                              "decision": reading.decision, "confidence": reading.confidence,
                              "scale": reading.scale, "ai_agreement": reading.ai_agreement,
                              "explanation_usefulness": reading.explanation_usefulness,
                              "active_seconds": reading.active_seconds},
                     request=request)
    return reading


def session_required_readings(session: ReadingSession) -> int:
    n = getattr(session, "n_assignments", None)
    if n is None:
        n = session.assignments.count()
    return n if session.arm else 2 * n


def _session_complete_if_done(session: ReadingSession, now) -> None:
    """Mark the (locked) session completed when every reading is in; start the washout of the next."""
    submitted = Reading.objects.filter(assignment__session=session, submitted_at__isnull=False).count()
    if submitted < session_required_readings(session):
        return
    if ReadingSession.objects.filter(pk=session.pk, completed_at__isnull=True).update(completed_at=now):
        session.completed_at = now
        washout = timedelta(days=session.reader.study.washout_days)
        ReadingSession.objects.filter(reader=session.reader, number=session.number + 1).update(opens_at=now + washout)


# --- questionnaire ------------------------------------------------------------------------------

def sus_score(answers: list[int]) -> float:
    """System Usability Scale, 0-100 (Brooke 1996): odd items ``x - 1``, even items ``5 - x``, sum x 2.5."""
    if len(answers) != 10 or not all(isinstance(a, int) and 1 <= a <= 5 for a in answers):
        raise StudyError("the SUS has 10 answers from 1 to 5")
    return 2.5 * sum((a - 1) if i % 2 == 0 else (5 - a) for i, a in enumerate(answers))


@transaction.atomic
def questionnaire_submit(*, reader: StudyReader, answers: dict, user, request=None) -> QuestionnaireResponse:
    """The reader's end-of-study questionnaire, once, after their last case."""
    study = reader.study
    config = study.questionnaire or {}
    if not reader_finished(reader):
        raise StudyError("the questionnaire comes after your last case")
    sus = answers.get("sus") or []
    trust = answers.get("trust") or []
    n_trust = len(config.get("trust_items", []))
    score = sus_score(sus) if config.get("sus") else None
    if len(trust) != n_trust or not all(isinstance(a, int) and 1 <= a <= 5 for a in trust):
        raise StudyError(f"answer the {n_trust} trust items from 1 to 5")
    try:
        with transaction.atomic():
            response = QuestionnaireResponse.objects.create(
                reader=reader, answers={"sus": sus if config.get("sus") else [], "trust": trust}, sus_score=score,
                trust_score=float(np.mean(trust)) if trust else None)
    except IntegrityError as exc:
        raise StudyError("the questionnaire was already submitted") from exc
    audit_record(action="questionnaire.submit", actor=user, target=response,
                 details={"study": study.slug, "sus_score": score, "trust_score": response.trust_score},
                 request=request)
    return response


def reader_finished(reader: StudyReader) -> bool:
    """Every session of the reader is completed."""
    sessions = list(reader.sessions.all())
    return bool(sessions) and all(s.completed_at is not None for s in sessions)
