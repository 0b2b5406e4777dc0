"""Reads of the reader study, scoped to the user, and what a reader's pages may show.

Who sees which study (rules of apps.accounts.permissions applied to studies):
- coordinators: studies they created, and studies whose cohort holds an exam of a site where they
  are coordinator (a multi-centre study is run jointly by the centres' coordinators); admins: all.
  They may manage (edit, open, close) every study they see.
- readers: the open or closed studies they are a reader of (never drafts), through their
  :class:`StudyReader` only: case codes, never exams.
- statisticians: studies whose cohort holds an exam of one of their sites (for the results pages).

A reader's case page shows the viewer (signed image URLs, :mod:`reader_study.signing`) and, in the
aided arm only, the AI's output (:func:`ai_panel`). The reference standard and other readers'
answers are never part of anything returned for a reader.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import median

from django.core.cache import cache
from django.db.models import Count, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.http import Http404
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Role
from apps.accounts.permissions import MANAGE_ROLES, is_admin, sites_for
from apps.cohorts.models import Mask, Volume
from apps.quantification.models import ExamQuantification
from apps.registry.models import Prediction
from reader_study import biopsy
from reader_study.explanations import OUTCOME_WORDING, explain_prediction, heatmap_file, model_card
from reader_study.models import (
    Arm,
    Assignment,
    Design,
    Reading,
    ReadingSession,
    Study,
    StudyCase,
    StudyReader,
    StudyStatus,
)
from reader_study.services import arm_refusal, session_state
from reader_study.signing import image_token_make

READER_VOLUME_KINDS = ("t1c", "flair", "pet_static", "pet_dynamic")
READER_MASK_KINDS = ("tumor",)  # never the aggressive subregion: it is the biopsy-target reference
READER_MAPS = ("ttp", "slope")


# --- coordinators and statisticians ----------------------------------------------------------

def studies_managed(user) -> QuerySet[Study]:
    """Studies the user may see and manage as coordinator (module docstring)."""
    studies = Study.objects.select_related("cohort", "model_version", "created_by")
    if is_admin(user):
        return studies
    sites = sites_for(user, MANAGE_ROLES)
    return studies.filter(Q(created_by=user) | Q(cohort__exams__patient__site__in=sites)).distinct()


def studies_for_results(user) -> QuerySet[Study]:
    """Studies whose results the user may see: managed ones, plus statisticians' sites' studies."""
    if is_admin(user):
        return Study.objects.all()
    sites = sites_for(user, (Role.STATISTICIAN, Role.COORDINATOR))
    return Study.objects.filter(Q(cohort__exams__patient__site__in=sites) | Q(created_by=user)).distinct()


@dataclass(frozen=True)
class SessionProgress:
    reader: StudyReader
    session: ReadingSession
    state: str
    done: int
    total: int


def study_progress(study: Study) -> list[SessionProgress]:
    """Per reader and session: state and submitted / required readings."""
    sessions = (ReadingSession.objects.filter(reader__study=study).select_related("reader__user", "reader__study")
                .prefetch_related("reader__sessions")
                .annotate(n_assign=Count("assignments", distinct=True),
                          n_done=Count("assignments__readings", filter=Q(assignments__readings__submitted_at__isnull=False),
                                       distinct=True))
                .order_by("reader__code", "number"))
    now = timezone.now()
    return [SessionProgress(reader=s.reader, session=s, state=session_state(s, now=now), done=s.n_done,
                            total=s.n_assign if s.arm else 2 * s.n_assign) for s in sessions]


# --- readers -----------------------------------------------------------------------------------

def studies_read_by(user) -> QuerySet[Study]:
    """Open and closed studies the user is a reader of."""
    return Study.objects.filter(readers__user=user).exclude(status=StudyStatus.DRAFT).distinct()


def study_reader_for(user, slug: str, *, with_sessions: bool = True) -> StudyReader:
    """The user's StudyReader in the study ``slug`` (with its study and model version, and its
    sessions unless ``with_sessions`` is False); 404 when they are not a reader of it (or a draft)."""
    qs = StudyReader.objects.select_related("study", "study__model_version")
    if with_sessions:
        qs = qs.prefetch_related("sessions")
    reader = qs.filter(study__slug=slug, user=user).exclude(study__status=StudyStatus.DRAFT).order_by("pk").first()
    if reader is None:
        raise Http404("no such study")
    return reader


def assignment_for(reader: StudyReader, case_code: str, arm: str, *, with_size: bool = True) -> Assignment:
    """The reader's assignment of case ``case_code`` for ``arm``; 404 when not theirs.
    ``with_size``: with the session's number of cases (see :func:`reading_position`)."""
    if arm not in Arm.values:
        raise Http404("no such arm")
    qs = (Assignment.objects.select_related("session", "case__exam__patient")
          .filter(session__reader=reader, case__code=case_code))
    if with_size:
        qs = qs.annotate(n_session_cases=_session_size())
    if reader.study.design == Design.CROSSOVER:
        qs = qs.filter(session__arm=arm)
    assignment = qs.order_by("session__number", "position").first()  # not Meta.ordering: joins up to the study
    if assignment is None:
        raise Http404("no such case")
    assignment.session.reader = reader  # the reader already loaded (study, sessions): no second fetch
    return assignment


