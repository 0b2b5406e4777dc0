from django.contrib import admin
from django.forms.models import model_to_dict

from apps.audit.services import audit_record
from apps.cohorts.models import Cohort, Exam, Mask, Patient, Volume

LABEL_FIELDS = {
    Patient: ("idh", "codeletion_1p19q", "mgmt", "tertp", "who_type", "who_grade"),
    Exam: ("timepoint", "diagnosis", "diagnosis_basis"),
}


class AuditedAdmin(admin.ModelAdmin):
    """Label and QC changes made in the admin land in the audit trail with old and new values."""

    def save_model(self, request, obj, form, change):
        fields = [f for f in form.changed_data if f in form.fields]
        before = model_to_dict(type(obj).objects.get(pk=obj.pk), fields=fields) if change and obj.pk else {}
        super().save_model(request, obj, form, change)
        if fields:
            after = model_to_dict(obj, fields=fields)
            site = obj.site if isinstance(obj, Patient) else getattr(getattr(obj, "patient", None), "site", None)
            labels = set(LABEL_FIELDS.get(type(obj), ())) & set(fields)
            audit_record(action="labels.change" if labels else f"{obj._meta.model_name}.change", target=obj,
                         site=site, request=request,
                         details={"fields": fields, "before": _jsonable(before), "after": _jsonable(after),
                                  "via": "admin"})

    def save_formset(self, request, form, formset, change):
        """Inline rows (exams under a patient, volumes under an exam) are audited like forms."""
        changed = [(f.instance, list(f.changed_data)) for f in formset.forms
                   if f.has_changed() and f.instance.pk and not formset._should_delete_form(f)]
        before = {obj.pk: model_to_dict(type(obj).objects.get(pk=obj.pk), fields=fields) for obj, fields in changed}
        super().save_formset(request, form, formset, change)
        for obj, fields in changed:
            labels = set(LABEL_FIELDS.get(type(obj), ())) & set(fields)
            audit_record(action="labels.change" if labels else f"{obj._meta.model_name}.change", target=obj,
                         request=request, details={"fields": fields, "before": _jsonable(before[obj.pk]),
                                                   "after": _jsonable(model_to_dict(obj, fields=fields)),
                                                   "via": "admin inline"})

    def delete_model(self, request, obj):
        audit_record(action=f"{obj._meta.model_name}.delete", target=obj, request=request, details={"via": "admin"})
        super().delete_model(request, obj)


def _jsonable(values: dict) -> dict:
    return {k: v if isinstance(v, str | int | float | bool | type(None)) else str(v) for k, v in values.items()}


class ExamInline(admin.TabularInline):
    model = Exam
    extra = 0
    fields = ("code", "timepoint", "day", "diagnosis", "diagnosis_basis")


@admin.register(Patient)
class PatientAdmin(AuditedAdmin):
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
class ExamAdmin(AuditedAdmin):
    list_display = ("__str__", "timepoint", "day", "diagnosis", "diagnosis_basis")
    list_filter = ("timepoint", "diagnosis", "patient__site")
    search_fields = ("code", "patient__code")
    inlines = [VolumeInline]


@admin.register(Volume)
class VolumeAdmin(AuditedAdmin):
    list_display = ("exam", "kind", "space", "units", "qc_status")
    list_filter = ("kind", "space", "qc_status")
    readonly_fields = ("sha256", "shape", "voxel_size", "affine")


@admin.register(Mask)
class MaskAdmin(AuditedAdmin):
    list_display = ("exam", "kind", "space", "n_voxels", "volume_ml")
    list_filter = ("kind", "space")


@admin.register(Cohort)
class CohortAdmin(AuditedAdmin):
    list_display = ("name", "purpose", "created_at")
    filter_horizontal = ("exams",)
