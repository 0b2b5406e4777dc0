"""A real Celery worker process on the configured broker (Redis in CI) runs jobs end to end."""
from __future__ import annotations

import os
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
from apps.jobs.services import job_submit

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


@pytest.fixture
def worker(settings):
    if not _broker_reachable():
        if os.environ.get("AMINOPET_REQUIRE_SERVICES"):
            pytest.fail(f"broker {settings.CELERY_BROKER_URL} unreachable")
        pytest.skip(f"broker {settings.CELERY_BROKER_URL} unreachable")
    env = os.environ | {
        "DATABASE_URL": _database_url(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    log = open(Path(settings.MEDIA_ROOT).parent / "worker.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--concurrency", "1",
         "-l", "info", "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"test{os.getpid()}@%h"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.seek(0)
    print(log.read()[-3000:])


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
    from apps.jobs.services import job_retry

    job_retry(job=done)
    again = _wait(Job.objects.get(pk=job.pk))
    assert again.status == "failed" and again.attempts == 2