def reader_assignment_for(user, slug: str, case_code: str, arm: str, *,
                          with_size: bool = True) -> tuple[StudyReader, Assignment]:
    """The user's StudyReader in study ``slug`` and their assignment of ``case_code`` for ``arm``; 404
    when the user is not a reader of that (non-draft) study, the case is not theirs or the arm is
    unknown.

    Two short queries (the reader with its study and model version; the assignment with its session,
    case, exam and patient): one query joining all eight tables cost PostgreSQL more to plan (about
    2.5 ms) than the second round trip. ``with_size=False`` leaves out the session's number of cases,
    for callers that do not show the position."""
    if arm not in Arm.values:
        raise Http404("no such arm")
    reader = study_reader_for(user, slug, with_sessions=False)
    return reader, assignment_for(reader, case_code, arm, with_size=with_size)


@dataclass(frozen=True)
class WorklistRow:
    position: int
    code: str
    arms: tuple[tuple[str, str, str], ...]  # (arm, label, state: "done" / "open" / "locked")
    done: bool


@dataclass(frozen=True)
class WorklistSession:
    session: ReadingSession
    state: str
    done: int
    total: int
    rows: list[WorklistRow]


def worklist(reader: StudyReader) -> list[WorklistSession]:
    """The reader's sessions with their cases in the stored order and the state of each arm.

    Shows whether each arm is answered, never what was answered (a crossover reader must not see
    their session-1 answers in session 2)."""
    now = timezone.now()
    submitted = set(Reading.objects.filter(reader=reader, submitted_at__isnull=False).values_list("case_id", "arm"))
    out = []
    for session in reader.sessions.all().order_by("number").prefetch_related(
            Prefetch("assignments", queryset=Assignment.objects.select_related("case").order_by("position"))):
        state = session_state(session, now=now)
        arms = [session.arm] if session.arm else [Arm.UNAIDED, Arm.AIDED]
        rows = []
        for a in session.assignments.all():
            cells = []
            for arm in arms:
                if (a.case_id, arm) in submitted:
                    cells.append((arm, Arm(arm).label, "done"))
                elif state != "open" or reader.study.status != StudyStatus.OPEN:
                    cells.append((arm, Arm(arm).label, "locked"))
                elif arm == Arm.AIDED and not session.arm and (a.case_id, Arm.UNAIDED) not in submitted:
                    cells.append((arm, Arm(arm).label, "locked"))
                else:
                    cells.append((arm, Arm(arm).label, "open"))
            rows.append(WorklistRow(a.position, a.case.code, tuple(cells), all(c[2] == "done" for c in cells)))
        done = sum(1 for r in rows if r.done)
        out.append(WorklistSession(session=session, state=state, done=done, total=len(rows), rows=rows))
    return out


def next_reading(reader: StudyReader, *, sessions: list[ReadingSession] | None = None) -> tuple[str, str] | None:
    """(case code, arm) of the reader's next reading that may be opened now, in the stored order.

    The first case of :func:`worklist` with an ``open`` arm, found with two flat queries (the codes of
    the open sessions' assignments in order, and the reader's submitted (case, arm) pairs) and a scan
    in Python: cheaper on every answer than one query with two EXISTS subqueries, which the ORM took
    twice as long to compile (bench/bench_reading_load.py). The sessions are read again for their
    state unless ``sessions``, the reader's sessions as read in this request, are given."""
    if reader.study.status != StudyStatus.OPEN:
        return None
    if sessions is None:
        sessions = list(ReadingSession.objects.filter(reader=reader).order_by("number"))
    now = timezone.now()
    arm_of = {s.pk: s.arm for s in sessions if session_state(s, now=now, sessions=sessions) == "open"}
    if not arm_of:
        return None
    submitted = set(Reading.objects.filter(reader=reader, submitted_at__isnull=False).values_list("case_id", "arm"))
    rows = (Assignment.objects.filter(session_id__in=list(arm_of)).order_by("session__number", "position")
            .values_list("case_id", "case__code", "session_id"))
    for case_id, code, session_id in rows:
        arms = (arm_of[session_id],) if arm_of[session_id] else (Arm.UNAIDED, Arm.AIDED)
        for arm in arms:
            if (case_id, arm) not in submitted:
                return code, Arm(arm)
    return None


