"""Real Celery worker processes on the configured broker (Redis in CI) run jobs end to end.

Each test process has its own broker folder (filesystem://) or queue (Redis) and its own database
(config/settings.py), and its workers consume only that queue, so a running `make demo` and a test
run never take each other's messages.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as dj_settings
from django.db import connection

from apps.cohorts.models import Exam, Volume
from apps.jobs.models import Job
from apps.jobs.services import job_retry, job_submit

pytestmark = [pytest.mark.celery_worker, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def _broker_reachable() -> bool:
    url = dj_settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        return True
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


# A short lease so a lost worker is noticed in seconds, not minutes (the defaults are 15 s / 120 s).
FAST_LEASE = {"AMINOPET_JOB_HEARTBEAT_SECONDS": "0.5", "AMINOPET_JOB_LEASE_SECONDS": "3",
              "AMINOPET_JOB_REAP_SECONDS": "1"}


@pytest.fixture
def start_worker(settings):
    """Starts real worker processes on this test process's own broker folder/queue and database."""
    if not _broker_reachable():
        if os.environ.get("AMINOPET_REQUIRE_SERVICES"):
            pytest.fail(f"broker {settings.CELERY_BROKER_URL} unreachable")
        pytest.skip(f"broker {settings.CELERY_BROKER_URL} unreachable")
    started: list[tuple[subprocess.Popen, object]] = []

    def start(**extra_env: str) -> subprocess.Popen:
        env = os.environ | {
            "DATABASE_URL": _database_url(),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "AMINOPET_BROKER_DIR": str(settings.AMINOPET_BROKER_DIR),
            "CELERY_TASK_DEFAULT_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE,
            "DJANGO_SETTINGS_MODULE": "config.settings",
        } | extra_env
        log = open(Path(settings.MEDIA_ROOT).parent / f"worker{len(started)}.log", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--concurrency", "1",
             "-Q", settings.CELERY_TASK_DEFAULT_QUEUE, "-l", "info", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", f"test{os.getpid()}-{len(started)}@%h"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.seek(0)
        print(log.read()[-3000:])
        log.close()


@pytest.fixture
def worker(start_worker):
    return start_worker()


def _wait(job: Job, timeout: float = 240) -> Job:
    deadline = time.monotonic() + timeout
    seen_progress = set()
    while time.monotonic() < deadline:
        job.refresh_from_db()
        seen_progress.add(job.progress)
        if job.is_finished:
            job.seen_progress = seen_progress
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job.pk} still {job.status} ({job.progress}%) after {timeout}s")


def test_worker_imports_and_prepares(worker, generated_bids):
    job = job_submit(kind="import_bids", params={"path": str(generated_bids), "cohort": "w"})
    done = _wait(job)
    assert done.status == "succeeded", done.error
    assert done.progress == 100 and done.attempts == 1
    assert len(done.seen_progress) > 1  # progress was reported while it ran
    n = Exam.objects.count()
    assert n == len(done.result["new_exam_ids"]) > 0
    # the import queued one preparation job per new exam, run by the same worker
    prepares = Job.objects.filter(kind="prepare_exam")
    assert prepares.count() == n
    for prep in prepares:
        assert _wait(prep).status == "succeeded", prep.error
    common = Volume.objects.filter(space="common")
    assert common.count() == Volume.objects.filter(space="native").count()
    assert all(v.thumbnail for v in Volume.objects.filter(space="native"))


def test_worker_records_failure_and_retry_is_safe(worker, tmp_path):
    job = job_submit(kind="import_bids", params={"path": str(tmp_path / "missing")})
    done = _wait(job)
    assert done.status == "failed"
    assert "not a folder" in done.message
    job_retry(job=done)
    again = _wait(Job.objects.get(pk=job.pk))
    assert again.status == "failed" and again.attempts == 2


def _until(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def _sessions(bids: Path) -> int:
    return sum(1 for _ in bids.glob("sub-*/ses-*"))


@pytest.mark.parametrize("max_attempts", [1, 2], ids=["fails-then-retry", "requeued"])
def test_killed_worker_job_is_reaped_cleaned_and_runs_again(start_worker, one_subject, tmp_path,
                                                            settings, max_attempts):
    """SIGKILL the worker mid-import: the next worker notices within seconds, removes the job's
    extraction folder, and fails the job with the reason (retry allowed) or requeues it."""
    archive = shutil.make_archive(str(tmp_path / "cohort"), "zip", one_subject.parent, one_subject.name)
    scratch = Path(settings.MEDIA_ROOT) / "scratch"
    first = start_worker(**FAST_LEASE)
    job = job_submit(kind="import_bids", params={"path": archive, "cohort": "k", "prepare": False})
    deadline = time.monotonic() + 120
    while True:  # kill it while it checks the extracted files (after extraction, before writing)
        job.refresh_from_db()
        assert not job.is_finished, "the import finished before the kill; the test cannot probe a kill"
        if job.status == "running" and 2 <= job.progress < 70 and list(scratch.glob(f"job-{job.pk}-*/*")):
            break
        assert time.monotonic() < deadline, f"job never got going: {job.status} {job.progress}%"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = Job.objects.get(pk=job.pk)
    assert killed_at.status == "running"  # nothing of the dead worker tells the row
    assert list(scratch.glob(f"job-{job.pk}-*"))  # and its 'extraction' is still there

    start_worker(**FAST_LEASE, AMINOPET_JOB_MAX_ATTEMPTS=str(max_attempts))
    if max_attempts == 1:
        failed = _wait(job, timeout=60)
        assert failed.status == "failed"
        assert "lost at" in failed.message and "Retry" in failed.message, failed.message
        assert failed.attempts == 1
        _until(lambda: not list(scratch.glob(f"job-{job.pk}-*")), "the reaper removes the extraction")
        job_retry(job=failed)
    done = _wait(Job.objects.get(pk=job.pk), timeout=240)
    assert done.status == "succeeded", done.error
    assert done.attempts == 2
    assert "lost at" in done.log  # the lost attempt stays on record
    assert Exam.objects.count() == _sessions(one_subject)
    assert not list(scratch.glob("*"))  # nothing left behind by either attempt
