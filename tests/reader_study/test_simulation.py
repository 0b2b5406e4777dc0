"""Simulated readers: every assignment filled, the AI benefit shows, the seed fixes the readings."""
from __future__ import annotations

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from reader_study.analysis import empirical_auc
from reader_study.models import Arm, Design, QuestionnaireResponse, Reading, StudyStatus
from reader_study.results import readings_frame
from reader_study.simulation import SimulationError, readers_simulate
from tests.reader_study.factories import study_world

pytestmark = pytest.mark.django_db

QUESTIONNAIRE = {"sus": True, "trust_items": ["I trust the AI.", "I would use it."]}


def _mean_auc(frame, arm):
    sub = frame[frame["modality"] == arm]
    return np.mean([empirical_auc(g["rating"][g["truth"] == 0].to_numpy(), g["rating"][g["truth"] == 1].to_numpy())
                    for _, g in sub.groupby("reader")])


def test_ai_benefit_raises_the_aided_auc():
    study = study_world(n_cases=20, n_readers=6, seed=5)
    summary = readers_simulate(study=study, n_readers=6, seed=21, ai_benefit=1.0)
    assert summary.readings_written == 20 * 6 * 2
    frame = readings_frame(study)
    assert len(frame) == 240 and frame.groupby(["reader", "modality"]).size().eq(20).all()
    unaided, aided = _mean_auc(frame, Arm.UNAIDED), _mean_auc(frame, Arm.AIDED)
    assert aided > unaided + 0.03, (unaided, aided)
    assert 0.6 < unaided < 0.95
    # realistic times: unaided about a minute and a half, the aided re-read shorter
    med = frame.groupby("modality")["active_seconds"].median()
    assert 40 < med[Arm.UNAIDED] < 200 and med[Arm.AIDED] < med[Arm.UNAIDED]
    assert (frame["reading_seconds"] >= frame["active_seconds"]).all()
    # agreement and usefulness answered in the aided arm only
    aided_rows = frame[frame["modality"] == Arm.AIDED]
    assert set(aided_rows["ai_agreement"]) <= {"agree", "disagree", "unsure"}
    assert aided_rows["explanation_usefulness"].between(1, 5).all()
    assert (frame[frame["modality"] == Arm.UNAIDED]["ai_agreement"] == "").all()
    # decisions follow the ratings: the decision threshold reproduces them exactly
    assert ((frame["rating"] >= 50) == (frame["decision"] == 1)).all()
    event = AuditEvent.objects.get(action="study.simulate")
    assert event.details["seed"] == 21 and event.details["readings_written"] == 240


def test_no_benefit_keeps_arms_close():
    study = study_world(n_cases=30, n_readers=6, seed=5, with_model=False)
    readers_simulate(study=study, n_readers=6, seed=21, ai_benefit=0.0)
    frame = readings_frame(study)
    assert abs(_mean_auc(frame, Arm.AIDED) - _mean_auc(frame, Arm.UNAIDED)) < 0.05


def test_same_seed_same_readings_different_seed_differs():
    frames = []
    for seed in (9, 9, 10):
        study = study_world(n_cases=10, n_readers=3, seed=2)
        study.questionnaire = QUESTIONNAIRE
        study.save()
        readers_simulate(study=study, n_readers=3, seed=seed, ai_benefit=0.5)
        frame = readings_frame(study).drop(columns=["reading_seconds"])  # clock-relative
        sus = sorted(QuestionnaireResponse.objects.filter(reader__study=study).values_list("reader__code", "sus_score"))
        frames.append((frame, sus))
    (a, sus_a), (b, sus_b), (c, _) = frames
    assert a.equals(b) and sus_a == sus_b and len(sus_a) == 3
    assert not a["rating"].equals(c["rating"])


def test_fills_what_is_missing_and_keeps_answers():
    study = study_world(n_cases=8, n_readers=2, seed=4)
    readers_simulate(study=study, n_readers=2, seed=3)
    first = Reading.objects.filter(reader__study=study).order_by("pk").first()
    kept = (first.pk, first.confidence, first.submitted_at)
    other = Reading.objects.filter(reader__study=study).exclude(pk=first.pk)
    n = other.count()
    other.delete()
    summary = readers_simulate(study=study, n_readers=2, seed=3)
    assert summary.readings_written == n
    first.refresh_from_db()
    assert (first.pk, first.confidence, first.submitted_at) == kept
    assert readers_simulate(study=study, n_readers=2, seed=3).readings_written == 0


def test_crossover_respects_the_washout_and_five_point_scale():
    study = study_world(n_cases=10, n_readers=4, design=Design.CROSSOVER, rating_scale="five_point", seed=6)
    readers_simulate(study=study, n_readers=4, seed=1, ai_benefit=1.0)
    frame = readings_frame(study)
    assert len(frame) == 10 * 4 * 2
    assert frame["scale"].between(1, 5).all() and frame["confidence"].isna().all()
    assert ((frame["rating"] >= 3) == (frame["decision"] == 1)).all()
    for reader in study.readers.all():
        s1, s2 = reader.sessions.order_by("number")
        assert s1.completed_at is not None and s2.completed_at is not None
        assert s2.opens_at == s1.completed_at + np.timedelta64(study.washout_days, "D")
        first_s2 = Reading.objects.filter(assignment__session=s2).order_by("opened_at").first()
        assert first_s2.opened_at >= s2.opens_at
        arms = set(Reading.objects.filter(assignment__session=s1).values_list("arm", flat=True))
        assert arms == {Arm.UNAIDED if reader.group == "A" else Arm.AIDED}


def test_adds_readers_before_reading_starts_and_refuses_after():
    study = study_world(n_cases=6, n_readers=2, seed=8)
    summary = readers_simulate(study=study, n_readers=4, seed=2)
    assert summary.readers_added == 2
    assert study.readers.count() == 4
    sites = {m.site.name for r in study.readers.all() for m in r.user.memberships.all()}
    assert sites == {"north", "south"}
    assert Reading.objects.filter(reader__study=study, submitted_at__isnull=False).count() == 4 * 6 * 2
    with pytest.raises(SimulationError, match="reading has started"):
        readers_simulate(study=study, n_readers=5, seed=2)


def test_command_refuses_draft_and_unknown_studies():
    study = study_world(n_cases=6, n_readers=2, status=StudyStatus.DRAFT)
    with pytest.raises(CommandError, match="only an open study"):
        call_command("simulate_readers", study.slug, "--readers", "2", "--seed", "1")
    with pytest.raises(CommandError, match="no study 'nope'"):
        call_command("simulate_readers", "nope", "--readers", "2", "--seed", "1")
    assert not Reading.objects.exists()


def test_command_fills_an_open_study(capsys):
    study = study_world(n_cases=6, n_readers=2)
    call_command("simulate_readers", study.slug, "--readers", "2", "--seed", "4", "--ai-benefit", "1")
    assert "24 readings written" in capsys.readouterr().out


def test_simulated_setup_builds_an_open_study_without_readings():
    from reader_study.simulation import study_simulated_setup

    study = study_simulated_setup(n_cases=6, n_readers=3, seed=4, slug="sim-setup")
    assert study.status == StudyStatus.OPEN and study.slug == "sim-setup"
    assert study.cases.count() == 6 and study.readers.count() == 3
    assert {c.truth for c in study.cases.all()} == {True, False}
    assert all(r.user.memberships.filter(role="reader").exists() for r in study.readers.all())
    assert not Reading.objects.filter(reader__study=study).exists()
    readers_simulate(study=study, n_readers=3, seed=1)
    assert Reading.objects.filter(reader__study=study, submitted_at__isnull=False).count() == 36
