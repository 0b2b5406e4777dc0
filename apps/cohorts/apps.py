from django.apps import AppConfig


class CohortsConfig(AppConfig):
    name = "apps.cohorts"
    label = "cohorts"
    default_auto_field = "django.db.models.BigAutoField"

    # Job handlers (handlers.py) are imported by apps.jobs on first use, not here: start-up stays light.

    def ready(self) -> None:
        from apps.cohorts.panels import register_exam_panel
        from apps.cohorts.registration_panel import registration_panel

        # below the other panels: the viewer stays above the fold
        register_exam_panel(registration_panel, order=100)