def reader_progress(reader: StudyReader) -> tuple[int, int]:
    """Cases completed / cases to read, over all sessions."""
    done = total = 0
    for s in reader.sessions.all():
        total += s.assignments.count()
        n = Reading.objects.filter(assignment__session=s, submitted_at__isnull=False).count()
        done += n if s.arm else n // 2
    return done, total


def _session_size():
    """The number of assignments of the row's session, as a subquery (no GROUP BY: lockable)."""
    return Subquery(Assignment.objects.filter(session_id=OuterRef("session_id")).order_by()
                    .values("session_id").annotate(n=Count("pk")).values("n")[:1])


def reading_position(assignment: Assignment) -> tuple[int, int]:
    """(position, cases in the session); the count comes with :func:`assignment_for`'s row when it can."""
    n = getattr(assignment, "n_session_cases", None)
    return assignment.position, assignment.session.assignments.count() if n is None else n


# --- the case page -----------------------------------------------------------------------------

def _image_url(reader: StudyReader, case: StudyCase, arm: str, what: str) -> str:
    token = image_token_make(reader_id=reader.pk, case_id=case.pk, arm=arm, what=what)
    return reverse("reader_study:image", args=[token])


def _what_for(arm: str):
    """``what(obj)``: the image a reader may fetch for a layer of the viewer configuration (the
    ``what`` of its signed URL), None for what readers never see."""

    def what(obj) -> str | None:
        if isinstance(obj, Volume):
            return obj.kind if obj.kind in READER_VOLUME_KINDS else None
        if isinstance(obj, Mask):
            return f"mask:{obj.kind}" if obj.kind in READER_MASK_KINDS else None
        if isinstance(obj, tuple) and len(obj) == 2 and obj[1] in READER_MAPS:
            return f"map:{obj[1]}"
        if obj == "heatmap":
            return "heatmap" if arm == Arm.AIDED else None
        if obj == biopsy.AGGRESSIVENESS:  # the subregion map of a biopsy study's aided arm
            return obj if arm == Arm.AIDED else None
        return None

    return what


def _url_for(reader: StudyReader, case: StudyCase, arm: str):
    """The ``url_for`` of the viewer configuration: signed reader URLs, None for what readers never see."""
    what_for = _what_for(arm)

    def url_for(obj) -> str | None:
        what = what_for(obj)
        return _image_url(reader, case, arm, what) if what else None

    return url_for


def _fallback_viewer_config(exam, url_for) -> dict | None:
    """T1c (and FLAIR) under the PET in SUV, from the common-grid volumes, windowed from TBR 1.6 to SUVmax."""
    volumes = {v.kind: v for v in exam.volumes.filter(space="common")}
    pet = volumes.get("pet_static")
    if pet is None:
        return None
    entries = [{"url": url_for(volumes[k]), "name": k.upper() if k == "flair" else "T1c", "filename": f"{k}.nii.gz",
                "colormap": "gray"} for k in ("t1c",) if k in volumes]
    pet_entry = {"url": url_for(pet), "name": "PET (SUV)", "filename": "pet.nii.gz", "colormap": "warm",
                 "opacity": 0.6}
    quant = ExamQuantification.objects.filter(exam=exam).first()
    background = ((quant.config or {}).get("static") or {}).get("background_mean") if quant else None
    if quant and background and quant.suv_max > 1.6 * background:
        pet_entry |= {"cal_min": round(1.6 * background, 3), "cal_max": round(quant.suv_max, 3)}
    overlays = []
    if "flair" in volumes:
        overlays.append({"url": url_for(volumes["flair"]), "name": "FLAIR", "filename": "flair.nii.gz",
                         "colormap": "gray", "opacity": 0.0})
    tumor = Mask.objects.filter(exam=exam, kind="tumor", space="common").first()
    if tumor is not None:
        overlays.append({"url": url_for(tumor), "name": "Tumour VOI", "filename": "tumor.nii.gz",
                         "colormap": "red", "opacity": 0.0})
    return {"volumes": [*entries, pet_entry], "overlays": overlays, "sliceType": "multiplanar", "height": 430}


