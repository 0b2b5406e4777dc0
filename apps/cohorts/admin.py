from django.contrib import admin

from apps.cohorts.models import Cohort, Exam, Mask, Patient, Volume


class ExamInline(admin.TabularInline):
    model = Exam
    extra = 0
    fields = ("code", "timepoint", "day", "diagnosis", "diagnosis_basis")


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("code", "site", "idh", "codeletion_1p19q", "who_type", "who_grade")
    list_filter = ("site", "idh", "codeletion_1p19q", "who_grade")
    search_fields = ("code",)
    inlines = [ExamInline]


class VolumeInline(admin.TabularInline):
    model = Volume
    extra = 0
    fields = ("kind", "space", "units", "shape", "qc_status", "sha256")
    readonly_fields = ("sha256",)


@admin.register(Exam)
class ExamAdmin(admin.ModelAdmin):
    list_display = ("__str__", "timepoint", "day", "diagnosis", "diagnosis_basis")
    list_filter = ("timepoint", "diagnosis", "patient__site")
    search_fields = ("code", "patient__code")
    inlines = [VolumeInline]


@admin.register(Volume)
class VolumeAdmin(admin.ModelAdmin):
    list_display = ("exam", "kind", "space", "units", "qc_status")
    list_filter = ("kind", "space", "qc_status")
    readonly_fields = ("sha256", "shape", "voxel_size", "affine")


@admin.register(Mask)
class MaskAdmin(admin.ModelAdmin):
    list_display = ("exam", "kind", "space", "n_voxels", "volume_ml")
    list_filter = ("kind", "space")


@admin.register(Cohort)
class CohortAdmin(admin.ModelAdmin):
    list_display = ("name", "purpose", "created_at")
    filter_horizontal = ("exams",)
