"""Submitting and running jobs. One way to run long work: a handler registered by kind.

``job_submit`` creates the Job row and queues the Celery task after the transaction commits;
``job_run`` is what the worker (or a CLI command, inline with a progress bar) executes. Handlers
receive the Job and a :class:`Progress` reporter and return a JSON-safe result dict. Handlers must
be idempotent so a retry (or a worker lost mid-job) is safe.

Handlers live in ``<app>/handlers.py`` and are imported on first use (:func:`handlers_load`), not
when Django starts, so a management command does not pay for torch and scikit-learn.

Lost workers: ``job_run`` claims the row atomically (QUEUED -> RUNNING, one winner), and while the
handler runs a thread refreshes ``heartbeat_at``. :func:`job_reap_stale` (run by every worker at
start and every minute, and by ``manage.py reap_jobs``) requeues a RUNNING job whose heartbeat
is older than the lease, or fails it with the reason once it used its attempts, and removes its
scratch folders (:func:`job_scratch_dir`). A broker redelivery of a job that is running, finished
or failed does nothing, so a job never runs twice at once.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.apps import apps as django_apps
from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Concat
from django.utils import timezone

from apps.jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)

Handler = Callable[[Job, "Progress"], dict]
_HANDLERS: dict[str, Handler] = {}
_LOADED = False
_LOAD_LOCK = threading.Lock()
SCRATCH_PATTERN = re.compile(r"^job-(\d+)-")


class JobError(Exception):
    """A failure with a message meant for the user (shown on the jobs page as is)."""


def job_handler(kind: str) -> Callable[[Handler], Handler]:
    """Register ``func(job, progress) -> dict`` as the handler of jobs of ``kind``."""

    def register(func: Handler) -> Handler:
        _HANDLERS[kind] = func
        return func

    return register


def handlers_load() -> None:
    """Import ``handlers.py`` of every installed app once (like Celery's task autodiscovery)."""
    global _LOADED
    if _LOADED:
        return
    with _LOAD_LOCK:
        if _LOADED:
            return
        for config in django_apps.get_app_configs():
            name = f"{config.name}.handlers"
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        _LOADED = True


def handler_kinds() -> list[str]:
    handlers_load()
    return sorted(_HANDLERS)


def worker_name() -> str:
    """``host:pid`` of this process, recorded on the jobs it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _lease() -> timedelta:
    return timedelta(seconds=settings.AMINOPET_JOB_LEASE_SECONDS)


def _stale(cutoff) -> Q:
    """RUNNING with no heartbeat since ``cutoff`` (or none at all: rows from before the lease)."""
    return Q(status=JobStatus.RUNNING) & (Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True))


def job_is_stale(job: Job) -> bool:
    """Whether ``job`` is RUNNING on a worker that stopped heart-beating (lost)."""
    if job.status != JobStatus.RUNNING:
        return False
    return job.heartbeat_at is None or job.heartbeat_at < timezone.now() - _lease()


# --- scratch folders --------------------------------------------------------------------------

def _scratch_root() -> Path:
    return Path(settings.MEDIA_ROOT) / "scratch"


def job_scratch_dir(*, job: Job, prefix: str = "") -> Path:
    """A new temporary folder owned by ``job`` (on the image store's disk, next to the media).

    Removed when the attempt ends (success, failure) and by the reaper when its worker is lost:
    handlers need no cleanup of their own, though they may remove it earlier.
    """
    root = _scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"job-{job.pk}-{prefix}", dir=root))


def job_scratch_remove(*, job_pk: int) -> list[Path]:
    """Remove every scratch folder of job ``job_pk``; returns those removed."""
    root = _scratch_root()
    removed = []
    if root.is_dir():
        for path in root.glob(f"job-{job_pk}-*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _scratch_sweep(*, older_than: timedelta) -> list[Path]:
    """Remove scratch folders of jobs not running (finished, reaped, deleted) older than the lease."""
    root = _scratch_root()
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than.total_seconds()
    owners: dict[int, list[Path]] = {}
    for path in root.iterdir():
        match = SCRATCH_PATTERN.match(path.name)
        if match and path.stat().st_mtime < cutoff:
            owners.setdefault(int(match.group(1)), []).append(path)
    running = set(
        Job.objects.filter(pk__in=owners, status=JobStatus.RUNNING).values_list("pk", flat=True)
    )
    removed = []
    for pk, paths in owners.items():
        if pk not in running:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


# --- progress and heartbeat -------------------------------------------------------------------

class Progress:
    """Reports progress of a job to its row (outside any import transaction), and optionally a bar.

    Every report is also a heartbeat. Writes only touch the attempt that owns the row, so a worker
    that was declared lost cannot overwrite the attempt that replaced it.
    """

    def __init__(self, job: Job, *, echo: Callable[[int, str], None] | None = None) -> None:
        self.job = job
        self.echo = echo
        self._last = -1

    def _mine(self):
        return Job.objects.filter(pk=self.job.pk, attempts=self.job.attempts)

    def __call__(self, percent: float, message: str = "") -> None:
        percent = int(max(0, min(100, percent)))
        fields: dict[str, Any] = {"progress": percent}
        if message:
            fields["message"] = message[:500]
        if percent != self._last or message:
            if self.job.status == JobStatus.RUNNING:
                fields["heartbeat_at"] = timezone.now()
            self._mine().update(**fields)
            self._last = percent
        if self.echo:
            self.echo(percent, message)

    def log(self, line: str) -> None:
        self.job.log += line.rstrip() + "\n"
        self._mine().update(log=self.job.log)


class _Heartbeat(threading.Thread):
    """Refreshes the running attempt's ``heartbeat_at`` while the handler works (its own connection)."""

    def __init__(self, job: Job, *, interval: float) -> None:
        super().__init__(name=f"job-{job.pk}-heartbeat", daemon=True)
        self.job_pk, self.attempt, self.interval = job.pk, job.attempts, interval
        self._done = threading.Event()

    def run(self) -> None:
        try:
            while not self._done.wait(self.interval):
                try:
                    Job.objects.filter(
                        pk=self.job_pk, attempts=self.attempt, status=JobStatus.RUNNING
                    ).update(heartbeat_at=timezone.now())
                except DatabaseError as exc:  # a busy database: the lease tolerates a missed beat
                    logger.warning("job %s heartbeat failed: %s", self.job_pk, exc)
        finally:
            connections.close_all()  # this thread's connections only

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=2)


def job_create(*, kind: str, params: dict | None = None, user=None, site=None) -> Job:
    handlers_load()
    if kind not in _HANDLERS:
        raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(handler_kinds())}")
    return Job.objects.create(kind=kind, params=params or {}, created_by=user, site=site)


