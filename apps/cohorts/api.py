"""REST API of the cohort: read-only browsing, QC updates, and imports queued as jobs."""
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, parsers, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import DATA_ROLES, MANAGE_ROLES, RolePermission
from apps.cohorts import selectors
from apps.cohorts.serializers import (
    BidsImportSerializer,
    CohortSerializer,
    DicomImportSerializer,
    ExamSerializer,
    PatientSerializer,
    SiteSerializer,
    VolumeSerializer,
)
from apps.cohorts.services.qc import volume_qc_set
from apps.cohorts.services.uploads import import_submit
from apps.jobs.serializers import JobSerializer


class _Scoped(viewsets.GenericViewSet):
    permission_classes = [RolePermission]
    required_roles = DATA_ROLES
    selector = None

    def get_queryset(self):
        return type(self).selector(self.request.user)


class SiteViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _Scoped):
    serializer_class = SiteSerializer
    selector = staticmethod(selectors.sites_visible)
    lookup_field = "name"


class PatientViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _Scoped):
    serializer_class = PatientSerializer
    selector = staticmethod(selectors.patients_visible)


class ExamViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _Scoped):
    serializer_class = ExamSerializer
    selector = staticmethod(selectors.exams_visible)


class VolumeViewSet(mixins.RetrieveModelMixin, mixins.UpdateModelMixin, _Scoped):
    """PATCH qc_status / qc_note: coordinators of the volume's site."""

    serializer_class = VolumeSerializer
    selector = staticmethod(selectors.volumes_visible)
    write_roles = MANAGE_ROLES
    http_method_names = ["get", "patch", "head", "options"]

    def perform_update(self, serializer):
        volume, data = serializer.instance, serializer.validated_data
        serializer.instance = volume_qc_set(
            volume=volume, status=data.get("qc_status", volume.qc_status),
            note=data.get("qc_note", volume.qc_note), user=self.request.user, request=self.request,
        )


class CohortViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _Scoped):
    serializer_class = CohortSerializer
    selector = staticmethod(selectors.cohorts_visible)
    lookup_field = "name"


class _ImportAPI(APIView):
    permission_classes = [RolePermission]
    required_roles = MANAGE_ROLES
    parser_classes = [parsers.MultiPartParser]
    kind = ""
    serializer_class = BidsImportSerializer

    def params(self, data: dict) -> dict:
        raise NotImplementedError

    def post(self, request):
        serializer = self.serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        job = import_submit(kind=self.kind, uploaded=data["archive"], params=self.params(data),
                            user=request.user, site=data.get("site"))
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class BidsImportAPI(_ImportAPI):
    kind = "import_bids"
    serializer_class = BidsImportSerializer

    @extend_schema(request=BidsImportSerializer, responses={202: JobSerializer})
    def post(self, request):
        return super().post(request)

    def params(self, data):
        return {"site": data["site"].name if data.get("site") else None, "cohort": data.get("cohort") or None}


class DicomImportAPI(_ImportAPI):
    kind = "import_dicom"
    serializer_class = DicomImportSerializer

    @extend_schema(request=DicomImportSerializer, responses={202: JobSerializer})
    def post(self, request):
        return super().post(request)

    def params(self, data):
        return {"site": data["site"].name, "patient": data["patient"], "exam": data["exam"],
                "timepoint": data["timepoint"], "day": data["day"]}
