"""make demo's reader study: open at once for the printed reader accounts, kept across runs."""
from __future__ import annotations

import io

import pytest

from apps.demo.management.commands.demo_setup import DEMO_STUDY, Command
from reader_study import services
from reader_study.models import Assignment, Study
from tests.factories import user_with
from tests.reader_study.conftest import make_world

pytestmark = pytest.mark.django_db


def test_demo_study_is_open_for_the_demo_readers(db):
    w = make_world()
    w["cohort"].name = "demo"
    w["cohort"].save()
    user_with("coordinator", w["home"], username="coord-home")
    readers = [user_with("reader", site, username=f"reader{i}")
               for i, site in enumerate([w["home"], w["other"], w["third"]], start=1)]
    command = Command(stdout=io.StringIO())
    command._demo_study([w["home"], w["other"], w["third"]], n_cases=20)
    study = Study.objects.get(slug=DEMO_STUDY)
    assert (study.status, study.design, study.cases.count()) == ("open", "sequential", 6)
    assert {r.user.username for r in study.readers.all()} == {"reader1", "reader2", "reader3"}
    assert len({c.exam.patient.site_id for c in study.cases.all()}) == 2
    for reader in readers:
        first = Assignment.objects.filter(session__reader__user=reader).order_by("position").first()
        reading = services.reading_open(assignment=first, arm="unaided", user=reader)
        assert reading.pk
    command._demo_study([w["home"]], n_cases=20)  # a second make demo keeps the study and its readings
    assert Study.objects.filter(slug=DEMO_STUDY).count() == 1
    assert "exists" in command.stdout.getvalue()
