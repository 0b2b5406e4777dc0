from rest_framework import serializers

from apps.registry.models import ModelVersion, Prediction


class ModelVersionSerializer(serializers.ModelSerializer):
    training_cohort = serializers.SlugRelatedField(slug_field="name", read_only=True)
    external_site = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "version", "task", "family", "algorithm", "threshold", "features", "config",
                  "metrics", "training_cohort", "external_site", "plots", "created_at"]
        read_only_fields = fields


class PredictionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prediction
        fields = ["id", "model_version", "exam", "probability", "decision", "label", "threshold", "explanation",
                  "created_at"]
        read_only_fields = fields
