"""Subregion maps of exams (WP2, issue 13): habitats, aggressiveness map and biopsy targets.

One :class:`SubregionMap` per (exam, mapping): ``key`` is ``"dynamic"`` (PET parameters only: TBR,
SUV relative to the tumour median, voxel TTP and slope) or ``"model-<id>"`` (the same plus a
foundation encoder's patch embeddings). Files are stored in the content-addressed store on the
prepared 2 mm common grid (MNI152 mm), so the exam viewer shows them over PET/MRI.
One :class:`SubregionCohortAnalysis` per (cohort, key): the habitat model's summary and the
association of the habitat signature with IDH, 1p/19q and WHO grade.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.cohorts.models import Cohort, Exam

#: Target methods in the order they are shown.
TARGET_METHODS = ("map", "suvmax", "earliest_ttp")
TARGET_WORDING = {
    "map": "Biopsy target (learned map)",
    "suvmax": "SUVmax hotspot (routine)",
    "earliest_ttp": "Earliest-TTP cluster (Kunz 2011)",
}


class SubregionMap(models.Model):
    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="subregion_maps")
    key = models.CharField(max_length=32, help_text='"dynamic" or "model-<id>" (encoder embeddings + dynamics)')
    model_version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.CASCADE,
                                      related_name="subregion_maps",
                                      help_text="foundation encoder whose embeddings were used (none: dynamics only)")
    cohort = models.ForeignKey(Cohort, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                               help_text="cohort the habitats and the marker model were fitted on")
    n_habitats = models.PositiveSmallIntegerField()
    margin_mm = models.FloatField(help_text="safety margin of the targets from the tumour border")
    voxel_mm = models.FloatField(help_text="grid the analysis ran on (maps are stored on the 2 mm common grid)")
    features = models.JSONField(default=list, help_text="voxel feature columns of the habitat model")
    habitats = models.FileField(max_length=255, help_text="int16 NIfTI, 0 outside the tumour, h+1 for habitat h")
    habitats_sha256 = models.CharField(max_length=64)
    aggressiveness = models.FileField(max_length=255, help_text="float32 NIfTI, the voxel aggressiveness map")
    aggressiveness_sha256 = models.CharField(max_length=64)
    region = models.FileField(max_length=255, help_text="uint8 NIfTI: the learned target's region")
    region_sha256 = models.CharField(max_length=64)
    seg = models.FileField(max_length=255, blank=True,
                           help_text="zip: DICOM SEG of the target region on the T1c series + that series")
    seg_sha256 = models.CharField(max_length=64, blank=True)
    signature = models.JSONField(default=dict, help_text="habitat fractions, SUVmean/SUVmax/TTP per habitat")
    habitat_summary = models.JSONField(default=list, help_text="[{habitat, fraction, suv_mean, ttp_min, words}]")
    targets = models.JSONField(default=dict, help_text="{method: {voxel, mni_mm, scanner_mm, margin_mm, ...}}")
    aggressiveness_source = models.CharField(max_length=300, help_text="what the map is (model, marker, n)")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["exam", "key"]
        constraints = [
            models.UniqueConstraint(fields=["exam", "key"], name="subregion_map_one_per_exam_key"),
            models.CheckConstraint(condition=(Q(key="dynamic") & Q(model_version__isnull=True))
                                   | (Q(key__startswith="model-") & Q(model_version__isnull=False)),
                                   name="subregion_map_key_matches_model"),
            models.CheckConstraint(condition=Q(n_habitats__gte=1) & Q(margin_mm__gte=0),
                                   name="subregion_map_k_margin_valid"),
        ]

    def __str__(self) -> str:
        return f"Subregions of {self.exam} ({self.key})"

    @property
    def label(self) -> str:
        return (f"{self.model_version} embeddings + PET dynamics" if self.model_version_id
                else "PET dynamics only (TBR, TTP, slope; no encoder)")


class SubregionCohortAnalysis(models.Model):
    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="subregion_analyses")
    key = models.CharField(max_length=32)
    model_version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.CASCADE,
                                      related_name="+")
    n_habitats = models.PositiveSmallIntegerField()
    criterion = models.JSONField(default=dict, help_text="{k: BIC} of the habitat model's candidates")
    habitat_means = models.JSONField(default=list, help_text="per habitat: mean of each PET feature")
    association = models.JSONField(default=list, help_text="rows of ml.subregions.signature.marker_association")
    n_exams = models.PositiveIntegerField()
    exams = models.JSONField(default=list, help_text="ids of the exams in the association (one per patient)")
    config = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cohort", "key"]
        constraints = [models.UniqueConstraint(fields=["cohort", "key"], name="subregion_analysis_one_per_key")]

    def __str__(self) -> str:
        return f"Habitat association in {self.cohort} ({self.key})"