def _scrub(config: dict) -> dict:
    """Drop entries without a URL (what readers never see) and free-text fields that may name files."""
    for key in ("volumes", "bases", "overlays"):
        if key not in config:
            continue
        config[key] = [dict(v) for v in config.get(key) or [] if v.get("url")]
        for entry in config[key]:
            entry.pop("source_name", None)
    return config


_generation = [0]  # bumped whenever an exam's images, masks, quantification or a model version change
#: The same count in the cache: with a shared cache (settings.CACHE_URL, Redis) a change saved by any
#: process (a Celery worker re-preparing an exam, another web worker) is seen by every process at once.
_GENERATION_KEY = "reader_study:generation"


def _cache_generation() -> str:
    """The key part that changes with the cached data: this process's count and the cache's."""
    return f"{_generation[0]}.{cache.get(_GENERATION_KEY, 0)}"


def cached_data_changed(**_kwargs) -> None:
    """Signal receiver (reader_study.apps): forget the cached viewer configurations and training
    references (a saved or deleted exam, volume, mask, quantification or model version; primary keys
    can be reused, e.g. after a rollback): in this process, and through the cache in every process
    that shares it."""
    _generation[0] += 1
    try:
        cache.incr(_GENERATION_KEY)
    except ValueError:  # not in the cache yet (or evicted from a per-process one)
        cache.set(_GENERATION_KEY, 1, None)


#: How long the cache keeps a case's viewer configuration (without its signed URLs): the images of a
#: case in a running study do not change; a re-prepared exam shows at once in the processes that share
#: the cache with the process that saved it, within this time in the others.
VIEWER_CONFIG_CACHE_SECONDS = 300
_SIGNED = "signed-image:"  # placeholder URL prefix in the cached configuration, + the image's ``what``


def _viewer_template(case: StudyCase, arm: str, *, heatmap: bool) -> dict | None:
    """The scrubbed viewer configuration of the case with placeholder URLs (``signed-image:<what>``),
    computed once per exam, arm kind and heat map, then kept :data:`VIEWER_CONFIG_CACHE_SECONDS` (it
    reads the volumes, masks and quantification: about a third of a case open otherwise)."""
    key = f"reader_study:viewer:{_cache_generation()}:{case.exam_id}:{'aided' if arm == Arm.AIDED else 'unaided'}:{int(heatmap)}"
    key += f":study{case.study_id}"  # the aided arm of a biopsy study adds the study's subregion map
    cached = cache.get(key)
    if cached is not None:
        return cached.get("config")
    what_for = _what_for(arm)

    def url_for(obj) -> str | None:
        what = what_for(obj)
        return f"{_SIGNED}{what}" if what else None

    exam = case.exam
    config = None
    try:
        from apps.quantification.viewer import exam_viewer_config
    except ImportError:
        exam_viewer_config = None
    if exam_viewer_config is not None:
        config = exam_viewer_config(exam, url_for=url_for, heatmap_url=url_for("heatmap") if heatmap else None)
    if config is None:
        config = _fallback_viewer_config(exam, url_for)
    config = biopsy.aided_layers(config, case, arm, url_for)
    config = _scrub(config) if config else None
    cache.set(key, {"config": config}, VIEWER_CONFIG_CACHE_SECONDS)
    return config


def _signed(node, sign):
    """A copy of ``node`` with every ``signed-image:<what>`` URL replaced by ``sign(what)``."""
    if isinstance(node, dict):
        return {k: (sign(v[len(_SIGNED):]) if k == "url" and isinstance(v, str) and v.startswith(_SIGNED)
                    else _signed(v, sign)) for k, v in node.items()}
    if isinstance(node, list):
        return [_signed(v, sign) for v in node]
    return node


