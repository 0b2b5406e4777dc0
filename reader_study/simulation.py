"""Simulated readers: fill an open study's readings so the results page shows real numbers.

A Roe-Metz style binormal model (Roe & Metz 1997, Acad Radiol 4:298; the correlated decision
variables behind the MRMC simulations of Hillis 2007). For reader r, case k (truth t_k in {0, 1})
and arm a, the latent "suspicion" is

    z_rka = t_k (mu + s_r + D [a = aided]) + c_k + (rc)_rk + e_rka

with c_k ~ N(0, case_sd^2) the case difficulty shared by every reader and arm, s_r ~ N(0, reader_sd^2)
the reader's skill, (rc)_rk ~ N(0, reader_case_sd^2) the reader's view of that case, shared by the
two arms, and e_rka ~ N(0, noise_sd^2). D is the AI benefit on the separation (``--ai-benefit``). In the
aided arm the rating is pulled towards the AI: ``(1 - w) z + w a_k`` with ``a_k`` the AI logit put
on the latent scale. In a sequential design the aided read starts from the reader's unaided latent
(same images, one more look: small extra noise ``repeat_sd``), so most decisions do not change.

Answers follow from ``p = Phi((z - mu/2) / sd)``: confidence ``round(100 p)`` or the 5-point score
by quintile, decision ``p >= 1/2``; agreement with the AI and usefulness of the explanation in the
aided arm; reading times log-normal (reader speed, case difficulty, noise; the sequential aided
re-read about 45 % of the unaided time, a crossover aided read about 10 % longer); SUS and trust
questionnaires when the study asks for them.

Every random number comes from ``numpy.random.default_rng([seed, ...])`` drawn for the whole
reader x case grid in code order, so the same seed gives the same readings whichever of them exist
already. Readings are written with the ORM, not through ``reading_submit``, because simulated
readings need past server times (a crossover's washout lies between the sessions); one
``study.simulate`` audit event records the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from scipy import stats

from apps.accounts.models import Membership, Role, Site
from apps.audit.services import audit_record
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
    StudyReader,
    StudyStatus,
)
from reader_study.results import ai_outputs

#: Prefix of simulated reader accounts (unusable passwords: nobody logs in as them).
SIM_USER_PREFIX = "sim-reader"


class SimulationError(ValueError):
    """The study cannot be simulated as asked (the message says why)."""


@dataclass(frozen=True)
class ReaderModel:
    """Parameters of the simulated readers (latent scale; see the module docstring).

    Attributes:
        separation: mu, mean separation of positive from negative cases unaided (AUC about
            Phi(mu / sqrt(2 (case_sd^2 + reader_case_sd^2 + noise_sd^2))) = 0.80 by default).
        ai_benefit: D, added to the separation in the aided arm.
        case_sd: case difficulty, shared by readers and arms.
        reader_sd: spread of the readers' skill (on the separation).
        reader_case_sd: reader x case effect, shared by the arms.
        noise_sd: reading noise, new at every read.
        repeat_sd: extra noise of the sequential aided re-read.
        ai_weight: w, pull of the aided rating towards the AI.
        unaided_median_s: median unaided reading time, seconds.
    """

    separation: float = 1.45
    ai_benefit: float = 0.0
    case_sd: float = 0.6
    reader_sd: float = 0.25
    reader_case_sd: float = 0.45
    noise_sd: float = 0.45
    repeat_sd: float = 0.45
    ai_weight: float = 0.25
    unaided_median_s: float = 95.0

    def __post_init__(self) -> None:
        if not 0 <= self.ai_weight < 1:
            raise ValueError("ai_weight must be in [0, 1)")
        for name in ("case_sd", "reader_sd", "reader_case_sd", "noise_sd", "repeat_sd"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`readers_simulate` did."""

    readers_added: int
    readings_written: int
    questionnaires_written: int


# ----------------------------------------------------------------------------------------- readers
def study_sites(study: Study) -> list[Site]:
    """The sites of the study's cases (where simulated readers are created), by name."""
    return list(Site.objects.filter(patients__exams__study_cases__study=study).distinct().order_by("name"))


def simulated_reader_users(study: Study, n: int) -> list:
    """``n`` reader accounts for ``study``, created as needed, spread over the study's sites."""
    sites = study_sites(study) or list(Site.objects.order_by("name")[:1])
    if not sites:
        raise SimulationError("no site to create readers at")
    User = get_user_model()
    users = []
    for i in range(n):
        user, created = User.objects.get_or_create(username=f"{SIM_USER_PREFIX}-{study.pk}-{i + 1:02d}")
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        site = sites[i % len(sites)]
        Membership.objects.get_or_create(user=user, site=site, role=Role.READER)
        users.append(user)
    return users