def job_queue(kind: str) -> str:
    """The Celery queue a job of ``kind`` goes to: ``AMINOPET_GPU_QUEUE`` for the kinds listed in
    ``AMINOPET_GPU_JOB_KINDS`` (training, encoding), the default queue for the rest."""
    if kind in settings.AMINOPET_GPU_JOB_KINDS:
        return settings.AMINOPET_GPU_QUEUE
    return settings.CELERY_TASK_DEFAULT_QUEUE


def _enqueue(job_pk: int, kind: str) -> None:
    from apps.jobs.tasks import run_job

    queue = job_queue(kind)
    Job.objects.filter(pk=job_pk).update(enqueued_at=timezone.now())
    if queue == settings.CELERY_TASK_DEFAULT_QUEUE:
        run_job.delay(job_pk=job_pk)
    else:
        run_job.apply_async(kwargs={"job_pk": job_pk}, queue=queue)


def job_submit(*, kind: str, params: dict | None = None, user=None, site=None) -> Job:
    """Create a job and queue it (:func:`job_queue`) once the current transaction commits."""
    job = job_create(kind=kind, params=params, user=user, site=site)
    transaction.on_commit(lambda: _enqueue(job.pk, job.kind))
    return job


def job_retry(*, job: Job) -> Job:
    """Queue a failed job, or one whose worker was lost, again (handlers are idempotent)."""
    with transaction.atomic():
        if job_is_stale(job):
            # Not yet reaped: take it from the lost worker here (same conditions as the reaper).
            cutoff = timezone.now() - _lease()
            changed = Job.objects.filter(_stale(cutoff), pk=job.pk).update(
                status=JobStatus.QUEUED, progress=0, message="Queued again (its worker was lost)",
                error="", finished_at=None,
            )
        else:
            changed = Job.objects.filter(pk=job.pk, status=JobStatus.FAILED).update(
                status=JobStatus.QUEUED, progress=0, message="Queued again", error="", finished_at=None
            )
        if not changed:
            job.refresh_from_db()
            raise JobError(
                f"job {job.pk} is {job.status}; only failed jobs and jobs whose worker was lost "
                "can be retried"
            )
        transaction.on_commit(lambda: _enqueue(job.pk, job.kind))
    job_scratch_remove(job_pk=job.pk)
    job.refresh_from_db()
    return job


