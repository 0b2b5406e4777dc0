from django.urls import reverse
from rest_framework import serializers

from apps.accounts.models import Site
from apps.cohorts.models import Cohort, Exam, Mask, Patient, Timepoint, Volume
from apps.cohorts.selectors import exams_visible


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["id", "name", "display_name", "country"]


class PatientSerializer(serializers.ModelSerializer):
    site = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Patient
        fields = ["id", "site", "code", "sex", "age", "idh", "codeletion_1p19q", "mgmt", "tertp", "who_type", "who_grade"]


class VolumeSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Volume
        fields = ["id", "kind", "space", "shape", "voxel_size", "affine", "units", "suv_factor",
                  "frame_start_s", "frame_duration_s", "sha256", "qc_status", "qc_note", "url", "thumbnail_url"]
        read_only_fields = [f for f in fields if f not in ("qc_status", "qc_note")]

    def get_url(self, obj) -> str:
        return reverse("cohorts:volume-file", args=[obj.pk])

    def get_thumbnail_url(self, obj) -> str | None:
        return reverse("cohorts:volume-thumbnail", args=[obj.pk]) if obj.thumbnail else None


class MaskSerializer(serializers.ModelSerializer):
    grid = serializers.PrimaryKeyRelatedField(read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Mask
        fields = ["id", "kind", "space", "grid", "n_voxels", "volume_ml", "sha256", "url"]

    def get_url(self, obj) -> str:
        return reverse("cohorts:mask-file", args=[obj.pk])


class ExamSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="patient.site.name", read_only=True)
    patient_code = serializers.CharField(source="patient.code", read_only=True)
    volumes = VolumeSerializer(many=True, read_only=True)
    masks = MaskSerializer(many=True, read_only=True)

    class Meta:
        model = Exam
        fields = ["id", "site", "patient", "patient_code", "code", "timepoint", "day", "tracer", "diagnosis",
                  "diagnosis_basis", "volumes", "masks"]


class CohortSerializer(serializers.ModelSerializer):
    exams = serializers.SerializerMethodField(help_text="Ids of the cohort's exams at the sites where the user holds a data role")

    class Meta:
        model = Cohort
        fields = ["id", "name", "purpose", "description", "exams"]

    def get_exams(self, obj) -> list[int]:
        # A cohort spans sites; its exam ids follow the exams' site scoping like every exam read.
        user = getattr(self.context.get("request"), "user", None)
        visible = exams_visible(user).prefetch_related(None).filter(cohorts=obj)
        return list(visible.order_by("pk").values_list("pk", flat=True))


class BidsImportSerializer(serializers.Serializer):
    archive = serializers.FileField(help_text="zip of the BIDS dataset")
    site = serializers.SlugRelatedField(slug_field="name", queryset=Site.objects.all(), required=False, allow_null=True)
    cohort = serializers.SlugField(required=False, allow_blank=True)

    def validate_archive(self, value):
        if not value.name.lower().endswith(".zip"):
            raise serializers.ValidationError("expected a .zip archive")
        return value


class DicomImportSerializer(BidsImportSerializer):
    site = serializers.SlugRelatedField(slug_field="name", queryset=Site.objects.all())
    patient = serializers.SlugField(max_length=64)
    exam = serializers.SlugField(max_length=64)
    timepoint = serializers.ChoiceField(choices=Timepoint.choices, default=Timepoint.INITIAL_DIAGNOSIS)
    day = serializers.IntegerField(min_value=0, default=0)
    cohort = None