def readers_ensure(study: Study, n_readers: int, *, user=None) -> int:
    """Give the study at least ``n_readers`` readers through the study services; returns how many
    were added. Refused once reading has started (the design is locked)."""
    from reader_study import services  # the study's writes belong to the study services

    existing = list(study.readers.select_related("user"))
    if len(existing) >= n_readers:
        return 0
    if Reading.objects.filter(reader__study=study).exists():
        raise SimulationError(f"the study has {len(existing)} readers and reading has started: readers can "
                              f"no longer be added (ask for --readers {len(existing)} or fewer)")
    have = {r.user_id for r in existing}
    new = [u for u in simulated_reader_users(study, n_readers) if u.pk not in have][: n_readers - len(existing)]
    try:
        services.study_readers_set(study=study, user=user, readers=[r.user for r in existing] + new)
    except services.StudyError as exc:
        raise SimulationError(str(exc)) from exc
    return len(new)


def study_simulated_setup(
    *, n_cases: int, n_readers: int, seed: int, sites: tuple[str, ...] = ("sim-north", "sim-south"),
    slug: str | None = None, user=None,
) -> Study:
    """An open sequential study on synthetic exam rows (no images), for load tests and dry runs.

    Creates ``sites``, ``n_cases`` suspected-recurrence exams (half progression) as database rows,
    a ``sim-ai`` model version with a prediction per exam (informative, imperfect), a cohort, and the
    study through the study services (cases, ``n_readers`` simulated reader accounts, open). No
    readings: :func:`readers_simulate` or real clients fill them. Exams without images show no
    viewer; everything else (worklists, opening, submitting, results) works as in a real study.
    """
    from apps.cohorts.models import Cohort, Exam, Patient
    from apps.registry.models import ModelVersion, Prediction
    from reader_study import services

    if n_cases < 2 or n_readers < 1:
        raise SimulationError("a study needs at least 2 cases and 1 reader")
    rng = np.random.default_rng([seed, 21])
    site_objs = [Site.objects.get_or_create(name=name, defaults={"display_name": name})[0] for name in sites]
    tag = slug or f"sim-{seed}-{n_cases}x{n_readers}"
    model = ModelVersion.objects.create(
        name="sim-ai", version=(ModelVersion.objects.filter(name="sim-ai").count() + 1), task="progression",
        family="classical", algorithm="simulated", threshold=0.5, artifact="models/simulated.none",
        config={"simulated": True, "seed": seed})
    exams = []
    for k in range(n_cases):
        positive = k % 2 == 0
        patient = Patient.objects.create(site=site_objs[k % len(site_objs)], code=f"{tag}-P{k + 1:03d}")
        exam = Exam.objects.create(patient=patient, code="ses-01", timepoint="suspected_recurrence", day=200,
                                   diagnosis="progression" if positive else "treatment_related",
                                   diagnosis_basis="histology" if k % 3 else "follow_up")
        p = float(np.clip(rng.normal(0.66 if positive else 0.36, 0.18), 0.01, 0.99))
        Prediction.objects.create(model_version=model, exam=exam, probability=p, decision=p >= 0.5,
                                  label="progression" if p >= 0.5 else "treatment_related", threshold=0.5)
        exams.append(exam)
    cohort = Cohort.objects.create(name=f"{tag}-cohort", purpose="reader_study")
    cohort.exams.add(*exams)
    study = services.study_create(title=f"Simulated study {tag}", question="Progression or treatment-related change?",
                                  cohort=cohort, user=user, model_version=model, seed=seed, slug=slug)
    services.study_cases_set(study=study, user=user)
    services.study_readers_set(study=study, user=user, readers=simulated_reader_users(study, n_readers))
    return services.study_open(study=study, user=user)


