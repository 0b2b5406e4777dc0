"""The results page, figures, downloads and API show the numbers of study_results, labelled, and no
identifiers (usernames, patient and exam codes)."""
from __future__ import annotations

import io
import json
import re

import pandas as pd
import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from reader_study.models import Arm, StudyStatus
from reader_study.results import study_results
from reader_study.simulation import readers_simulate
from tests.factories import user_with
from tests.reader_study.factories import study_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def simulated(client):
    study = study_world(n_cases=12, n_readers=4, seed=6)
    study.questionnaire = {"sus": True, "trust_items": ["I trust the AI's probability."]}
    study.save()
    readers_simulate(study=study, n_readers=4, seed=2, ai_benefit=1.0)
    statistician = user_with("statistician", study.cases.first().exam.patient.site)
    client.force_login(statistician)
    return study


def _identifiers(study) -> list[str]:
    out = []
    for case in study.cases.select_related("exam__patient"):
        out += [f">{case.exam.patient.code}<", f"/{case.exam.code}/", f",{case.exam.patient.code},"]
    out += [r.user.username for r in study.readers.select_related("user")]
    return out


def test_page_shows_the_report_with_units(client, simulated):
    study = simulated
    html = client.get(reverse("reader_study:results", kwargs={"slug": study.slug})).content.decode()
    results = study_results(study)
    rep = results.report
    d = rep.or_auc.rrrc.difference(Arm.UNAIDED, Arm.AIDED)
    assert f'<span id="auc-difference">{-d.estimate:.3f}</span>' in html
    assert f"95% CI {-d.ci_high:.3f} to {-d.ci_low:.3f}" in html
    assert "Interim: 96 of 96 readings" in html
    for row in rep.performance.rows:
        assert re.search(rf'data-reader="{row.reader}" data-arm="{row.modality}" class="auc">{row.auc:.3f} ', html)
    for needle in ("95% CI", "Sens. %", "Geometric mean (s)", "pp", "/ 100", "Fleiss κ", "Wrong → right",
                   "AI alone vs readers without AI", "Usefulness, mean (SD)", "I trust the AI&#x27;s probability."):
        assert needle in html, needle
    assert "reading_time" not in html  # no raw keys
    for ident in _identifiers(study):
        assert ident not in html, ident
    study.status = StudyStatus.CLOSED
    study.save()
    html = client.get(reverse("reader_study:results", kwargs={"slug": study.slug})).content.decode()
    assert "Final results" in html and "Interim" not in html


def test_figures_are_svg(client, simulated):
    for figure in ("roc", "forest"):
        response = client.get(reverse("reader_study:results-figure", kwargs={"slug": simulated.slug, "figure": figure}))
        assert response.status_code == 200 and response["Content-Type"] == "image/svg+xml"
        assert response.content.lstrip().startswith(b"<?xml") and b"<svg" in response.content


def test_downloads_are_whole_files_and_audited(client, simulated):
    study = simulated
    csv = client.get(reverse("reader_study:results-export", kwargs={"slug": study.slug, "fmt": "csv"}))
    assert csv["Content-Disposition"] == f'attachment; filename="{study.slug}-readings.csv"'
    table = pd.read_csv(io.BytesIO(csv.content))
    assert len(table) == 96 and set(table["reader"]) == {"R01", "R02", "R03", "R04"}
    assert set(table["reader_site"]) == {"north", "south"}
    text = csv.content.decode()
    for ident in _identifiers(study):
        assert ident not in text
    imrmc = client.get(reverse("reader_study:results-export", kwargs={"slug": study.slug, "fmt": "imrmc"}))
    assert b"BEGIN DATA:" in imrmc.content and imrmc.content.count(b"\ntruth,") == 12
    doc = json.loads(client.get(reverse("reader_study:results-export", kwargs={"slug": study.slug, "fmt": "json"})).content)
    assert len(doc["readings"]) == 96 and doc["report"]["or_auc"]["method"] == "OR"
    events = AuditEvent.objects.filter(action="study.export").order_by("pk")
    assert [e.details["format"] for e in events] == ["csv", "imrmc", "json"]
    assert all(e.object_id == str(study.pk) and e.details["readings"] == 96 for e in events)


def test_api_results_equal_study_results(client, simulated):
    api = client.get(reverse("api:study-results", kwargs={"slug": simulated.slug})).json()
    expected = json.loads(json.dumps(study_results(simulated).to_dict()))
    assert api == expected
    assert api["label"] == "interim: 96 of 96 readings" and api["acceptability"]["sus"]["n"] == 4
    csv = client.get(reverse("api:study-export", kwargs={"slug": simulated.slug, "fmt": "csv"}))
    assert csv.status_code == 200 and csv.content.startswith(b"reader,reader_site,case,modality")


def test_a_study_without_readings(client):
    study = study_world(n_cases=6, n_readers=2)
    client.force_login(user_with("statistician", study.cases.first().exam.patient.site))
    html = client.get(reverse("reader_study:results", kwargs={"slug": study.slug})).content.decode()
    assert "Interim: 0 of 24 readings" in html and "no submitted readings yet" in html
    response = client.get(reverse("reader_study:results-export", kwargs={"slug": study.slug, "fmt": "csv"}))
    assert response.status_code == 409 and "no submitted readings yet" in response.content.decode()
    api = client.get(reverse("api:study-export", kwargs={"slug": study.slug, "fmt": "csv"}))
    assert api.status_code == 400 and "no submitted readings" in api.json()["error"]["details"]["study"][0]
    assert client.get(reverse("reader_study:results-figure", kwargs={"slug": study.slug, "figure": "roc"})).status_code == 404
    assert not AuditEvent.objects.filter(action="study.export").exists()
