"""Pages and API a coordinator uses: upload an import, follow the job, see thumbnails, fix QC."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from django.urls import reverse

from apps.accounts.models import Site
from apps.cohorts.models import Exam, Volume
from apps.jobs.models import Job
from config.celery import app as celery_app
from tests.factories import SiteFactory, user_with

pytestmark = pytest.mark.django_db


@pytest.fixture
def eager():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def _zip_bytes(folder: Path) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in folder.rglob("*"):
            if p.is_file():
                zf.write(p, p.relative_to(folder))
    buf.seek(0)
    buf.name = "dataset.zip"
    return buf


@pytest.fixture
def coordinator(one_subject):
    site_name = (one_subject / "participants.tsv").read_text().splitlines()[1].split("\t")[1]
    return user_with("coordinator", SiteFactory(name=site_name))


def test_upload_page_imports_and_shows_thumbnails(client, coordinator, one_subject, eager,
                                                  django_capture_on_commit_callbacks):
    client.force_login(coordinator)
    assert client.get(reverse("cohorts:import-bids")).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("cohorts:import-bids"),
                               {"archive": _zip_bytes(one_subject), "cohort": "upload-test"})
    job = Job.objects.get(kind="import_bids")
    assert response.status_code == 302 and response.url == reverse("jobs:detail", args=[job.pk])
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.created_by == coordinator and job.progress == 100
    page = client.get(response.url).content.decode()
    exam_url = reverse("cohorts:exam", args=[Exam.objects.order_by("pk").first().pk])
    assert "succeeded" in page and f"href=\"{exam_url}\"" in page
    exam = Exam.objects.first()
    html = client.get(reverse("cohorts:exam", args=[exam.pk])).content.decode()
    native = Volume.objects.filter(exam=exam, space="native")
    assert all(v.thumbnail for v in native)  # the preparation job ran (eager) after the import
    for v in native:
        assert reverse("cohorts:volume-thumbnail", args=[v.pk]) in html
    thumb = client.get(reverse("cohorts:volume-thumbnail", args=[native[0].pk]))
    assert b"".join(thumb.streaming_content)[:8] == b"\x89PNG\r\n\x1a\n"
    status = client.get(reverse("jobs:status", args=[job.pk])).json()
    assert status["status"] == "succeeded" and status["progress"] == 100


def test_upload_of_a_bad_archive_fails_clearly(client, coordinator, tmp_path, eager,
                                               django_capture_on_commit_callbacks):
    client.force_login(coordinator)
    bad = io.BytesIO(b"not a zip")
    bad.name = "x.zip"
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("cohorts:import-bids"), {"archive": bad})
    job = Job.objects.get()
    assert job.status == "failed" and "not a readable zip archive" in job.message
    page = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "Why it failed" in page and "not a readable zip archive" in page and "Retry" in page


def test_upload_form_rejects_non_zip(client, coordinator):
    client.force_login(coordinator)
    f = io.BytesIO(b"abc")
    f.name = "data.tar"
    response = client.post(reverse("cohorts:import-bids"), {"archive": f})
    assert response.status_code == 200 and "Upload a .zip archive" in response.content.decode()
    assert not Job.objects.exists()


def test_coordinator_cannot_import_into_another_site(client, one_subject, eager, django_capture_on_commit_callbacks):
    other = user_with("coordinator", SiteFactory(name="elsewhere"))
    client.force_login(other)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("cohorts:import-bids"), {"archive": _zip_bytes(one_subject)})
    job = Job.objects.get()
    assert job.status == "failed" and ("does not exist" in job.message or "not a coordinator" in job.message)
    assert not Exam.objects.exists()


def test_api_upload_and_error_shape(client, coordinator, one_subject, eager, django_capture_on_commit_callbacks):
    client.force_login(coordinator)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("api:import-bids"), {"archive": _zip_bytes(one_subject)})
    assert response.status_code == 202
    body = response.json()
    assert body["kind"] == "import_bids"
    assert client.get(reverse("api:job-detail", args=[body["id"]])).json()["status"] == "succeeded"
    exams = client.get(reverse("api:exam-list")).json()["results"]
    assert len(exams) == 2 and {v["kind"] for v in exams[0]["volumes"]} >= {"pet_dynamic", "t1"}
    bad = client.post(reverse("api:import-bids"), {})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] and "archive" in bad.json()["error"]["details"]


def test_qc_status_is_fixed_by_a_coordinator(client, coordinator, one_subject):
    from apps.cohorts.services.bids import bids_import

    bids_import(path=one_subject)
    volume = Volume.objects.filter(kind="flair").first()
    client.force_login(coordinator)
    response = client.post(reverse("cohorts:volume-qc", args=[volume.pk]),
                           {"qc_status": "fail", "qc_note": "motion artefact"})
    assert response.status_code == 302
    volume.refresh_from_db()
    assert (volume.qc_status, volume.qc_note) == ("fail", "motion artefact")
    bad = client.post(reverse("cohorts:volume-qc", args=[volume.pk]), {"qc_status": "great"})
    volume.refresh_from_db()
    assert bad.status_code == 302 and volume.qc_status == "fail"
    api = client.patch(reverse("api:volume-detail", args=[volume.pk]), {"qc_status": "pass"},
                       content_type="application/json")
    assert api.status_code == 200 and api.json()["qc_status"] == "pass"
    assert Site.objects.count() == 1


def test_login_logout_password_change(client, db):
    user = user_with("reader", SiteFactory(name="nancy"), username="dr-a")
    user.set_password("old-password-42")
    user.save()
    response = client.post(reverse("login"), {"username": "dr-a", "password": "old-password-42"})
    assert response.status_code == 302
    assert "Reading" in client.get(reverse("home")).content.decode()
    client.post(reverse("password_change"), {"old_password": "old-password-42", "new_password1": "N3w-pass-phrase!",
                                             "new_password2": "N3w-pass-phrase!"})
    client.post(reverse("logout"))
    assert client.get(reverse("home")).status_code == 302
    assert client.login(username="dr-a", password="N3w-pass-phrase!")
