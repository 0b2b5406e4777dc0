"""Jobs without a worker process: the claim, the lease (heartbeat), the reaper, retry, scratch folders.

The killed-worker scenario with real processes is in test_celery_worker.py; here each rule is
checked in-process on Job rows, with small handlers registered for the test.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.jobs import services
from apps.jobs.models import Job, JobStatus
from apps.jobs.services import (
    JobError,
    Progress,
    job_reap_stale,
    job_retry,
    job_run,
    job_scratch_dir,
    job_submit,
)
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def handler(monkeypatch):
    """Registers handlers for a test-only kind; returns the list of calls they saw."""
    calls: list[int] = []

    def register(func=None, kind: str = "test_job"):
        def run(job, progress):
            calls.append(job.pk)
            return func(job, progress) if func else {"message": "ok"}

        monkeypatch.setitem(services._HANDLERS, kind, run)
        return calls

    return register


def _running(*, progress=40, heartbeat_age=None, attempts=1, kind="test_job") -> Job:
    beat = timezone.now() - heartbeat_age if heartbeat_age is not None else timezone.now()
    return JobFactory(kind=kind, status=JobStatus.RUNNING, progress=progress, attempts=attempts,
                      worker="gone-host:4242", heartbeat_at=beat, started_at=beat, message="Checking")


def test_second_delivery_of_a_job_does_not_run_it_again(handler):
    calls = handler()
    job = JobFactory(kind="test_job", status=JobStatus.QUEUED)
    first = job_run(job_pk=job.pk)
    second = job_run(job_pk=job.pk)
    assert calls == [job.pk]
    assert first.status == second.status == "succeeded" and second.attempts == 1
    assert first.worker.endswith(f":{os.getpid()}") and first.heartbeat_at is not None


def test_delivery_of_a_running_job_with_live_heartbeat_does_nothing(handler):
    calls = handler()
    job = _running(heartbeat_age=timedelta(seconds=5))
    after = job_run(job_pk=job.pk)
    assert calls == [] and after.status == "running" and after.attempts == 1


def test_delivery_of_a_failed_job_does_nothing_until_retried(handler, django_capture_on_commit_callbacks,
                                                             monkeypatch):
    calls = handler()
    sent = []
    monkeypatch.setattr("apps.jobs.tasks.run_job.delay", lambda **kw: sent.append(kw))
    job = JobFactory(kind="test_job", status=JobStatus.FAILED, attempts=1)
    assert job_run(job_pk=job.pk).status == "failed" and calls == []
    with django_capture_on_commit_callbacks(execute=True):
        job_retry(job=job)
    assert sent == [{"job_pk": job.pk}]
    done = job_run(job_pk=job.pk)
    assert calls == [job.pk] and done.status == "succeeded" and done.attempts == 2


def test_reaper_requeues_a_lost_job_while_attempts_remain(settings, django_capture_on_commit_callbacks,
                                                         monkeypatch):
    settings.AMINOPET_JOB_MAX_ATTEMPTS = 2
    sent = []
    monkeypatch.setattr("apps.jobs.tasks.run_job.delay", lambda **kw: sent.append(kw))
    lost = _running(progress=37, heartbeat_age=timedelta(minutes=5))
    live = _running(heartbeat_age=timedelta(seconds=10))
    lost_dir, live_dir = job_scratch_dir(job=lost), job_scratch_dir(job=live)
    (lost_dir / "extracted.nii.gz").write_bytes(b"x" * 1000)
    with django_capture_on_commit_callbacks(execute=True):
        reaped = job_reap_stale()
    assert [j.pk for j in reaped] == [lost.pk]
    lost.refresh_from_db()
    assert lost.status == "queued" and lost.progress == 0
    assert "gone-host:4242 lost at 37%" in lost.message and "2 of 2 attempts" in lost.message
    assert "lost at 37%" in lost.log
    assert sent == [{"job_pk": lost.pk}]
    assert not lost_dir.exists() and live_dir.is_dir()
    live.refresh_from_db()
    assert live.status == "running"


def test_reaper_fails_a_lost_job_that_used_its_attempts_and_retry_runs_it(
        settings, handler, django_capture_on_commit_callbacks, monkeypatch):
    settings.AMINOPET_JOB_MAX_ATTEMPTS = 2
    calls = handler()
    monkeypatch.setattr("apps.jobs.tasks.run_job.delay", lambda **kw: None)
    lost = _running(progress=80, attempts=2, heartbeat_age=timedelta(minutes=3))
    with django_capture_on_commit_callbacks(execute=True):
        job_reap_stale()
        assert job_reap_stale() == []  # a second reaper finds nothing more to do
    lost.refresh_from_db()
    assert lost.status == "failed" and lost.finished_at is not None
    assert "lost at 80%" in lost.message and "Retry" in lost.message and "lost at 80%" in lost.error
    with django_capture_on_commit_callbacks(execute=True):
        job_retry(job=lost)
    assert job_run(job_pk=lost.pk).status == "succeeded" and calls == [lost.pk]


def test_retry_takes_a_lost_job_before_the_reaper_and_refuses_live_ones(
        django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr("apps.jobs.tasks.run_job.delay", lambda **kw: sent.append(kw))
    lost = _running(heartbeat_age=timedelta(hours=12))
    scratch = job_scratch_dir(job=lost)
    with django_capture_on_commit_callbacks(execute=True):
        job_retry(job=lost)
    lost.refresh_from_db()
    assert lost.status == "queued" and "worker was lost" in lost.message and not scratch.exists()
    assert sent == [{"job_pk": lost.pk}]
    live = _running(heartbeat_age=timedelta(seconds=1))
    for job in (live, JobFactory(status=JobStatus.SUCCEEDED), JobFactory(status=JobStatus.QUEUED)):
        with pytest.raises(JobError, match="only failed jobs and jobs whose worker was lost"):
            job_retry(job=job)
    assert len(sent) == 1


def test_scratch_is_removed_when_the_attempt_ends(handler, tmp_path):
    seen = []

    def use_scratch(job, progress):
        folder = job_scratch_dir(job=job, prefix="import-")
        (folder / "big.bin").write_bytes(b"0" * 10_000)
        seen.append(folder)
        if job.params.get("fail"):
            raise ValueError("bad input")
        return {}

    handler(use_scratch)
    ok = job_run(job_pk=JobFactory(kind="test_job", status=JobStatus.QUEUED).pk)
    bad = job_run(job_pk=JobFactory(kind="test_job", status=JobStatus.QUEUED, params={"fail": True}).pk)
    assert ok.status == "succeeded" and bad.status == "failed" and bad.message == "bad input"
    assert len(seen) == 2 and not any(folder.exists() for folder in seen)


def test_reaper_sweeps_orphan_scratch_of_finished_jobs(settings):
    settings.AMINOPET_JOB_LEASE_SECONDS = 60
    finished = JobFactory(status=JobStatus.SUCCEEDED)
    running = _running()
    old, fresh, kept = (job_scratch_dir(job=finished), job_scratch_dir(job=finished),
                        job_scratch_dir(job=running))
    hour_ago = time.time() - 3600
    for folder in (old, kept):
        os.utime(folder, (hour_ago, hour_ago))
    job_reap_stale()
    assert not old.exists()  # left by a killed worker of a job that has since finished
    assert fresh.exists()  # too recent to judge
    assert kept.exists()  # its job is running


def test_a_replaced_attempt_cannot_write_progress(handler):
    job = _running(attempts=1)
    stale_view = Job.objects.get(pk=job.pk)
    Job.objects.filter(pk=job.pk).update(attempts=2, progress=5)  # another worker took it over
    Progress(stale_view)(90, "old attempt")
    job.refresh_from_db()
    assert job.progress == 5 and job.message != "old attempt"


@pytest.mark.django_db(transaction=True)
def test_heartbeat_advances_while_the_handler_works(settings, handler):
    settings.AMINOPET_JOB_HEARTBEAT_SECONDS = 0.1
    beats = []

    def slow(job, progress):
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # no progress reports: only the thread beats
            beats.append(Job.objects.values_list("heartbeat_at", flat=True).get(pk=job.pk))
            time.sleep(0.1)
        return {}

    handler(slow)
    job = JobFactory(kind="test_job", status=JobStatus.QUEUED)
    threads_before = threading.active_count()
    done = job_run(job_pk=job.pk)
    assert done.status == "succeeded"
    assert len(set(beats)) >= 3 and max(beats) > min(beats)
    assert threading.active_count() == threads_before  # the heartbeat thread ended with the job


def test_reap_jobs_command(settings, capsys, monkeypatch):
    monkeypatch.setattr("apps.jobs.tasks.run_job.delay", lambda **kw: None)
    lost = _running(progress=12, heartbeat_age=timedelta(minutes=10))
    call_command("reap_jobs")
    out = capsys.readouterr().out
    assert f"job {lost.pk} (test_job) on gone-host:4242 at 12%: reaped" in out
    assert "1 job(s) of lost workers reaped" in out


def test_test_process_has_its_own_broker_and_queue(settings):
    """The demo's settings (a process without pytest) and this test process's differ."""
    code = ("from django.conf import settings as s; "
            "print(s.CELERY_TASK_DEFAULT_QUEUE, s.AMINOPET_BROKER_DIR)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_TASK_DEFAULT_QUEUE", "AMINOPET_BROKER_DIR", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    demo = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    demo_queue, demo_dir = demo.stdout.split()
    assert demo_queue == "celery" and Path(demo_dir).name == "broker"
    assert settings.CELERY_TASK_DEFAULT_QUEUE == f"test-{os.getpid()}"
    assert settings.AMINOPET_BROKER_DIR.name == f"test_broker_{os.getpid()}"
    assert settings.CELERY_TASK_ROUTES["apps.registry.tasks.train_*"]["queue"] == f"test-{os.getpid()}"


@pytest.mark.django_db(transaction=True)
def test_submitted_job_lands_on_this_process_queue(settings, handler):
    handler()
    from config.celery import app

    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_declare(queue=queue, durable=True, auto_delete=False)
        channel.queue_purge(queue)
        job_submit(kind="test_job")
        _, count, _ = channel.queue_declare(queue=queue, passive=True)
        assert count == 1
        message = channel.basic_get(queue, no_ack=True)
        assert message.payload is not None and message.headers["task"] == "apps.jobs.tasks.run_job"
        channel.queue_purge(queue)


def test_job_page_says_when_a_worker_was_lost_and_offers_retry(client):
    from django.urls import reverse

    from tests.factories import SiteFactory, user_with

    user = user_with("coordinator", SiteFactory())
    client.force_login(user)
    lost = _running(progress=37, heartbeat_age=timedelta(minutes=10))
    live = _running(heartbeat_age=timedelta(seconds=2))
    Job.objects.filter(pk__in=[lost.pk, live.pk]).update(created_by=user)
    lost_page = client.get(reverse("jobs:detail", args=[lost.pk])).content.decode()
    live_page = client.get(reverse("jobs:detail", args=[live.pk])).content.decode()
    assert "no sign of life for longer than its lease" in lost_page
    assert reverse("jobs:retry", args=[lost.pk]) in lost_page
    assert "on gone-host:4242, last sign of life" in live_page and 'data-field="stale" hidden' in live_page
    assert 'data-field="stale" hidden' not in lost_page
    assert reverse("jobs:retry", args=[live.pk]) not in live_page
    assert client.get(reverse("jobs:status", args=[lost.pk])).json()["stale"] is True
    assert client.get(reverse("jobs:status", args=[live.pk])).json()["stale"] is False
    response = client.post(reverse("jobs:retry", args=[lost.pk]))
    assert response.status_code == 302
    lost.refresh_from_db()
    assert lost.status == "queued"


def test_a_queued_job_whose_message_was_lost_is_sent_again_once(settings, handler,
                                                                django_capture_on_commit_callbacks, monkeypatch):
    """A restarted Redis (no persistence) loses queued messages: the row stays QUEUED. The reaper
    sends it again after AMINOPET_JOB_RESEND_SECONDS; a second reaper at once sends nothing."""
    settings.AMINOPET_JOB_RESEND_SECONDS = 600
    calls = handler()
    sent = []
    monkeypatch.setattr("apps.jobs.tasks.run_job.delay", lambda **kw: sent.append(kw))
    with django_capture_on_commit_callbacks(execute=True):
        lost = job_submit(kind="test_job")
        fresh = job_submit(kind="test_job")
    assert sent == [{"job_pk": lost.pk}, {"job_pk": fresh.pk}]
    lost.refresh_from_db()
    assert lost.enqueued_at is not None
    Job.objects.filter(pk=lost.pk).update(enqueued_at=timezone.now() - timedelta(minutes=11))
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        resent = services.job_resend_lost_messages()
        assert services.job_resend_lost_messages() == []
    assert [j.pk for j in resent] == [lost.pk] and sent == [{"job_pk": lost.pk}]
    lost.refresh_from_db()
    assert lost.status == "queued" and "sent again" in lost.log
    assert timezone.now() - lost.enqueued_at < timedelta(minutes=1)
    # The resent message runs the job once; the original, if it turns up after all, does nothing.
    assert job_run(job_pk=lost.pk).status == "succeeded"
    assert job_run(job_pk=lost.pk).status == "succeeded" and calls == [lost.pk]


def test_running_and_finished_jobs_are_never_resent(settings, monkeypatch, django_capture_on_commit_callbacks):
    settings.AMINOPET_JOB_RESEND_SECONDS = 60
    sent = []
    monkeypatch.setattr("apps.jobs.tasks.run_job.delay", lambda **kw: sent.append(kw))
    old = timezone.now() - timedelta(hours=1)
    for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED):
        job = JobFactory(kind="test_job", status=status, heartbeat_at=timezone.now())
        Job.objects.filter(pk=job.pk).update(enqueued_at=old)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.job_resend_lost_messages() == []
    assert sent == []


def test_reap_jobs_command_resends_lost_queued_messages(settings, capsys, monkeypatch):
    monkeypatch.setattr("apps.jobs.tasks.run_job.delay", lambda **kw: None)
    job = JobFactory(kind="test_job", status=JobStatus.QUEUED)
    Job.objects.filter(pk=job.pk).update(enqueued_at=timezone.now() - timedelta(hours=2))
    call_command("reap_jobs")
    out = capsys.readouterr().out
    assert f"job {job.pk} (test_job) still queued: message sent again" in out
