from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.registry.models import ModelVersion, Prediction
from apps.registry.selectors import model_metrics_visible


class ModelVersionSerializer(serializers.ModelSerializer):
    training_cohort = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    external_site = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    metrics = serializers.SerializerMethodField(
        help_text="CV and external-site metrics with 95% CIs; per-case rows (cases, y_true, prob, "
                  "thresholds) only for exams of the sites where the user holds a data role")

    n_exams_seen = serializers.SerializerMethodField(help_text="exams the training read (ids not listed)")

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "version", "task", "family", "algorithm", "threshold", "features", "config",
                  "metrics", "training_cohort", "external_site", "plots", "artifact_sha256", "parent",
                  "n_exams_seen", "created_at"]
        read_only_fields = fields

    def get_n_exams_seen(self, obj) -> int:
        return len(obj.exams_seen or [])

    @extend_schema_field({"type": "object", "additionalProperties": True})
    def get_metrics(self, obj) -> dict:
        request = self.context.get("request")
        return model_metrics_visible(getattr(request, "user", None), obj)


class PredictionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prediction
        fields = ["id", "model_version", "exam", "probability", "decision", "label", "threshold", "explanation",
                  "warnings", "maps", "created_at"]
        read_only_fields = fields
