"""Job handlers of the cohort app (registered by kind; run by apps.jobs)."""
from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.urls import reverse

from apps.cohorts.models import Exam
from apps.jobs.models import Job
from apps.jobs.services import Progress, handler_kinds, job_handler, job_scratch_dir, job_submit


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


def _source(job: Job, workdir: Path) -> Path:
    """The dataset folder: the given path, or the uploaded zip extracted safely."""
    from ml.io.archive import safe_extract, single_root

    path = Path(job.params["path"])
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
        report = bids_import(
            path=_source(job, workdir), site_name=job.params.get("site"),
            cohort_name=job.params.get("cohort"), user=_user(job), progress=progress,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if job.params.get("prepare", True):
        transaction.on_commit(lambda: queue_after_import(report.new_exam_ids, user=_user(job)))
    return report.to_dict() | {"links": exam_links(report.new_exam_ids)}


@job_handler("import_dicom")
def handle_import_dicom(job: Job, progress: Progress) -> dict:
    from apps.cohorts.services.dicom import dicom_import

    workdir = _workdir(job)
    try:
        params = dict(job.params)
        params.pop("path")
        prepare = params.pop("prepare", True)
        report = dicom_import(path=_source(job, workdir), user=_user(job), progress=progress, **params)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if prepare:
        transaction.on_commit(lambda: queue_after_import(report["new_exam_ids"], user=_user(job)))
    return report | {"links": exam_links([report["exam"]])}


@job_handler("prepare_exam")
def handle_prepare_exam(job: Job, progress: Progress) -> dict:
    from apps.cohorts.services.prepare import exam_prepare

    exam = Exam.objects.get(pk=job.params["exam"])
    return exam_prepare(exam=exam, progress=progress) | {"links": exam_links([exam.pk])}