# ---------------------------------------------------------------------------------------- the model
def _answers(p: np.ndarray, rating_scale: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Decision, confidence (0-100) and 5-point score from the probability of a positive case."""
    confidence = np.clip(np.rint(100 * p), 0, 100).astype(int)
    decision = confidence >= 50
    if rating_scale == RatingScale.CONFIDENCE:
        return decision, confidence, None
    scale = 1 + np.digitize(p, [0.2, 0.4, 0.6, 0.8])
    return p >= 0.5, None, scale


def latent_ratings(
    *, truth: np.ndarray, ai_prob: np.ndarray | None, n_readers: int, sequential: bool, model: ReaderModel,
    seed: int,
) -> dict[str, np.ndarray]:
    """Latent ratings ``{"unaided": (R, K), "aided": (R, K)}`` of the module docstring's model."""
    k = truth.size
    rng = np.random.default_rng([seed, 11])
    case = rng.normal(0, model.case_sd, k)
    skill = rng.normal(0, model.reader_sd, n_readers)
    reader_case = rng.normal(0, model.reader_case_sd, (n_readers, k))
    e_unaided = rng.normal(0, model.noise_sd, (n_readers, k))
    e_aided = rng.normal(0, model.repeat_sd if sequential else model.noise_sd, (n_readers, k))
    t = truth.astype(float)[None, :]
    base = t * (model.separation + skill[:, None]) + case[None, :] + reader_case
    unaided = base + e_unaided
    own = (unaided + e_aided) if sequential else (base + e_aided)
    aided = own + t * model.ai_benefit
    if ai_prob is not None:
        logit = np.log(np.clip(ai_prob, 1e-3, 1 - 1e-3) / (1 - np.clip(ai_prob, 1e-3, 1 - 1e-3)))
        ai_latent = model.separation / 2 + logit * model.separation / 1.4
        aided = (1 - model.ai_weight) * aided + model.ai_weight * ai_latent[None, :]
    return {"unaided": unaided, "aided": aided}


def _probability(z: np.ndarray, model: ReaderModel) -> np.ndarray:
    sd = math.sqrt(model.case_sd ** 2 + model.reader_case_sd ** 2 + model.noise_sd ** 2) or 1.0
    return stats.norm.cdf((z - model.separation / 2) / sd)


# ------------------------------------------------------------------------------------------ filling
@transaction.atomic
def readers_simulate(
    *, study: Study, n_readers: int, seed: int, ai_benefit: float = 0.0, model: ReaderModel | None = None,
    user=None,
) -> SimulationSummary:
    """Fill every unanswered assignment of an open study with simulated readings.

    Adds simulated readers first when the study has fewer than ``n_readers`` (only before reading
    started). Existing submitted readings are kept; an opened but unanswered reading is answered.
    Only readers of the study whose every assignment is answered get a questionnaire.

    Args:
        study: an open study with sessions and assignments.
        n_readers: readers wanted (at least); existing readers are all simulated.
        seed: seed of every random draw (same seed, same readings).
        ai_benefit: D, the AI's effect on the separation (latent SD units, ~1 = large).
        model: the other parameters (defaults in :class:`ReaderModel`).
        user: who runs the simulation (audit).
    """
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.status != StudyStatus.OPEN:
        raise SimulationError(f"the study is {study.get_status_display().lower()}: only an open study can be "
                              "read (open it first)")
    if n_readers < 1:
        raise SimulationError("--readers must be at least 1")
    base_model = model or ReaderModel()
    model = ReaderModel(**{**base_model.__dict__, "ai_benefit": float(ai_benefit)})
    added = readers_ensure(study, n_readers, user=user)
    readers = list(study.readers.order_by("code"))
    cases = list(study.cases.order_by("code"))
    if not readers or not cases:
        raise SimulationError("the study has no readers or no cases")
    if not Assignment.objects.filter(session__reader__study=study).exists():
        raise SimulationError("the study has no reading sessions yet (open it first)")
    truth = np.array([c.truth for c in cases], dtype=int)
    ai = ai_outputs(study)
    ai_prob = np.array([ai[c.code][0] for c in cases]) if all(c.code in ai for c in cases) else None
    sequential = study.design == Design.SEQUENTIAL
    z = latent_ratings(truth=truth, ai_prob=ai_prob, n_readers=len(readers), sequential=sequential,
                       model=model, seed=seed)
    answers = {arm: _answers(_probability(z[arm], model), study.rating_scale) for arm in Arm.values}
    r_idx = {r.pk: i for i, r in enumerate(readers)}
    k_idx = {c.pk: i for i, c in enumerate(cases)}
    rng = np.random.default_rng([seed, 12])
    speed = rng.normal(0, 0.3, len(readers))
    difficulty = rng.normal(0, 0.25, len(cases))
    t_noise = {arm: rng.normal(0, 0.35, (len(readers), len(cases))) for arm in Arm.values}
    u_agree = rng.random((len(readers), len(cases)))
    u_useful = rng.normal(0, 0.8, (len(readers), len(cases)))
    aided_factor = 0.45 if sequential else 1.1

    def seconds(arm: str, ri: int, ki: int) -> float:
        log_t = math.log(model.unaided_median_s) + speed[ri] + difficulty[ki] + t_noise[arm][ri, ki]
        return round(max(math.exp(log_t) * (aided_factor if arm == Arm.AIDED else 1.0), 4.0), 1)

    existing = {(rd.reader_id, rd.case_id, rd.arm): rd for rd in Reading.objects.filter(reader__study=study)}
    now = timezone.now()
    sessions = list(ReadingSession.objects.filter(reader__study=study).order_by("reader__code", "number"))
    # a past timeline: session 1 of every reader ends an hour ago, or before the washout in a crossover
    span = timedelta(days=study.washout_days + 2) if study.design == Design.CROSSOVER else timedelta(0)
    written = 0
    for session in sessions:
        ri = r_idx[session.reader_id]
        clock = now - span - timedelta(hours=8) if session.number == 1 else None
        if clock is None:
            previous = next(s for s in sessions if s.reader_id == session.reader_id and s.number == 1)
            clock = (previous.completed_at or now - timedelta(hours=8)) + timedelta(days=study.washout_days, hours=1)
            clock = min(clock, now - timedelta(hours=4))
        session.started_at = session.started_at or clock
        arms = [session.arm] if session.arm else [Arm.UNAIDED, Arm.AIDED]
        for assignment in session.assignments.select_related("case").order_by("position"):
            ki = k_idx[assignment.case_id]
            for arm in arms:
                rd = existing.get((session.reader_id, assignment.case_id, arm))
                if rd is not None and rd.submitted_at is not None:
                    clock = max(clock, rd.submitted_at)
                    continue
                decision, confidence, scale = (a[ri, ki] if a is not None else None for a in answers[arm])
                active = seconds(arm, ri, ki)
                opened = clock + timedelta(seconds=2)
                submitted = opened + timedelta(seconds=round(active * 1.08 + 3, 1))
                fields = {
                    "assignment": assignment, "decision": bool(decision),
                    "confidence": None if confidence is None else int(confidence),
                    "scale": None if scale is None else int(scale), "opened_at": opened, "submitted_at": submitted,
                    "active_seconds": active, "ai_agreement": "", "explanation_usefulness": None,
                }
                if arm == Arm.AIDED and ai_prob is not None:
                    same = bool(decision) == (ai[assignment.case.code][1])
                    u = u_agree[ri, ki]
                    fields["ai_agreement"] = (AiAgreement.AGREE if u < 0.88 else AiAgreement.UNSURE) if same else (
                        AiAgreement.DISAGREE if u < 0.7 else AiAgreement.UNSURE)
                    fields["explanation_usefulness"] = int(np.clip(np.rint(3.4 + (0.5 if same else -0.6)
                                                                           + u_useful[ri, ki]), 1, 5))
                elif arm == Arm.AIDED:
                    fields["ai_agreement"], fields["explanation_usefulness"] = AiAgreement.UNSURE, 3
                if rd is None:
                    Reading.objects.create(reader_id=session.reader_id, case_id=assignment.case_id, arm=arm, **fields)
                else:
                    Reading.objects.filter(pk=rd.pk, submitted_at__isnull=True).update(**fields)
                written += 1
                clock = submitted
        session.completed_at = session.completed_at or clock
        session.save(update_fields=["started_at", "completed_at"])
        if session.number == 1 and study.design == Design.CROSSOVER:
            ReadingSession.objects.filter(reader_id=session.reader_id, number=2).update(
                opens_at=session.completed_at + timedelta(days=study.washout_days))
    n_q = _questionnaires(study, readers, seed)
    audit_record(action="study.simulate", actor=user, target=study,
                 details={"readers": len(readers), "readers_added": added, "seed": seed,
                          "ai_benefit": ai_benefit, "readings_written": written, "questionnaires": n_q})
    return SimulationSummary(added, written, n_q)


def _questionnaires(study: Study, readers: list[StudyReader], seed: int) -> int:
    """SUS and trust answers for every reader without one (when the study asks for them)."""
    from reader_study.services import sus_score

    config = study.questionnaire or {}
    n_trust = len(config.get("trust_items") or [])
    if not config.get("sus") and not n_trust:
        return 0
    rng = np.random.default_rng([seed, 13])
    done = set(QuestionnaireResponse.objects.filter(reader__study=study).values_list("reader_id", flat=True))
    written = 0
    for reader in readers:  # draws for every reader, in code order, so the seed fixes each answer
        attitude = rng.normal(0, 0.6)
        positive_items = np.clip(np.rint(3.8 + attitude + rng.normal(0, 0.6, 5)), 1, 5).astype(int)
        negative_items = np.clip(np.rint(2.0 - attitude + rng.normal(0, 0.6, 5)), 1, 5).astype(int)
        trust = np.clip(np.rint(3.5 + attitude + rng.normal(0, 0.7, n_trust)), 1, 5).astype(int).tolist()
        if reader.pk in done:
            continue
        sus = [int(v) for pair in zip(positive_items, negative_items) for v in pair] if config.get("sus") else []
        QuestionnaireResponse.objects.create(
            reader=reader, answers={"sus": sus, "trust": trust},
            sus_score=sus_score(sus) if sus else None, trust_score=float(np.mean(trust)) if trust else None)
        written += 1
    return written
