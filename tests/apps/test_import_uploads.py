"""Uploaded archives and import messages (issue 8, items 5 and 8): the original (names, IDs, birth
dates) is deleted after a successful import, kept a configurable time after a failed one, never
served; job messages name the user's file, never a server path, an upload's random name or a raw
database error."""
from __future__ import annotations

import io
import os
import re
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import IntegrityError
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.cohorts.models import Exam, Volume
from apps.cohorts.services.uploads import import_submit, upload_root, uploads_cleanup, user_message
from apps.jobs.models import Job, JobStatus
from apps.jobs.services import job_run

pytestmark = pytest.mark.django_db

USER_FILE = "Glioma cohort (Lyon) 2024.zip"


def _zip_bytes(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, Path("dataset") / p.relative_to(folder))
    return buffer.getvalue()


def _submit(folder: Path, name: str = USER_FILE) -> Job:
    uploaded = SimpleUploadedFile(name, _zip_bytes(folder), content_type="application/zip")
    return import_submit(kind="import_bids", uploaded=uploaded, params={"site": None, "cohort": None,
                                                                          "prepare": False},
                         user=None, site=None)


def _uploads() -> list[Path]:
    return sorted(p for p in upload_root().iterdir() if p.is_file()) if upload_root().is_dir() else []


def _assert_no_server_detail(message: str, settings) -> None:
    assert str(settings.MEDIA_ROOT) not in message and "/tmp" not in message
    assert not re.search(r"[0-9a-f]{32}", message), message  # no upload name
    assert "IntegrityError" not in message and "duplicate key" not in message and "UNIQUE" not in message


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_upload_is_deleted_after_a_successful_import(one_subject, settings):
    job = _submit(one_subject)
    (upload,) = _uploads()
    assert job.params["filename"] == USER_FILE and job.params["upload"] == upload.name
    assert "path" not in job.params  # no server path in what the API shows
    assert oct(upload.stat().st_mode & 0o777) == "0o600"
    job = job_run(job_pk=job.pk)
    assert job.status == JobStatus.SUCCEEDED, job.message
    assert Exam.objects.count() == 2
    assert _uploads() == []
    event = AuditEvent.objects.get(action="import.run")
    assert event.details["file"] == USER_FILE and event.details["exams_created"] == 2
    assert event.details["volumes_created"] == Volume.objects.count()


def test_failed_import_names_the_users_file_and_keeps_the_upload_for_the_retention(one_subject, settings):
    flair = sorted(one_subject.glob("sub-*/ses-*/anat/*_FLAIR.nii.gz"))[0]
    _truncate(flair)
    job = job_run(job_pk=_submit(one_subject).pk)
    assert job.status == JobStatus.FAILED
    inside = flair.relative_to(one_subject).as_posix()
    assert job.message.startswith(f"{USER_FILE}: dataset/{inside}: is truncated or corrupt"), job.message
    _assert_no_server_detail(job.message, settings)
    failed = AuditEvent.objects.get(action="import.run")
    assert failed.details["outcome"] == "failed" and failed.details["file"] == USER_FILE
    (upload,) = _uploads()
    # kept for the retention (the job can be retried), then removed
    settings.AMINOPET_FAILED_UPLOAD_RETENTION_DAYS = 7
    assert uploads_cleanup(now=timezone.now() + timedelta(days=6)).removed == []
    report = uploads_cleanup(now=timezone.now() + timedelta(days=8))
    assert report.removed == [upload.name] and report.bytes_freed > 0 and _uploads() == []
    # a retry after that says so, in the user's words
    Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)
    job = job_run(job_pk=job.pk)
    assert job.status == JobStatus.FAILED and "no longer on the server" in job.message
    assert job.message.startswith(USER_FILE)
    _assert_no_server_detail(job.message, settings)


def test_an_archive_that_is_not_a_zip_is_named(settings):
    uploaded = SimpleUploadedFile("scan export.zip", b"this is no zip archive")
    job = import_submit(kind="import_dicom", uploaded=uploaded, user=None, site=None,
                        params={"site": "lyon", "patient": "P1", "exam": "e1", "prepare": False})
    job = job_run(job_pk=job.pk)
    assert job.status == JobStatus.FAILED
    assert job.message.startswith("scan export.zip: not a readable zip archive"), job.message
    _assert_no_server_detail(job.message, settings)


def test_cleanup_command_removes_orphans_and_succeeded_uploads(settings):
    upload_root().mkdir(parents=True, exist_ok=True)
    old, young, done = (upload_root() / f"{c * 32}.zip" for c in "abc")
    for path in (old, young, done):
        path.write_bytes(b"PK original with a patient name")
    past = time.time() - 2 * 3600
    os.utime(old, (past, past))
    Job.objects.create(kind="import_bids", status=JobStatus.SUCCEEDED, params={"upload": done.name})
    out = io.StringIO()
    call_command("cleanup_uploads", stdout=out)
    assert "2 uploaded archives removed" in out.getvalue() and "1 kept" in out.getvalue()
    assert _uploads() == [young]  # an upload no job names yet may be one being submitted


def test_uploads_are_not_served(client, settings, one_subject):
    from tests.factories import user_with

    _submit(one_subject)
    (upload,) = _uploads()
    client.force_login(user_with("admin"))
    for url in (f"/media/uploads/{upload.name}", f"/media/{upload.name}", "/media/uploads/"):
        assert client.get(url).status_code == 404


def test_a_persistent_database_refusal_is_explained(one_subject, settings, monkeypatch):
    def refuse(**kwargs):
        raise IntegrityError('duplicate key value violates unique constraint "volume_one_per_kind_space"')

    monkeypatch.setattr(Volume.objects, "create", refuse)
    job = job_run(job_pk=_submit(one_subject).pk)
    assert job.status == JobStatus.FAILED
    assert "other imports of the same participants kept writing at the same time" in job.message
    _assert_no_server_detail(job.message, settings)
    assert len(_uploads()) == 1


def test_running_out_of_memory_is_explained(one_subject, settings, monkeypatch):
    import apps.cohorts.services.bids as bids

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(bids, "load_nifti", no_memory)
    job = job_run(job_pk=_submit(one_subject).pk)
    assert job.status == JobStatus.FAILED
    assert job.message == (f"{USER_FILE}: the import needed more memory than the worker has; nothing was "
                           "imported. The details are in the job's error log.")
    assert "MemoryError" in job.error  # for administrators


def test_user_message_rewrites_paths(settings, tmp_path):
    work = tmp_path / "scratch" / "job-3-import-x1y2"
    text = (f"{work}/dataset/sub-01/anat/a.nii.gz: bad; {settings.MEDIA_ROOT}/uploads/{'f' * 32}.zip: gone; "
            f"{settings.MEDIA_ROOT}/volumes/ab/c.nii.gz")
    message = user_message(text, roots={work: "my data.zip"})
    assert message == ("my data.zip: dataset/sub-01/anat/a.nii.gz: bad; the image store: uploads/the uploaded "
                       "archive: gone; the image store: volumes/ab/c.nii.gz")