def _claim(job_pk: int) -> bool:
    """QUEUED -> RUNNING in one conditional UPDATE: of two deliveries, exactly one wins."""
    now = timezone.now()
    return bool(Job.objects.filter(pk=job_pk, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, worker=worker_name()[:255],
        attempts=F("attempts") + 1, error="", finished_at=None,
    ))


def job_run(*, job_pk: int, echo: Callable[[int, str], None] | None = None) -> Job:
    """Run a job's handler now, recording status, progress, result or failure on its row.

    Only a QUEUED job runs: a second delivery of a running, finished or failed job does nothing.
    """
    handlers_load()
    if not _claim(job_pk):
        job = Job.objects.get(pk=job_pk)
        logger.info("job %s is %s: this delivery does nothing", job.pk, job.status)
        return job
    job = Job.objects.get(pk=job_pk)
    mine = Job.objects.filter(pk=job.pk, attempts=job.attempts, status=JobStatus.RUNNING)
    heartbeat = None
    if not connection.in_atomic_block:  # inside a caller's transaction nobody else sees the row
        heartbeat = _Heartbeat(job, interval=settings.AMINOPET_JOB_HEARTBEAT_SECONDS)
        heartbeat.start()
    progress = Progress(job, echo=echo)
    try:
        handler = _HANDLERS.get(job.kind)
        if handler is None:
            raise JobError(f"no handler for job kind {job.kind!r} on {worker_name()}")
        result = handler(job, progress)
    except Exception as exc:  # the job records every failure; the message is for the user
        expected = isinstance(exc, JobError | ValueError | PermissionError)
        message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        if expected:
            logger.info("job %s (%s) failed: %s", job.pk, job.kind, message)
        else:
            logger.exception("job %s (%s) failed", job.pk, job.kind)
        mine.update(
            status=JobStatus.FAILED,
            message=message[:500],
            error=message + "\n\n" + traceback.format_exc(),
            finished_at=timezone.now(),
        )
    else:
        done = mine.update(
            status=JobStatus.SUCCEEDED,
            progress=100,
            result=result or {},
            message=(result or {}).get("message", "Done")[:500],
            finished_at=timezone.now(),
        )
        if not done:
            logger.warning("job %s finished on %s after its lease was lost", job.pk, worker_name())
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        job_scratch_remove(job_pk=job.pk)
    job.refresh_from_db()
    return job


