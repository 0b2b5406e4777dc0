"""Model versions (config, metrics, plots, artefact) and their predictions per exam."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.accounts.models import Site
from apps.cohorts.models import Cohort, Exam


class Task(models.TextChoices):
    PROGRESSION = "progression", "Progression vs treatment-related change"
    IDH = "idh", "IDH mutation"
    CODELETION = "codeletion", "1p/19q codeletion"


class Family(models.TextChoices):
    CLASSICAL = "classical", "Radiomics + classical ML"
    RULE = "rule", "Clinical threshold rule"
    CNN = "cnn", "3D CNN from scratch"
    FOUNDATION = "foundation", "Fine-tuned foundation model"


class ModelVersion(models.Model):
    name = models.SlugField(max_length=100)
    version = models.PositiveIntegerField()
    task = models.CharField(max_length=16, choices=Task.choices)
    family = models.CharField(max_length=16, choices=Family.choices)
    algorithm = models.CharField(max_length=32, help_text="logreg, rf, svm, threshold...")
    config = models.JSONField(default=dict, help_text="Everything needed to reproduce the run with its seed")
    metrics = models.JSONField(default=dict, help_text="CV and external-site metrics with 95% CIs")
    threshold = models.FloatField(help_text="Decision threshold on the probability")
    features = models.JSONField(default=list)
    training_cohort = models.ForeignKey(Cohort, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    external_site = models.ForeignKey(Site, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    artifact = models.FileField(max_length=255)
    plots = models.JSONField(default=dict, help_text="{name: stored PNG}")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="model_version_unique"),
            models.CheckConstraint(condition=Q(task__in=Task.values), name="model_task_valid"),
            models.CheckConstraint(condition=Q(family__in=Family.values), name="model_family_valid"),
            models.CheckConstraint(condition=Q(threshold__gte=0) & Q(threshold__lte=1), name="model_threshold_0_1"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class Prediction(models.Model):
    """A model's output for one exam, with the explanation the aided reader arm shows."""

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="predictions")
    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="predictions")
    probability = models.FloatField()
    decision = models.BooleanField()
    label = models.CharField(max_length=32)
    threshold = models.FloatField()
    explanation = models.JSONField(default=dict, help_text="base value, output units, top SHAP contributions")
    warnings = models.JSONField(
        default=list, blank=True,
        help_text="[{code, message}]: where the exam lies outside the model's development data (unseen site, "
                  "feature out of range, frame schedule, voxel size, background method); shown with the prediction",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["exam", "model_version"]
        constraints = [
            models.UniqueConstraint(fields=["model_version", "exam"], name="prediction_one_per_exam"),
            models.CheckConstraint(condition=Q(probability__gte=0) & Q(probability__lte=1),
                                   name="prediction_probability_0_1"),
        ]

    def __str__(self) -> str:
        return f"{self.model_version} on {self.exam}: {self.probability:.2f}"
