from drf_spectacular.utils import extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from apps.accounts.permissions import ANY_ROLE, RolePermission
from apps.jobs.selectors import jobs_visible
from apps.jobs.serializers import JobSerializer
from apps.jobs.services import JobError, job_retry


class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = JobSerializer
    permission_classes = [RolePermission]
    required_roles = ANY_ROLE

    def get_queryset(self):
        return jobs_visible(self.request.user)

    @extend_schema(request=None, responses=JobSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        try:
            job = job_retry(job=self.get_object())
        except JobError as exc:
            raise ValidationError(str(exc)) from exc
        return Response(JobSerializer(job).data)
