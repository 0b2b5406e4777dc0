from django.apps import AppConfig


class CohortsConfig(AppConfig):
    name = "apps.cohorts"
    label = "cohorts"
    default_auto_field = "django.db.models.BigAutoField"

    # Job handlers (handlers.py) are imported by apps.jobs on first use, not here: start-up stays light.
