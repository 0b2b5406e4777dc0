"""The Celery app. Workers: `celery -A config worker -l info` (add machines by adding workers)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("aminopet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
