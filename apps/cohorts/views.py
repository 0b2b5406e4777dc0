"""Cohort pages for coordinators and researchers: thin, they call selectors and services."""
from __future__ import annotations

import base64

from django.contrib import messages
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import DetailView, FormView, ListView

from apps.accounts.permissions import (
    DATA_ROLES,
    MANAGE_ROLES,
    RoleRequiredMixin,
    can_manage_site,
    sites_for,
)
from apps.audit.services import audit_record
from apps.cohorts import selectors
from apps.cohorts.forms import BidsUploadForm, DicomUploadForm, LabelsUploadForm, QcForm
from apps.cohorts.panels import exam_panels
from apps.cohorts.services.labels import LabelsImportError, labels_import
from apps.cohorts.services.qc import volume_qc_set
from apps.cohorts.services.store import media_path
from apps.cohorts.services.uploads import import_submit


class SiteListView(RoleRequiredMixin, ListView):
    required_roles = DATA_ROLES
    template_name = "cohorts/site_list.html"
    context_object_name = "sites"

    def get_queryset(self):
        return selectors.sites_visible(self.request.user)


class SiteDetailView(RoleRequiredMixin, DetailView):
    required_roles = DATA_ROLES
    template_name = "cohorts/site_detail.html"
    slug_field = "name"
    slug_url_kwarg = "name"
    context_object_name = "site"

    def get_queryset(self):
        return selectors.sites_visible(self.request.user)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["patients"] = (
            selectors.patients_visible(self.request.user).filter(site=self.object).prefetch_related("exams")
        )
        ctx["can_manage"] = can_manage_site(self.request.user, self.object)
        return ctx


class PatientDetailView(RoleRequiredMixin, DetailView):
    required_roles = DATA_ROLES
    template_name = "cohorts/patient_detail.html"
    context_object_name = "patient"

    def get_queryset(self):
        return selectors.patients_visible(self.request.user).prefetch_related("exams__volumes")


class ExamDetailView(RoleRequiredMixin, DetailView):
    required_roles = DATA_ROLES
    template_name = "cohorts/exam_detail.html"
    context_object_name = "exam"

    def get_queryset(self):
        return selectors.exams_visible(self.request.user)

    def get(self, request, *args, **kwargs):
        response = super().get(request, *args, **kwargs)
        audit_record(action="exam.view", target=self.object, site=self.object.patient.site_id, request=request)
        return response

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        vols = list(self.object.volumes.all())
        ctx["native_volumes"] = [v for v in vols if v.space == "native"]
        ctx["common_volumes"] = [v for v in vols if v.space == "common"]
        ctx["masks"] = [m for m in self.object.masks.all() if m.space == "native"]
        ctx["can_manage"] = can_manage_site(self.request.user, self.object.patient.site)
        ctx["qc_form"] = QcForm()
        ctx["panels"] = exam_panels(self.object, self.request.user)
        return ctx


class VolumeQcView(RoleRequiredMixin, View):
    """POST: a coordinator sets a volume's QC status."""

    required_roles = MANAGE_ROLES
    http_method_names = ["post"]

    def post(self, request, pk):
        volume = get_object_or_404(selectors.volumes_visible(request.user), pk=pk)
        if not can_manage_site(request.user, volume.exam.patient.site):
            raise Http404
        form = QcForm(request.POST, instance=volume)
        if form.is_valid():
            volume = volume_qc_set(volume=volume, status=form.cleaned_data["qc_status"],
                                   note=form.cleaned_data["qc_note"], user=request.user, request=request)
            messages.success(request, f"QC of {volume.kind} set to {volume.qc_status}.")
        else:
            messages.error(request, f"QC not changed: {form.errors.as_text()}")
        return redirect("cohorts:exam", pk=volume.exam_id)


class VolumeFileView(RoleRequiredMixin, View):
    """The NIfTI file or QC thumbnail of a volume, for the viewer, checked like the exam page."""

    required_roles = DATA_ROLES
    what = "file"

    def get(self, request, pk):
        volume = get_object_or_404(selectors.volumes_visible(request.user), pk=pk)
        field = getattr(volume, self.what)
        if not field:
            raise Http404("no such file")
        if self.what == "file":
            audit_record(action="volume.download", target=volume, site=volume.exam.patient.site_id, request=request)
        return FileResponse(open(media_path(field.name), "rb"), filename=field.name.rsplit("/", 1)[-1])


