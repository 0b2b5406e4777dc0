"""REST API of the cohort: read-only browsing, QC updates, and imports queued as jobs."""
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, parsers, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Site
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
from apps.cohorts.services.labels import LabelsImportError, labels_import
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


class LabelsImportSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="labels TSV: participant_id, session_id and label columns")
    site = serializers.SlugRelatedField(slug_field="name", queryset=Site.objects.all())
    dry_run = serializers.BooleanField(default=False, help_text="check and report the changes without writing")


class LabelsImportAPI(APIView):
    """Add or correct outcomes of imported patients/exams of one site; synchronous (a labels file is small).

    200: the report (changes with old and new values, spellings read, ignored columns). 400: every
    problem of the file at once (``problems``); nothing was changed. 403: not a coordinator of the site.
    """

    permission_classes = [RolePermission]
    required_roles = MANAGE_ROLES
    parser_classes = [parsers.MultiPartParser]

    @extend_schema(request=LabelsImportSerializer, responses={200: dict, 400: dict})
    def post(self, request):
        serializer = LabelsImportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            report = labels_import(site=data["site"], content=data["file"].read(), source_name=data["file"].name,
                                   user=request.user, dry_run=data["dry_run"], request=request)
        except PermissionError as exc:
            raise PermissionDenied(str(exc)) from exc
        except LabelsImportError as exc:
            return Response({"detail": f"{len(exc.problems)} problem(s); nothing changed", "problems": exc.problems},
                            status=status.HTTP_400_BAD_REQUEST)
        return Response(report.to_dict(), status=status.HTTP_200_OK)
