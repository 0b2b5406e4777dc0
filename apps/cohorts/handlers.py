"""Job handlers of the cohort app (registered by kind; run by apps.jobs).

Import failures reach the user as the job's message: the handlers name the user's own file (the
uploaded archive's name and the path inside it), never a server path or an upload's random name,
and an unexpected error (memory, disk, database) is explained in one sentence while its details
stay in the job's error log for administrators. An uploaded archive is deleted once its import
succeeds (apps.cohorts.services.uploads).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, transaction
from django.urls import reverse

from apps.cohorts.models import Exam
from apps.jobs.models import Job
from apps.jobs.services import (
    JobError,
    Progress,
    handler_kinds,
    job_handler,
    job_scratch_dir,
    job_submit,
)

logger = logging.getLogger(__name__)


def exam_links(exam_ids: list[int], *, limit: int = 30) -> list[dict]:
    """Links a finished job shows (the jobs app knows no other app's URLs)."""
    links = [{"label": f"Exam {pk}", "url": reverse("cohorts:exam", args=[pk])} for pk in exam_ids[:limit]]
    if len(exam_ids) > limit:
        links.append({"label": "All sites", "url": reverse("cohorts:sites")})
    return links


def _user(job: Job):
    return job.created_by if job.created_by_id else None


def _workdir(job: Job) -> Path:
    """The job's scratch folder: removed when the attempt ends, or by the reaper if its worker dies."""
    return job_scratch_dir(job=job, prefix="import-")


def _filename(job: Job) -> str:
    """What the user calls the data: the uploaded file's name, or the path given to the command."""
    return job.params.get("filename") or Path(job.params.get("path", "")).name or "the dataset"


def _archive(job: Job) -> Path:
    """The uploaded archive (params ``upload``) or the path given to a management command."""
    from apps.cohorts.services.uploads import upload_path

    if job.params.get("upload"):
        path = upload_path(job.params["upload"])
        if not path.is_file():
            raise JobError(
                f"{_filename(job)}: the uploaded archive is no longer on the server (archives are deleted "
                f"after a successful import and {settings.AMINOPET_FAILED_UPLOAD_RETENTION_DAYS} days after "
                "a failed one); upload it again"
            )
        return path
    return Path(job.params["path"])


@contextlib.contextmanager
def _explained(job: Job, workdir: Path):
    """Turn any failure into a JobError whose message names the user's file, not server paths."""
    from apps.audit.services import audit_record
    from apps.cohorts.services.uploads import upload_path, user_message

    try:
        yield
    except Exception as exc:
        name = _filename(job)
        roots = {workdir: name}
        if job.params.get("upload"):
            roots[upload_path(job.params["upload"])] = name
        if job.params.get("path"):
            given = Path(job.params["path"])
            roots[given] = given.name
        if isinstance(exc, JobError | ValueError | PermissionError):
            message = user_message(str(exc), roots=roots)
        else:
            logger.exception("import job %s of %s failed unexpectedly", job.pk, name)
            why = ("needed more memory than the worker has" if isinstance(exc, MemoryError)
                   else f"failed unexpectedly ({type(exc).__name__})")
            message = f"{name}: the import {why}; nothing was imported. The details are in the job's error log."
        try:
            audit_record(action="import.run", actor=_user(job), site=job.site_id,
                         details={"kind": job.kind, "file": name, "outcome": "failed", "reason": message[:500]})
        except DatabaseError:  # the failure itself may be the database's; the job still records it
            logger.exception("could not audit the failed import job %s", job.pk)
        raise JobError(message) from exc


def _upload_done(job: Job) -> None:
    """The import succeeded: the uploaded original (names, IDs, birth dates) goes."""
    from apps.cohorts.services.uploads import upload_delete, uploads_cleanup_quietly

    if job.params.get("upload"):
        upload_delete(job.params["upload"])
    uploads_cleanup_quietly()


def _source(job: Job, workdir: Path) -> Path:
    """The dataset folder: the given path, or the uploaded zip extracted safely."""
    from ml.io.archive import safe_extract, single_root

    path = _archive(job)
    if path.suffix.lower() == ".zip":
        return single_root(safe_extract(path, workdir, max_bytes=settings.AMINOPET_MAX_UNZIPPED_BYTES))
    return path


def queue_after_import(exam_ids: list[int], *, user=None) -> None:
    """Queue the per-exam jobs of settings.AMINOPET_AFTER_IMPORT_JOBS (preparation, quantification...)."""
    for pk in exam_ids:
        for kind in settings.AMINOPET_AFTER_IMPORT_JOBS:
            if kind in handler_kinds():
                job_submit(kind=kind, params={"exam": pk}, user=user)


@job_handler("import_bids")
def handle_import_bids(job: Job, progress: Progress) -> dict:
    from apps.cohorts.services.bids import bids_import

    workdir = _workdir(job)
    try:
        with _explained(job, workdir):
            report = bids_import(
                path=_source(job, workdir), site_name=job.params.get("site"),
                cohort_name=job.params.get("cohort"), user=_user(job), progress=progress,
                source_name=_filename(job),
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _upload_done(job)
    if job.params.get("prepare", True):
        transaction.on_commit(lambda: queue_after_import(report.new_exam_ids, user=_user(job)))
    return report.to_dict() | {"links": exam_links(report.new_exam_ids)}


@job_handler("import_dicom")
def handle_import_dicom(job: Job, progress: Progress) -> dict:
    from apps.cohorts.services.dicom import dicom_import

    workdir = _workdir(job)
    try:
        params = dict(job.params)
        for key in ("path", "upload", "filename"):
            params.pop(key, None)
        prepare = params.pop("prepare", True)
        with _explained(job, workdir):
            report = dicom_import(path=_source(job, workdir), user=_user(job), progress=progress,
                                  source_name=_filename(job), **params)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _upload_done(job)
    if prepare:
        transaction.on_commit(lambda: queue_after_import(report["new_exam_ids"], user=_user(job)))
    return report | {"links": exam_links([report["exam"]])}


@job_handler("prepare_exam")
def handle_prepare_exam(job: Job, progress: Progress) -> dict:
    from apps.cohorts.services.prepare import exam_prepare

    exam = Exam.objects.get(pk=job.params["exam"])
    return exam_prepare(exam=exam, progress=progress) | {"links": exam_links([exam.pk])}


