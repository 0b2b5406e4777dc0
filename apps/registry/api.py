from rest_framework import mixins, viewsets

from apps.accounts.permissions import DATA_ROLES, MODEL_ROLES, RolePermission, sites_for
from apps.registry.models import ModelVersion, Prediction
from apps.registry.serializers import ModelVersionSerializer, PredictionSerializer


class ModelVersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ModelVersionSerializer
    permission_classes = [RolePermission]
    required_roles = MODEL_ROLES
    queryset = ModelVersion.objects.select_related("training_cohort", "external_site")


class PredictionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Predictions of exams the user may see; filter with ?exam=ID or ?model=ID."""

    serializer_class = PredictionSerializer
    permission_classes = [RolePermission]
    required_roles = DATA_ROLES

    def get_queryset(self):
        qs = Prediction.objects.filter(exam__patient__site__in=sites_for(self.request.user, DATA_ROLES))
        for param, field in (("exam", "exam_id"), ("model", "model_version_id")):
            value = self.request.query_params.get(param)
            if value and value.isdigit():
                qs = qs.filter(**{field: int(value)})
        return qs
