from django.apps import AppConfig


class CohortsConfig(AppConfig):
    name = "apps.cohorts"
    label = "cohorts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.cohorts import handlers  # noqa: F401  (registers job handlers)