def job_reap_stale(*, older_than: timedelta | None = None) -> list[Job]:
    """Requeue or fail RUNNING jobs whose worker stopped heart-beating; remove their scratch folders.

    A job with attempts left (``settings.AMINOPET_JOB_MAX_ATTEMPTS``) is queued again; otherwise it
    fails with the reason ("worker lost at N%") and can be retried. Each row changes in one
    conditional UPDATE, so two reapers (two workers starting) act on a job once. Returns the jobs
    reaped, as they were before.
    """
    lease = older_than if older_than is not None else _lease()
    now = timezone.now()
    cutoff = now - lease
    max_attempts = settings.AMINOPET_JOB_MAX_ATTEMPTS
    reaped = []
    for job in Job.objects.filter(_stale(cutoff)).order_by("pk"):
        seen = job.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S UTC") if job.heartbeat_at else "never"
        reason = (f"Worker {job.worker or '(unknown)'} lost at {job.progress}% "
                  f"(attempt {job.attempts}; last heartbeat {seen})")
        if job.attempts < max_attempts:
            fields = {"status": JobStatus.QUEUED, "progress": 0, "finished_at": None,
                      "message": f"{reason}; queued again ({job.attempts + 1} of {max_attempts} attempts)"[:500]}
        else:
            fields = {"status": JobStatus.FAILED, "finished_at": now, "error": reason,
                      "message": f"{reason}. Retry to run it again."[:500]}
        with transaction.atomic():
            changed = Job.objects.filter(_stale(cutoff), pk=job.pk, attempts=job.attempts).update(
                log=Concat(F("log"), Value(f"{reason}\n")), **fields
            )
            if changed and fields["status"] == JobStatus.QUEUED:
                transaction.on_commit(lambda pk=job.pk, kind=job.kind: _enqueue(pk, kind))
        if changed:
            logger.warning("job %s (%s): %s", job.pk, job.kind, fields["message"])
            job_scratch_remove(job_pk=job.pk)
            reaped.append(job)
    _scratch_sweep(older_than=lease)
    return reaped


def job_resend_lost_messages(*, older_than: timedelta | None = None) -> list[Job]:
    """Send again the message of every job still QUEUED ``older_than`` after it was last sent.

    A broker that keeps nothing on disk (Redis without persistence, as deployed) loses its queued
    messages when it restarts; the rows stay QUEUED and nothing would ever run them. Sending a
    message twice is harmless: :func:`job_run` claims a job once, so a duplicate delivery does
    nothing. Each row changes in one conditional UPDATE (two workers' reapers send it once). A job
    that merely waits behind long ones is resent too, once per ``older_than``. Returns the jobs resent.
    """
    wait = older_than if older_than is not None else timedelta(seconds=settings.AMINOPET_JOB_RESEND_SECONDS)
    now = timezone.now()
    cutoff = now - wait
    waiting = Job.objects.filter(status=JobStatus.QUEUED).filter(
        Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True, created_at__lt=cutoff))
    resent = []
    for job in waiting.order_by("pk"):
        line = (f"{now:%Y-%m-%d %H:%M:%S} UTC: still queued {int(wait.total_seconds() // 60)} min after its "
                "message was sent; sent again (a restarted broker loses queued messages)\n")
        with transaction.atomic():
            changed = Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED, enqueued_at=job.enqueued_at).update(
                enqueued_at=now, log=Concat(F("log"), Value(line)))
            if changed:
                transaction.on_commit(lambda pk=job.pk, kind=job.kind: _enqueue(pk, kind))
        if changed:
            logger.warning("job %s (%s): queued message sent again", job.pk, job.kind)
            resent.append(job)
    return resent


def job_run_inline(*, kind: str, params: dict, user=None, site=None, echo=None) -> Job:
    """Create and run a job in this process (CLI commands), with the same code path as a worker."""
    job = job_create(kind=kind, params=params, user=user, site=site)
    return job_run(job_pk=job.pk, echo=echo)


def job_params(job: Job, *keys: str) -> list[Any]:
    missing = [k for k in keys if k not in job.params]
    if missing:
        raise JobError(f"job {job.pk} lacks parameters {missing}")
    return [job.params[k] for k in keys]
