"""What every Celery worker does besides running tasks: reap the jobs of lost workers.

Connected to Celery's ``worker_ready`` in ``config/celery.py``: at start-up (a restarted worker
finds the job its predecessor was running when it was killed) and then every
``settings.AMINOPET_JOB_REAP_SECONDS`` from a daemon thread, so a job of a worker that died
is requeued or failed within minutes without a separate beat process.
"""
from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import DatabaseError, connections

from apps.jobs.services import handlers_load, job_reap_stale, job_resend_lost_messages

logger = logging.getLogger(__name__)
_reaper: Reaper | None = None


class Reaper(threading.Thread):
    def __init__(self, *, interval: float) -> None:
        super().__init__(name="aminopet-job-reaper", daemon=True)
        self.interval = interval
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            try:
                reaped = job_reap_stale()
                if reaped:
                    logger.warning("reaped jobs of lost workers: %s", [job.pk for job in reaped])
                resent = job_resend_lost_messages()
                if resent:
                    logger.warning("queued jobs whose message was sent again: %s", [job.pk for job in resent])
            except DatabaseError as exc:  # database away for a moment: try again next round
                logger.warning("job reaper: %s", exc)
            finally:
                connections.close_all()  # this thread's connections only
            if self._done.wait(self.interval):
                return

    def stop(self) -> None:
        self._done.set()


def reaper_start() -> Reaper:
    """Start the reaper thread (once per process) and load the job handlers for the first task."""
    global _reaper
    if _reaper is None or not _reaper.is_alive():
        _reaper = Reaper(interval=settings.AMINOPET_JOB_REAP_SECONDS)
        _reaper.start()
    handlers_load()
    return _reaper


def reaper_stop() -> None:
    if _reaper is not None:
        _reaper.stop()
