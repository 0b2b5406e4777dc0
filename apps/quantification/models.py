"""Per-exam quantification results: the clinical parameter table, TACs, parametric maps, radiomics."""
from __future__ import annotations

from django.db import models
from django.db.models import Q

from apps.cohorts.models import Exam

CURVE_CLASSES = ("increasing", "plateau", "decreasing", "n/a")


class ExamQuantification(models.Model):
    """The parameters a physician reads for one exam (ratios to the reference region's mean)."""

    exam = models.OneToOneField(Exam, on_delete=models.CASCADE, related_name="quantification")
    suv_max = models.FloatField()
    suv_mean = models.FloatField()
    tbr_max = models.FloatField(help_text="Tumour SUVmax / background SUVmean")
    tbr_mean = models.FloatField()
    ts_max = models.FloatField(null=True, blank=True, help_text="Tumour SUVmax / striatum SUVmean")
    ts_mean = models.FloatField(null=True, blank=True)
    mtv_ml = models.FloatField(help_text="Metabolic tumour volume at the TBR threshold")
    ttp_min = models.FloatField(null=True, blank=True, help_text="Time to peak of the tumour TAC")
    slope_suv_per_h = models.FloatField(null=True, blank=True, help_text="Late slope of the tumour TAC")
    curve_class = models.CharField(max_length=12, default="n/a")
    background_source = models.CharField(max_length=12, help_text="given mask or mirrored (automatic)")
    voi_sources = models.JSONField(
        default=dict, blank=True,
        help_text='Which VOIs were supplied and which automatic: {"tumor": "supplied"|"automatic", '
                  '"striatum": "supplied"|"automatic"|"none", "background": "supplied"|"mirrored"}',
    )
    tacs = models.JSONField(default=dict, help_text="{region: {t_min: [...], suv: [...]}}")
    config = models.JSONField(default=dict)
    ttp_map = models.FileField(max_length=255, blank=True, help_text="NIfTI on the static PET grid")
    slope_map = models.FileField(max_length=255, blank=True)
    tac_plot = models.FileField(max_length=255, blank=True)
    lesion_mm = models.JSONField(
        null=True, blank=True,
        help_text="World position [x, y, z] (mm, RAS) of the tumour SUVmax voxel on the static PET grid; "
                  "where the viewer opens",
    )
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(curve_class__in=CURVE_CLASSES), name="quant_curve_class_valid"),
            models.CheckConstraint(condition=Q(suv_max__gte=0) & Q(mtv_ml__gte=0), name="quant_non_negative"),
        ]

    def __str__(self) -> str:
        return f"Quantification of {self.exam}"


class RadiomicsFeatures(models.Model):
    """IBSI features of one image type (suv, tbr, ttp, t1c...) of an exam's tumour VOI."""

    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="radiomics")
    image_type = models.CharField(max_length=16)
    features = models.JSONField()
    config = models.JSONField(default=dict)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["exam", "image_type"], name="radiomics_one_per_image")]

    def __str__(self) -> str:
        return f"{self.image_type} radiomics of {self.exam}"
