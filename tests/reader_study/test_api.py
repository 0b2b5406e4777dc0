"""The reader-study API: the same blinding and locks as the pages, nothing identifying in the answers."""
from __future__ import annotations

import json

import pytest
from django.urls import reverse

from reader_study.models import Assignment, Reading

pytestmark = pytest.mark.django_db


def test_reader_reads_through_the_api(client, open_world):
    w = open_world
    user = w["readers"][0]
    client.force_login(user)
    slug = w["study"].slug
    worklist = client.get(reverse("api:worklist", args=[slug])).json()
    assert worklist["done"] == 0 and worklist["total"] == 6
    code = worklist["next"]["case"]
    assert worklist["next"]["arm"] == "unaided"
    case_url = reverse("api:reading-case", args=[slug, code, "unaided"])
    aided_url = reverse("api:reading-case", args=[slug, code, "aided"])
    assert client.get(aided_url).status_code == 403
    opened = client.get(case_url)
    assert opened.status_code == 200
    body = opened.json()
    assert body["ai"] is None and body["case"] == code
    exam = Assignment.objects.get(session__reader__user=user, case__code=code).case.exam
    text = json.dumps(body)
    for leak in (exam.patient.code, exam.patient.site.name, '"truth', "treatment_related", f'"exam": {exam.pk}'):
        assert leak not in text, leak
    answer = {"decision": True, "confidence": 65, "active_seconds": 9999}
    first = client.post(case_url, answer, content_type="application/json")
    assert first.status_code == 201
    second = client.post(case_url, {"decision": False, "confidence": 1}, content_type="application/json")
    assert second.status_code == 409 and second.json()["error"]["code"] == "locked"
    reading = Reading.objects.get(reader__user=user, case__code=code, arm="unaided")
    assert (reading.decision, reading.confidence) == (True, 65)
    assert reading.active_seconds <= (reading.submitted_at - reading.opened_at).total_seconds()
    aided = client.get(aided_url).json()
    assert aided["ai"]["probability_pct"] >= 0 and aided["ai"]["features"][0]["text"].startswith("T/S max 2.40")
    bad = client.post(aided_url, {"decision": True, "confidence": 50}, content_type="application/json")
    assert bad.status_code == 400 and "agree" in bad.json()["error"]["message"]
    ok = client.post(aided_url, {"decision": True, "confidence": 50, "ai_agreement": "unsure",
                                 "explanation_usefulness": 2}, content_type="application/json")
    assert ok.status_code == 201 and ok.json()["next"]["arm"] == "unaided"


def test_coordinators_see_their_studies_only(client, open_world):
    from tests.factories import user_with

    w = open_world
    third = user_with("coordinator", w["third"])
    client.force_login(third)
    listing = client.get(reverse("api:study-list")).json()
    rows = listing["results"] if isinstance(listing, dict) else listing
    assert rows == []
    client.force_login(w["coordinator"])
    listing = client.get(reverse("api:study-list")).json()
    rows = listing["results"] if isinstance(listing, dict) else listing
    assert [r["slug"] for r in rows] == [w["study"].slug]
    assert {p["reader"] for p in rows[0]["progress"]} == {"R01", "R02"}
    closed = client.post(reverse("api:study-close", args=[w["study"].slug]))
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
