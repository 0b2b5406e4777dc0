"""The Celery app. Workers: `celery -A config worker -l info` (add machines by adding workers).

Every worker also reaps the jobs of lost workers (apps.jobs.worker): at start and periodically.
"""
import os

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("aminopet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _reaper_start(**kwargs) -> None:
    from apps.jobs.worker import reaper_start

    reaper_start()


@worker_shutdown.connect
def _reaper_stop(**kwargs) -> None:
    from apps.jobs.worker import reaper_stop

    reaper_stop()
