from django.apps import AppConfig


class ReaderStudyConfig(AppConfig):
    name = "reader_study"
    verbose_name = "Reader study"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from apps.cohorts.models import Exam, Mask, Volume
        from apps.quantification.models import ExamQuantification
        from apps.registry.models import ModelVersion
        from apps.subregions.models import SubregionMap
        from reader_study.selectors import cached_data_changed

        # SubregionMap: the aided arm of a biopsy study shows the map's AI target
        for model in (Exam, Volume, Mask, ExamQuantification, ModelVersion, SubregionMap):
            for name, signal in (("save", post_save), ("delete", post_delete)):
                signal.connect(cached_data_changed, sender=model, dispatch_uid=f"reader_study:{model.__name__}:{name}")
