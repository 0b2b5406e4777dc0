from django.apps import AppConfig


class RegistryConfig(AppConfig):
    """Model registry: model versions with config, metrics and plots; predictions with explanations."""

    name = "apps.registry"
    label = "registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.cohorts.panels import register_exam_panel
        from apps.registry import panels  # handlers.py: imported by apps.jobs on first use

        register_exam_panel(panels.predictions_panel)
