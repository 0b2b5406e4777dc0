"""Views, downloads, QC and label changes land in the audit trail; the admin cannot edit models."""
from __future__ import annotations

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from tests.factories import ExamFactory, PredictionFactory, SiteFactory, VolumeFactory, user_with

pytestmark = pytest.mark.django_db


@pytest.fixture
def home():
    site = SiteFactory(name="home")
    volume = VolumeFactory(exam=ExamFactory(patient__site=site))
    return {"site": site, "volume": volume, "exam": volume.exam,
            "coordinator": user_with("coordinator", site), "researcher": user_with("researcher", site)}


def test_exam_view_and_download_are_recorded(client, home):
    client.force_login(home["researcher"])
    assert client.get(reverse("cohorts:exam", args=[home["exam"].pk])).status_code == 200
    response = client.get(reverse("cohorts:volume-file", args=[home["volume"].pk]))
    assert response.status_code == 200
    b"".join(response.streaming_content)
    events = list(AuditEvent.objects.order_by("id").values_list("action", "actor", "object_id", "site_id"))
    assert events == [("exam.view", home["researcher"].username, str(home["exam"].pk), home["site"].pk),
                      ("volume.download", home["researcher"].username, str(home["volume"].pk), home["site"].pk)]


def test_refused_access_records_nothing(client, home):
    other = user_with("researcher", SiteFactory(name="other"))
    client.force_login(other)
    assert client.get(reverse("cohorts:exam", args=[home["exam"].pk])).status_code == 404
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize("via", ["page", "api"])
def test_qc_change_keeps_user_time_and_before_after(client, home, via):
    client.force_login(home["coordinator"])
    volume = home["volume"]
    if via == "page":
        client.post(reverse("cohorts:volume-qc", args=[volume.pk]), {"qc_status": "fail", "qc_note": "motion"})
    else:
        response = client.patch(reverse("api:volume-detail", args=[volume.pk]),
                                {"qc_status": "fail", "qc_note": "motion"}, content_type="application/json")
        assert response.status_code == 200, response.content
    volume.refresh_from_db()
    assert (volume.qc_status, volume.qc_note, volume.qc_by) == ("fail", "motion", home["coordinator"])
    assert volume.qc_at is not None
    event = AuditEvent.objects.get(action="volume.qc")
    assert event.actor == home["coordinator"].username
    assert event.details["before"] == {"qc_status": "pending", "qc_note": ""}
    assert event.details["after"] == {"qc_status": "fail", "qc_note": "motion"}


def test_admin_label_change_is_recorded(client, home):
    admin = user_with("admin")
    client.force_login(admin)
    exam = home["exam"]
    url = reverse("admin:cohorts_exam_change", args=[exam.pk])
    form = client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None}
    data |= {"patient": exam.patient_id, "diagnosis": "treatment_related", "diagnosis_basis": "follow_up",
             "volumes-TOTAL_FORMS": 1, "volumes-INITIAL_FORMS": 1, "volumes-MIN_NUM_FORMS": 0,
             "volumes-MAX_NUM_FORMS": 1000, "volumes-0-id": home["volume"].pk, "volumes-0-exam": exam.pk,
             "volumes-0-kind": "pet_static", "volumes-0-space": "native", "volumes-0-units": "SUV",
             "volumes-0-shape": '[8, 8, 8]', "volumes-0-qc_status": "pending"}
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    event = AuditEvent.objects.get(action="labels.change")
    assert event.details["before"]["diagnosis"] == "progression"
    assert event.details["after"]["diagnosis"] == "treatment_related"
    assert event.actor == admin.username


def test_predictions_and_models_are_read_only_in_admin(client):
    prediction = PredictionFactory()
    client.force_login(user_with("admin"))
    for url in (reverse("admin:registry_prediction_change", args=[prediction.pk]),
                reverse("admin:registry_modelversion_change", args=[prediction.model_version.pk])):
        assert client.post(url, {"probability": "0.99"}).status_code == 403
    assert client.get(reverse("admin:registry_prediction_add")).status_code == 403
    prediction.refresh_from_db()
    assert prediction.probability != 0.99


def test_audit_page_is_scoped_to_the_coordinators_sites(client, home):
    other_site = SiteFactory(name="other")
    other_exam = ExamFactory(patient__site=other_site)
    client.force_login(home["researcher"])
    client.get(reverse("cohorts:exam", args=[home["exam"].pk]))
    client.force_login(user_with("researcher", other_site))
    client.get(reverse("cohorts:exam", args=[other_exam.pk]))
    client.force_login(home["coordinator"])
    page = client.get(reverse("audit:list")).content.decode()
    assert str(home["exam"]) in page and str(other_exam) not in page
    client.force_login(user_with("admin"))
    page = client.get(reverse("audit:list") + "?action=exam.view").content.decode()
    assert str(home["exam"]) in page and str(other_exam) in page
