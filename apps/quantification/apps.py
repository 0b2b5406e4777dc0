from django.apps import AppConfig


class QuantificationConfig(AppConfig):
    """PET quantification of exams (static, dynamic, parametric maps, radiomics) on ml.quant."""

    name = "apps.quantification"
    label = "quantification"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.cohorts.panels import register_exam_panel
        from apps.quantification import panels  # handlers.py: imported by apps.jobs on first use

        register_exam_panel(panels.quantification_panel)
        from apps.quantification.explanation_maps import explanation_layers
        from apps.quantification.panels import register_exam_page_layers

        register_exam_page_layers(explanation_layers)  # WP3 explanation maps, exam page only
