"""Services of the reader study: design, opening, blinding rules, readings, questionnaire."""
from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from reader_study import services
from reader_study.models import Assignment, Reading, ReadingSession, StudyCase
from tests.factories import ExamFactory, StudyFactory
from tests.reader_study.conftest import make_world

pytestmark = pytest.mark.django_db

ANSWER = {"decision": True, "confidence": 80, "comment": ""}
AIDED = {**ANSWER, "ai_agreement": "agree", "explanation_usefulness": 4}


def _orders(study):
    return [
        (s.reader.user_id, s.number, [a.case.code for a in s.assignments.order_by("position")])
        for s in ReadingSession.objects.filter(reader__study=study).order_by("reader__user_id", "number")]


def test_cases_carry_truth_and_basis_and_codes_do_not_follow_exam_order(world):
    study, exams = world["study"], world["exams"]
    cases = {c.exam_id: c for c in study.cases.all()}
    assert len(cases) == 6
    for exam in exams:
        case = cases[exam.pk]
        assert case.truth == (exam.diagnosis == "progression")
        assert (case.truth_label, case.truth_basis) == (exam.diagnosis, exam.diagnosis_basis)
    codes_in_exam_order = [cases[e.pk].code for e in sorted(exams, key=lambda e: e.pk)]
    assert codes_in_exam_order != sorted(codes_in_exam_order)  # seeded shuffle (seed 1234)
    assert AuditEvent.objects.filter(action="study.cases_set", object_id=str(study.pk)).exists()


def test_cases_exclude_unknown_diagnosis_and_missing_prediction(world):
    study = world["study"]
    unknown = ExamFactory(patient__site=world["home"], diagnosis="unknown", diagnosis_basis="unknown")
    unpredicted = ExamFactory(patient__site=world["home"])
    study.cohort.exams.add(unknown, unpredicted)
    services.study_cases_set(study=study, user=world["coordinator"])
    assert not study.cases.filter(exam__in=[unknown, unpredicted]).exists()
    with pytest.raises(services.StudyError, match="not eligible"):
        services.study_cases_set(study=study, user=world["coordinator"], exams=[unknown])


def test_readers_must_hold_the_reader_role(world):
    with pytest.raises(services.StudyError, match="not readers"):
        services.study_readers_set(study=world["study"], user=world["coordinator"], readers=[world["coordinator"]])


def test_open_builds_seeded_orders_reproducibly(db):
    w = make_world(n_readers=3)
    services.study_open(study=w["study"], user=w["coordinator"])
    orders = _orders(w["study"])
    assert len(orders) == 3 and all(len(o[2]) == 6 for o in orders)
    assert len({tuple(o[2]) for o in orders}) > 1  # readers get their own orders
    # the same seed on the same design gives the same orders again (rebuilt from the stored seed)
    services._sessions_build(w["study"])
    assert _orders(w["study"]) == orders
    services.study_update(study=w["study"], user=w["coordinator"], seed=99)
    assert _orders(w["study"]) != orders


def test_open_refuses_missing_predictions_and_empty_sets(world):
    study = world["study"]
    study.cases.first().exam.predictions.all().delete()
    with pytest.raises(services.StudyError, match="no prediction"):
        services.study_open(study=study, user=world["coordinator"])
    empty = StudyFactory(cohort=world["cohort"], model_version=world["model"])
    with pytest.raises(services.StudyError, match="cases first"):
        services.study_open(study=empty, user=world["coordinator"])


def test_design_is_locked_once_a_reading_exists(open_world):
    w = open_world
    study = services.study_update(study=w["study"], user=w["coordinator"], title="Renamed")
    assert study.title == "Renamed"
    event = AuditEvent.objects.filter(action="study.design_change").latest("id")
    assert event.details["changes"]["title"] == {"old": w["study"].title, "new": "Renamed"}
    assignment = Assignment.objects.filter(session__reader__user=w["readers"][0]).first()
    services.reading_open(assignment=assignment, arm="unaided", user=w["readers"][0])
    for call in (lambda: services.study_update(study=study, user=w["coordinator"], design="crossover"),
                 lambda: services.study_update(study=study, user=w["coordinator"], title="Again"),
                 lambda: services.study_cases_set(study=study, user=w["coordinator"]),
                 lambda: services.study_readers_set(study=study, user=w["coordinator"], readers=w["readers"][:1])):
        with pytest.raises(services.DesignLocked):
            call()
    study.refresh_from_db()
    assert (study.title, study.design) == ("Renamed", "sequential")