class MaskFileView(RoleRequiredMixin, View):
    required_roles = DATA_ROLES

    def get(self, request, pk):
        mask = get_object_or_404(selectors.masks_visible(request.user).select_related("exam__patient"), pk=pk)
        audit_record(action="mask.download", target=mask, site=mask.exam.patient.site_id, request=request)
        return FileResponse(open(media_path(mask.file.name), "rb"), filename=mask.file.name.rsplit("/", 1)[-1])


class CohortListView(RoleRequiredMixin, ListView):
    required_roles = DATA_ROLES
    template_name = "cohorts/cohort_list.html"
    context_object_name = "cohorts"

    def get_queryset(self):
        return selectors.cohorts_visible(self.request.user)


class CohortDetailView(RoleRequiredMixin, DetailView):
    required_roles = DATA_ROLES
    template_name = "cohorts/cohort_detail.html"
    slug_field = "name"
    slug_url_kwarg = "name"
    context_object_name = "cohort"

    def get_queryset(self):
        return selectors.cohorts_visible(self.request.user)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["exams"] = selectors.exams_visible(self.request.user).filter(cohorts=self.object)
        return ctx


class _ImportView(RoleRequiredMixin, FormView):
    required_roles = MANAGE_ROLES
    kind = ""

    def get_form_kwargs(self):
        return super().get_form_kwargs() | {"sites": sites_for(self.request.user, MANAGE_ROLES)}

    def params(self, data: dict) -> dict:
        raise NotImplementedError

    def form_valid(self, form):
        data = form.cleaned_data
        try:
            job = import_submit(kind=self.kind, uploaded=data["archive"], params=self.params(data),
                                user=self.request.user, site=data.get("site"))
        except PermissionError as exc:
            form.add_error(None, str(exc))
            return self.form_invalid(form)
        messages.success(self.request, f"Upload received; import job {job.pk} queued.")
        return redirect("jobs:detail", pk=job.pk)


class BidsImportView(_ImportView):
    template_name = "cohorts/import_bids.html"
    form_class = BidsUploadForm
    kind = "import_bids"

    def params(self, data):
        return {"site": data["site"].name if data.get("site") else None, "cohort": data.get("cohort") or None}


class DicomImportView(_ImportView):
    template_name = "cohorts/import_dicom.html"
    form_class = DicomUploadForm
    kind = "import_dicom"

    def params(self, data):
        return {"site": data["site"].name, "patient": data["patient"], "exam": data["exam"],
                "timepoint": data["timepoint"], "day": data["day"]}


class LabelsImportView(RoleRequiredMixin, FormView):
    """Labels that arrive after the images: upload, preview the changes (dry run), confirm."""

    required_roles = MANAGE_ROLES
    template_name = "cohorts/import_labels.html"
    form_class = LabelsUploadForm

    def get_form_kwargs(self):
        return super().get_form_kwargs() | {"sites": sites_for(self.request.user, MANAGE_ROLES)}

    def form_valid(self, form):
        data = form.cleaned_data
        confirm = bool(data.get("confirm"))
        try:
            report = labels_import(site=data["site"], content=data["raw"], source_name=data["source_name"],
                                   user=self.request.user, dry_run=not confirm, request=self.request)
        except PermissionError as exc:
            form.add_error(None, str(exc))
            return self.form_invalid(form)
        except LabelsImportError as exc:
            return self.render_to_response(self.get_context_data(form=form, problems=exc.problems,
                                                                 source_name=data["source_name"]))
        confirm_form = None
        if not confirm and report.changes:
            confirm_form = LabelsUploadForm(sites=sites_for(self.request.user, MANAGE_ROLES), initial={
                "site": data["site"].name, "content": base64.b64encode(data["raw"]).decode(),
                "source_name": data["source_name"], "confirm": True})
        if confirm:
            messages.success(self.request, report.message())
        return self.render_to_response(self.get_context_data(
            form=self.get_form_class()(sites=sites_for(self.request.user, MANAGE_ROLES)),
            report=report, confirm_form=confirm_form))
