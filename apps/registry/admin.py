"""Model versions and predictions are read-only in the admin: they come from training and inference
jobs only (the audit trail and the registry must agree with what the models produced)."""
from django.contrib import admin

from apps.registry.models import ExamEmbedding, ModelVersion, Prediction


class _ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(_ReadOnlyAdmin):
    list_display = ("name", "version", "task", "family", "algorithm", "created_at")
    list_filter = ("task", "family")


@admin.register(Prediction)
class PredictionAdmin(_ReadOnlyAdmin):
    list_display = ("model_version", "exam", "probability", "label")
    list_filter = ("model_version",)


@admin.register(ExamEmbedding)
class ExamEmbeddingAdmin(_ReadOnlyAdmin):
    list_display = ("model_version", "exam", "dim", "grid_shape", "created_at")
    list_filter = ("model_version",)