def test_sequential_reading_blinding_and_locks(open_world):
    w = open_world
    reader_user = w["readers"][0]
    assignment = Assignment.objects.filter(session__reader__user=reader_user).order_by("position").first()
    with pytest.raises(services.ReadingLocked, match="without the AI first"):
        services.reading_open(assignment=assignment, arm="aided", user=reader_user)
    reading = services.reading_open(assignment=assignment, arm="unaided", user=reader_user)
    again = services.reading_open(assignment=assignment, arm="unaided", user=reader_user)
    assert again.pk == reading.pk and again.opened_at == reading.opened_at
    stale = Reading.objects.get(pk=reading.pk)  # a second request holding the row before the first submit
    services.reading_submit(reading=reading, answer=ANSWER, user=reader_user, active_seconds=5)
    with pytest.raises(services.ReadingLocked):
        services.reading_submit(reading=stale, answer={**ANSWER, "decision": False, "confidence": 3},
                                user=reader_user)
    stored = Reading.objects.get(reader__user=reader_user, case=assignment.case, arm="unaided")
    assert (stored.decision, stored.confidence) == (True, 80)
    assert Reading.objects.filter(reader__user=reader_user, case=assignment.case, arm="unaided").count() == 1
    aided = services.reading_open(assignment=assignment, arm="aided", user=reader_user)
    with pytest.raises(services.StudyError, match="agree"):
        services.reading_submit(reading=aided, answer=ANSWER, user=reader_user)
    services.reading_submit(reading=aided, answer=AIDED, user=reader_user)
    assert AuditEvent.objects.filter(action="reading.submit", actor_id=reader_user.pk).count() == 2
    assert AuditEvent.objects.filter(action="reading.open", actor_id=reader_user.pk).count() == 3


@pytest.mark.parametrize("answer,match", [
    ({"decision": None, "confidence": 50}, "decision"),
    ({"decision": True, "confidence": 101}, "confidence"),
    ({"decision": True, "confidence": -1}, "confidence"),
    ({"decision": True, "confidence": "80"}, "confidence"),
])
def test_invalid_answers_store_nothing(open_world, answer, match):
    user = open_world["readers"][0]
    assignment = Assignment.objects.filter(session__reader__user=user).first()
    reading = services.reading_open(assignment=assignment, arm="unaided", user=user)
    with pytest.raises(services.StudyError, match=match):
        services.reading_submit(reading=reading, answer=answer, user=user)
    reading.refresh_from_db()
    assert reading.submitted_at is None and reading.decision is None


def test_active_seconds_are_clamped_to_server_time():
    assert services.clamp_active_seconds("12.34", elapsed=60) == 12.3
    assert services.clamp_active_seconds(500, elapsed=60) == 60
    assert services.clamp_active_seconds(-3, elapsed=60) == 0
    assert services.clamp_active_seconds(9999, elapsed=0.8595) == 0.8  # never rounded above the elapsed time
    assert services.clamp_active_seconds("nan", elapsed=60) is None
    assert services.clamp_active_seconds("x", elapsed=60) is None
    assert services.clamp_active_seconds(1e9, elapsed=1e9) == services.MAX_ACTIVE_SECONDS


def _read_all(reader_user, session_number=1, arm=None):
    for a in Assignment.objects.filter(session__reader__user=reader_user, session__number=session_number):
        arms = [a.session.arm] if a.session.arm else ["unaided", "aided"]
        for x in arms:
            r = services.reading_open(assignment=a, arm=x, user=reader_user)
            services.reading_submit(reading=r, answer=AIDED if x == "aided" else ANSWER, user=reader_user)