def case_viewer_config(reader: StudyReader, case: StudyCase, arm: str, *,
                       prediction: Prediction | None = None) -> dict | None:
    """The viewer configuration of a case for this reader and arm, with signed image URLs.

    Uses ``apps.quantification.viewer.exam_viewer_config`` when it exists (crosshair on the lesion,
    maps, TACs), else a minimal T1c + PET configuration. The configuration is cached per exam (see
    :func:`_viewer_template`); the URLs are signed for this reader, case and arm on every call."""
    if arm != Arm.AIDED:
        prediction = None
    elif prediction is None or prediction.exam_id != case.exam_id:
        prediction = ai_prediction(reader.study, case)
    heatmap = bool(heatmap_file(prediction))
    template = _viewer_template(case, arm, heatmap=heatmap)
    if template is None:
        return None
    return _signed(template, lambda what: _image_url(reader, case, arm, what))


def ai_prediction(study: Study, case: StudyCase) -> Prediction | None:
    if study.model_version_id is None:
        return None
    return Prediction.objects.filter(model_version_id=study.model_version_id, exam_id=case.exam_id).first()


#: How long a process keeps a model version's training references (they change only if its
#: training cohort's quantification is redone).
REFERENCES_CACHE_SECONDS = 600


def _training_references(model_version) -> tuple[dict[str, float], int | None]:
    """Median of each clinical parameter over the model's training exams, and their number of sites
    (cached per model version, :data:`REFERENCES_CACHE_SECONDS`)."""
    key = f"reader_study:refs:{_cache_generation()}:{model_version.pk}"
    cached = cache.get(key)
    if cached is None:
        cached = _training_references_read(model_version)
        cache.set(key, cached, REFERENCES_CACHE_SECONDS)
    return cached


def _training_references_read(model_version) -> tuple[dict[str, float], int | None]:
    cohort = model_version.training_cohort
    if cohort is None:
        return {}, None
    exams = cohort.exams.filter(timepoint="suspected_recurrence")
    if model_version.external_site_id:
        exams = exams.exclude(patient__site_id=model_version.external_site_id)
    n_sites = exams.values("patient__site").distinct().count()
    rows = ExamQuantification.objects.filter(exam__in=exams).values(*[f for f in model_version.features
                                                                      if f in _QUANT_FIELDS])
    refs = {}
    for field in model_version.features:
        if field not in _QUANT_FIELDS:
            continue
        values = [r[field] for r in rows if r[field] is not None]
        if values:
            refs[field] = float(median(values))
    return refs, n_sites


_QUANT_FIELDS = {"suv_max", "suv_mean", "tbr_max", "tbr_mean", "ts_max", "ts_mean", "mtv_ml", "ttp_min",
                 "slope_suv_per_h"}


def ai_panel(reader: StudyReader, case: StudyCase, arm: str, *, assignment: Assignment | None = None,
             prediction: Prediction | None = None, refusal_checked: bool = False) -> dict | None:
    """What the aided arm shows: probability, decision, explanation, intended use and warnings.

    None in the unaided arm, and None whenever blinding forbids the arm now (belt and braces: the
    views check :func:`reader_study.services.arm_refusal` first). ``assignment`` and ``prediction``:
    the ones the caller already loaded for this reader and case (looked up when not given);
    ``refusal_checked``: the caller checked :func:`arm_refusal` for this assignment and arm in this
    request (``reading_open`` did), so it is not read again."""
    if arm != Arm.AIDED:
        return None
    if assignment is None or assignment.case_id != case.pk or assignment.session.reader_id != reader.pk:
        assignment, refusal_checked = assignment_for(reader, case.code, arm), False
    if not refusal_checked and arm_refusal(assignment=assignment, arm=arm):
        return None
    study = reader.study
    if prediction is None or prediction.exam_id != case.exam_id or prediction.model_version_id != study.model_version_id:
        prediction = ai_prediction(study, case)
    if prediction is None:
        return None
    mv = study.model_version
    refs, n_sites = _training_references(mv)
    return {
        "probability_pct": round(100 * prediction.probability),
        "decision": prediction.decision,
        "label": _outcome_words(study, prediction.decision),
        "positive": _outcome_words(study, True),
        "threshold_pct": round(100 * prediction.threshold),
        "features": explain_prediction(prediction.explanation or {}, task=mv.task, references=refs),
        "card": model_card(mv, n_development_sites=n_sites),
        "has_heatmap": bool(heatmap_file(prediction)),
    }


def _outcome_words(study: Study, positive: bool) -> str:
    pos, neg = OUTCOME_WORDING.get(study.task, ("positive", "negative"))
    return pos if positive else neg
