"""Model versions (config, metrics, plots, artefact) and their predictions per exam.

Deep models (issue 11) add: the checkpoint's sha256, the version a run started from (``parent``),
the exams it saw, and :class:`ExamEmbedding` (a foundation encoder's embeddings of one exam); a
pretrained encoder has the task ``pretraining`` and no decision threshold.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from apps.accounts.models import Site
from apps.cohorts.models import Cohort, Exam


class Task(models.TextChoices):
    PROGRESSION = "progression", "Progression vs treatment-related change"
    IDH = "idh", "IDH mutation"
    CODELETION = "codeletion", "1p/19q codeletion"
    PRETRAINING = "pretraining", "Self-supervised pretraining (no clinical task)"


class Family(models.TextChoices):
    CLASSICAL = "classical", "Radiomics + classical ML"
    RULE = "rule", "Clinical threshold rule"
    CNN = "cnn", "3D CNN from scratch"
    FOUNDATION = "foundation", "Foundation model (pretrained encoder or fine-tuned)"


class ModelVersion(models.Model):
    name = models.SlugField(max_length=100)
    version = models.PositiveIntegerField()
    task = models.CharField(max_length=16, choices=Task.choices)
    family = models.CharField(max_length=16, choices=Family.choices)
    algorithm = models.CharField(max_length=32, help_text="logreg, rf, svm, threshold...")
    config = models.JSONField(default=dict, help_text="Everything needed to reproduce the run with its seed")
    metrics = models.JSONField(default=dict, help_text="CV and external-site metrics with 95% CIs")
    threshold = models.FloatField(null=True, blank=True,
                                  help_text="Decision threshold on the probability (none for a pretrained encoder)")
    features = models.JSONField(default=list)
    training_cohort = models.ForeignKey(Cohort, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    external_site = models.ForeignKey(Site, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    artifact = models.FileField(max_length=255, help_text="model file or checkpoint (content-addressed store)")
    artifact_sha256 = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the artifact file")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children",
                               help_text="the version this one started from (initialisation, fine-tuning)")
    exams_seen = models.JSONField(default=list, blank=True,
                                  help_text="ids of the exams the training read (pretraining, fine-tuning)")
    plots = models.JSONField(default=dict, help_text="{name: stored PNG}")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="model_version_unique"),
            models.CheckConstraint(condition=Q(task__in=Task.values), name="model_task_valid"),
            models.CheckConstraint(condition=Q(family__in=Family.values), name="model_family_valid"),
            models.CheckConstraint(condition=Q(threshold__isnull=True) | (Q(threshold__gte=0) & Q(threshold__lte=1)),
                                   name="model_threshold_0_1"),
            # A clinical task decides with a threshold; a pretrained encoder decides nothing.
            models.CheckConstraint(condition=Q(task="pretraining", threshold__isnull=True)
                                   | (~Q(task="pretraining") & Q(threshold__isnull=False)),
                                   name="model_threshold_iff_clinical_task"),
            models.CheckConstraint(condition=~Q(task="pretraining") | Q(family="foundation"),
                                   name="model_pretraining_is_foundation"),
            models.CheckConstraint(condition=~Q(parent=F("pk")), name="model_parent_not_self"),
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
    maps = models.JSONField(
        default=dict, blank=True,
        help_text="{method: stored NIfTI on the common grid}: explanation maps (integrated gradients, occlusion...)",
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


class ExamEmbedding(models.Model):
    """A foundation encoder's representation of one exam: the global vector and the patch grid.

    ``pooled`` is the global embedding (E floats, in the row for search and probes); ``patches`` a
    stored ``.npz`` with ``patches`` (E, gx, gy, gz) float32 and ``patch_affine`` (4, 4: patch index
    -> MNI mm of the patch centre), the same geometry as ``grid_shape`` / ``patch_affine`` here.
    """

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="embeddings")
    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="embeddings")
    dim = models.PositiveIntegerField(help_text="embedding size E")
    pooled = models.JSONField(help_text="global embedding, E floats")
    patches = models.FileField(max_length=255, help_text=".npz with patches (E, gx, gy, gz) and patch_affine")
    patches_sha256 = models.CharField(max_length=64)
    grid_shape = models.JSONField(help_text="[gx, gy, gz] patches")
    patch_affine = models.JSONField(help_text="4x4, patch index -> MNI mm of the patch centre")
    voxel_mm = models.FloatField(help_text="common-grid voxel size the encoder read")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_version", "exam"]
        constraints = [
            models.UniqueConstraint(fields=["model_version", "exam"], name="embedding_one_per_exam"),
            models.CheckConstraint(condition=Q(dim__gt=0), name="embedding_dim_positive"),
            models.CheckConstraint(condition=Q(voxel_mm__gt=0), name="embedding_voxel_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.model_version} embedding of {self.exam}"