def test_crossover_groups_and_washout_enforced(db):
    w = make_world(design="crossover", washout_days=28, n_readers=4)
    services.study_open(study=w["study"], user=w["coordinator"])
    groups = Counter(w["study"].readers.values_list("group", flat=True))
    assert groups == {"A": 2, "B": 2}
    for reader in w["study"].readers.all():
        s1, s2 = reader.sessions.order_by("number")
        assert {s1.arm, s2.arm} == {"unaided", "aided"}
        assert s1.arm == ("unaided" if reader.group == "A" else "aided")
    user = w["readers"][0]
    s2_assignment = Assignment.objects.filter(session__reader__user=user, session__number=2).first()
    with pytest.raises(services.ReadingLocked, match="after session 1"):
        services.reading_open(assignment=s2_assignment, arm=s2_assignment.session.arm, user=user)
    _read_all(user, 1)
    s1 = ReadingSession.objects.get(reader__user=user, number=1)
    s2 = ReadingSession.objects.get(reader__user=user, number=2)
    assert s1.completed_at is not None
    assert s2.opens_at == s1.completed_at + timedelta(days=28)
    s2_assignment = Assignment.objects.get(pk=s2_assignment.pk)  # a new request reads the session again
    with pytest.raises(services.ReadingLocked, match="opens on"):
        services.reading_open(assignment=s2_assignment, arm=s2.arm, user=user)
    assert services.arm_refusal(assignment=s2_assignment, arm=s2.arm,
                                now=s2.opens_at + timedelta(seconds=1)) is None
    # the other arm is never readable in a session
    s1_assignment = Assignment.objects.filter(session=s1).first()
    other_arm = "aided" if s1.arm == "unaided" else "unaided"
    assert services.arm_refusal(assignment=s1_assignment, arm=other_arm) is not None


def test_zero_washout_opens_session_two_at_once(db):
    w = make_world(design="crossover", washout_days=0, n_readers=2)
    services.study_open(study=w["study"], user=w["coordinator"])
    user = w["readers"][0]
    _read_all(user, 1)
    a = Assignment.objects.filter(session__reader__user=user, session__number=2).first()
    assert services.arm_refusal(assignment=a, arm=a.session.arm) is None


def test_split_plot_subsets_are_stratified_and_balanced():
    truths = [True] * 10 + [False] * 10
    subsets = services.split_plot_subsets(truths, n_readers=4, k=10, seed=[1, 4])
    assert all(len(s) == 10 and sum(truths[i] for i in s) == 5 for s in subsets)
    counts = Counter(i for s in subsets for i in s)
    assert set(counts) == set(range(20)) and set(counts.values()) == {2}


def test_split_plot_study_assigns_subsets(db):
    w = make_world(split_plot=True, cases_per_reader=4, n_readers=3)
    services.study_open(study=w["study"], user=w["coordinator"])
    for session in ReadingSession.objects.filter(reader__study=w["study"]):
        cases = [a.case for a in session.assignments.all()]
        assert len(cases) == 4 and {c.truth for c in cases} == {True, False}


def test_close_stops_reading(open_world):
    w = open_world
    user = w["readers"][0]
    assignment = Assignment.objects.filter(session__reader__user=user).first()
    reading = services.reading_open(assignment=assignment, arm="unaided", user=user)
    services.study_close(study=w["study"], user=w["coordinator"])
    with pytest.raises(services.ReadingLocked, match="not open"):
        services.reading_submit(reading=reading, answer=ANSWER, user=user)
    with pytest.raises(services.ReadingLocked):
        services.reading_open(assignment=assignment, arm="unaided", user=user)


@pytest.mark.parametrize("answers,score", [
    ([3] * 10, 50.0),
    ([5, 1] * 5, 100.0),
    ([1, 5] * 5, 0.0),
    # Brooke (1996): (4-1)+(5-2)+(4-1)+(5-1)+(5-1)+(5-2)+(4-1)+(5-1)+(3-1)+(5-3) = 31 -> 77.5
    ([4, 2, 4, 1, 5, 2, 4, 1, 3, 3], 77.5),
])
def test_sus_score_brooke(answers, score):
    assert services.sus_score(answers) == score


def test_questionnaire_after_the_last_case_and_once(open_world):
    w = open_world
    user = w["readers"][0]
    reader = w["study"].readers.get(user=user)
    answers = {"sus": [4, 2, 4, 1, 5, 2, 4, 1, 3, 3], "trust": [4]}
    with pytest.raises(services.StudyError, match="after your last case"):
        services.questionnaire_submit(reader=reader, answers=answers, user=user)
    _read_all(user)
    response = services.questionnaire_submit(reader=reader, answers=answers, user=user)
    assert (response.sus_score, response.trust_score) == (77.5, 4.0)
    with pytest.raises(services.StudyError, match="already"):
        services.questionnaire_submit(reader=reader, answers=answers, user=user)
    with pytest.raises(services.StudyError):
        services.sus_score([4] * 9)


def test_session_completion_sets_times(open_world):
    user = open_world["readers"][1]
    _read_all(user)
    session = ReadingSession.objects.get(reader__user=user)
    assert session.started_at is not None and session.completed_at is not None
    assert session.completed_at <= timezone.now()
    assert StudyCase.objects.filter(study=open_world["study"]).count() == 6
