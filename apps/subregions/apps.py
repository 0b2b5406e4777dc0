from django.apps import AppConfig


class SubregionsConfig(AppConfig):
    """WP2 on the platform: habitats, aggressiveness maps and biopsy targets per exam (ml.subregions)."""

    name = "apps.subregions"
    label = "subregions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps.cohorts.panels import register_exam_panel
        from apps.quantification.panels import register_exam_page_layers
        from apps.subregions import panels  # handlers.py: imported by apps.jobs on first use

        register_exam_panel(panels.subregions_panel, order=10)
        register_exam_page_layers(panels.subregion_layers)
