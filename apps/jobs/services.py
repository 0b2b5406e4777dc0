"""Submitting and running jobs. One way to run long work: a handler registered by kind.

``job_submit`` creates the Job row and queues the Celery task after the transaction commits;
``job_run`` is what the worker (or a CLI command, inline with a progress bar) executes. Handlers
receive the Job and a :class:`Progress` reporter and return a JSON-safe result dict. Handlers must
be idempotent so a retry (or a worker lost mid-job, with acks_late) is safe.
"""
from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)

Handler = Callable[[Job, "Progress"], dict]
_HANDLERS: dict[str, Handler] = {}


class JobError(Exception):
    """A failure with a message meant for the user (shown on the jobs page as is)."""


def job_handler(kind: str) -> Callable[[Handler], Handler]:
    """Register ``func(job, progress) -> dict`` as the handler of jobs of ``kind``."""

    def register(func: Handler) -> Handler:
        _HANDLERS[kind] = func
        return func

    return register


def handler_kinds() -> list[str]:
    return sorted(_HANDLERS)


class Progress:
    """Reports progress of a job to its row (outside any import transaction), and optionally a bar."""

    def __init__(self, job: Job, *, echo: Callable[[int, str], None] | None = None) -> None:
        self.job = job
        self.echo = echo
        self._last = -1

    def __call__(self, percent: float, message: str = "") -> None:
        percent = int(max(0, min(100, percent)))
        fields = {"progress": percent}
        if message:
            fields["message"] = message[:500]
        if percent != self._last or message:
            Job.objects.filter(pk=self.job.pk).update(**fields)
            self._last = percent
        if self.echo:
            self.echo(percent, message)

    def log(self, line: str) -> None:
        self.job.log += line.rstrip() + "\n"
        Job.objects.filter(pk=self.job.pk).update(log=self.job.log)


def job_create(*, kind: str, params: dict | None = None, user=None, site=None) -> Job:
    if kind not in _HANDLERS:
        raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(handler_kinds())}")
    return Job.objects.create(kind=kind, params=params or {}, created_by=user, site=site)


def job_submit(*, kind: str, params: dict | None = None, user=None, site=None) -> Job:
    """Create a job and queue it on a Celery worker once the current transaction commits."""
    from apps.jobs.tasks import run_job

    job = job_create(kind=kind, params=params, user=user, site=site)
    transaction.on_commit(lambda: run_job.delay(job_pk=job.pk))
    return job


def job_retry(*, job: Job) -> Job:
    """Queue a failed job again (handlers are idempotent)."""
    if job.status != JobStatus.FAILED:
        raise JobError(f"job {job.pk} is {job.status}; only failed jobs can be retried")
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.QUEUED, progress=0, message="Queued again", error="", finished_at=None
    )
    from apps.jobs.tasks import run_job

    transaction.on_commit(lambda: run_job.delay(job_pk=job.pk))
    job.refresh_from_db()
    return job


def job_run(*, job_pk: int, echo: Callable[[int, str], None] | None = None) -> Job:
    """Run a job's handler now, recording status, progress, result or failure on its row."""
    job = Job.objects.get(pk=job_pk)
    if job.status == JobStatus.SUCCEEDED:
        return job  # delivered twice: nothing to do
    handler = _HANDLERS[job.kind]
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, started_at=timezone.now(), attempts=job.attempts + 1, error=""
    )
    job.refresh_from_db()
    progress = Progress(job, echo=echo)
    try:
        result = handler(job, progress)
    except Exception as exc:  # the job records every failure; the message is for the user
        expected = isinstance(exc, JobError | ValueError | PermissionError)
        message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        if expected:
            logger.info("job %s (%s) failed: %s", job.pk, job.kind, message)
        else:
            logger.exception("job %s (%s) failed", job.pk, job.kind)
        Job.objects.filter(pk=job.pk).update(
            status=JobStatus.FAILED,
            message=message[:500],
            error=message + "\n\n" + traceback.format_exc(),
            finished_at=timezone.now(),
        )
    else:
        Job.objects.filter(pk=job.pk).update(
            status=JobStatus.SUCCEEDED,
            progress=100,
            result=result or {},
            message=(result or {}).get("message", "Done")[:500],
            finished_at=timezone.now(),
        )
    job.refresh_from_db()
    return job


def job_run_inline(*, kind: str, params: dict, user=None, site=None, echo=None) -> Job:
    """Create and run a job in this process (CLI commands), with the same code path as a worker."""
    job = job_create(kind=kind, params=params, user=user, site=site)
    return job_run(job_pk=job.pk, echo=echo)


def job_params(job: Job, *keys: str) -> list[Any]:
    missing = [k for k in keys if k not in job.params]
    if missing:
        raise JobError(f"job {job.pk} lacks parameters {missing}")
    return [job.params[k] for k in keys]
