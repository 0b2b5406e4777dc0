from django.contrib import admin

from apps.registry.models import ModelVersion, Prediction


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "task", "family", "algorithm", "created_at")
    list_filter = ("task", "family")
    readonly_fields = ("config", "metrics", "plots")


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = ("model_version", "exam", "probability", "label")
    list_filter = ("model_version",)
