"""Reader-study pages: coordinators design and run studies, readers read their worklist.

Thin: they resolve what the user may see through ``reader_study.selectors`` (404 otherwise) and
change things only through ``reader_study.services`` (whose refusals become form errors, messages
or 403 pages). Readers reach cases only by study slug, case code and arm.
"""
from __future__ import annotations

import hashlib

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.views import View
from django.views.generic import TemplateView

from apps.accounts.models import Role
from apps.accounts.permissions import MANAGE_ROLES, RoleRequiredMixin, has_role, sites_for
from apps.audit.services import audit_record
from apps.cohorts.models import Cohort, Mask, Volume
from apps.cohorts.selectors import exams_visible
from apps.quantification.models import ExamQuantification
from reader_study import biopsy, selectors, services
from reader_study.explanations import heatmap_file
from reader_study.forms import QuestionnaireForm, ReadingForm, StudyForm
from reader_study.models import Arm, Design, Reading, StudyReader, StudyStatus
from reader_study.signing import (
    IMAGE_URL_MAX_AGE_S,
    ImageTokenError,
    deidentified_nifti,
    image_token_verify,
)

READER_ROLES = (Role.READER,)
LIST_ROLES = (Role.READER, Role.COORDINATOR, Role.STATISTICIAN)


def _results_url(study) -> str | None:
    try:
        return reverse("reader_study:results", args=[study.slug])
    except NoReverseMatch:  # the results pages are another part of the app
        return None


class StudyListView(RoleRequiredMixin, TemplateView):
    """Studies: those the user coordinates, reads, or analyses."""

    required_roles = LIST_ROLES
    template_name = "reader_study/study_list.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        user = self.request.user
        ctx["can_create"] = has_role(user, MANAGE_ROLES)
        ctx["managed"] = selectors.studies_managed(user) if has_role(user, MANAGE_ROLES) else []
        readers = StudyReader.objects.filter(user=user).exclude(study__status=StudyStatus.DRAFT).select_related("study")
        ctx["reading"] = [(r, *selectors.reader_progress(r)) for r in readers]
        if has_role(user, (Role.STATISTICIAN,)):
            ctx["analysed"] = [(s, _results_url(s)) for s in selectors.studies_for_results(user)
                               .exclude(status=StudyStatus.DRAFT)]
        return ctx


def _cohorts_for(user, *, including=None):
    """Cohorts with an exam of a site the user coordinates (plus ``including``, the study's own)."""
    q = Q(exams__patient__site__in=sites_for(user, MANAGE_ROLES))
    if including is not None:
        q |= Q(pk=including)
    return Cohort.objects.filter(q).distinct()


class StudyCreateView(RoleRequiredMixin, View):
    required_roles = MANAGE_ROLES
    template_name = "reader_study/study_form.html"

    def get(self, request):
        form = StudyForm(cohorts=_cohorts_for(request.user), initial={"washout_days": 28})
        return render(request, self.template_name, {"form": form, "creating": True})

    def post(self, request):
        form = StudyForm(request.POST, cohorts=_cohorts_for(request.user))
        if form.is_valid():
            d = form.cleaned_data
            try:
                with transaction.atomic():
                    study = services.study_create(
                        title=d["title"], question=d["question"], cohort=d["cohort"], user=request.user,
                        task=d["task"], design=d["design"], rating_scale=d["rating_scale"],
                        split_plot=d["split_plot"], cases_per_reader=d["cases_per_reader"],
                        washout_days=d["washout_days"], model_version=d["model_version"], seed=d["seed"],
                        questionnaire=d["questionnaire"], request=request)
                    services.study_cases_set(study=study, user=request.user, n_cases=d["n_cases"], request=request)
                    services.study_readers_set(study=study, user=request.user, readers=d["readers"], request=request)
            except services.StudyError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Study “{study.title}” created as a draft: check it, then open it.")
                return redirect("reader_study:detail", slug=study.slug)
        return render(request, self.template_name, {"form": form, "creating": True}, status=400)


class _ManagedMixin(RoleRequiredMixin):
    required_roles = MANAGE_ROLES

    def get_study(self, slug):
        return get_object_or_404(selectors.studies_managed(self.request.user), slug=slug)


class StudyEditView(_ManagedMixin, View):
    template_name = "reader_study/study_form.html"

    def _form(self, request, study, data=None):
        return StudyForm(data, cohorts=_cohorts_for(request.user, including=study.cohort_id),
                         initial=StudyForm.initial_from(study))

    def get(self, request, slug):
        study = self.get_study(slug)
        return render(request, self.template_name, {"form": self._form(request, study), "study": study,
                                                    "locked": services._design_locked(study)})

    def post(self, request, slug):
        study = self.get_study(slug)
        form = self._form(request, study, request.POST)
        if form.is_valid():
            d = form.cleaned_data
            changes = {k: d[k] for k in services.EDITABLE_FIELDS if k in d and k != "seed"}
            if d["seed"] is not None:
                changes["seed"] = d["seed"]
            cases_changed = d["cohort"] != study.cohort or d["n_cases"] or d["task"] != study.task \
                or d["model_version"] != study.model_version
            readers_changed = {u.pk for u in d["readers"]} != set(study.readers.values_list("user_id", flat=True))
            try:
                with transaction.atomic():
                    study = services.study_update(study=study, user=request.user, request=request, **changes)
                    if cases_changed or not study.cases.exists():
                        services.study_cases_set(study=study, user=request.user, n_cases=d["n_cases"],
                                                 request=request)
                    if readers_changed:
                        services.study_readers_set(study=study, user=request.user, readers=d["readers"],
                                                   request=request)
            except services.StudyError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, "Study updated.")
                return redirect("reader_study:detail", slug=study.slug)
        return render(request, self.template_name, {"form": form, "study": study,
                                                    "locked": services._design_locked(study)}, status=400)


class StudyDetailView(_ManagedMixin, TemplateView):
    template_name = "reader_study/study_detail.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        study = self.get_study(kwargs["slug"])
        visible = set(exams_visible(self.request.user).filter(study_cases__study=study).values_list("pk", flat=True))
        ctx.update(
            study=study, progress=selectors.study_progress(study), locked=services._design_locked(study),
            cases=[(c, c.exam_id if c.exam_id in visible else None) for c in study.cases.all()],
            n_positive=study.cases.filter(truth=True).count(),
            worklist_url=self.request.build_absolute_uri(reverse("reader_study:worklist", args=[study.slug])),
            results_url=_results_url(study),
        )
        return ctx


class StudyOpenView(_ManagedMixin, View):
    http_method_names = ["post"]
    action = "open"

    def post(self, request, slug):
        study = self.get_study(slug)
        service = services.study_open if self.action == "open" else services.study_close
        try:
            service(study=study, user=request.user, request=request)
        except services.StudyError as exc:
            messages.error(request, f"Not {'opened' if self.action == 'open' else 'closed'}: {exc}")
        else:
            messages.success(request, "Study opened: readers can start." if self.action == "open"
                             else "Study closed: no more readings.")
        return redirect("reader_study:detail", slug=study.slug)


# --- readers -----------------------------------------------------------------------------------

class _ReaderMixin(RoleRequiredMixin):
    required_roles = READER_ROLES


class WorklistView(_ReaderMixin, TemplateView):
    template_name = "reader_study/worklist.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        reader = selectors.study_reader_for(self.request.user, kwargs["slug"])
        done, total = selectors.reader_progress(reader)
        ctx.update(study=reader.study, reader=reader, sessions=selectors.worklist(reader), done=done, total=total,
                   next=selectors.next_reading(reader), finished=services.reader_finished(reader),
                   questionnaire_due=_questionnaire_due(reader))
        return ctx


def _questionnaire_due(reader: StudyReader) -> bool:
    config = reader.study.questionnaire or {}
    wanted = config.get("sus") or config.get("trust_items")
    return bool(wanted) and services.reader_finished(reader) and not hasattr(reader, "questionnaire")


class NextCaseView(_ReaderMixin, View):
    """Continue: the next reading in the stored order, else the questionnaire, else the worklist."""

    def get(self, request, slug):
        reader = selectors.study_reader_for(request.user, slug)
        nxt = selectors.next_reading(reader) if reader.study.status == StudyStatus.OPEN else None
        if nxt is not None:
            return redirect("reader_study:case", slug=slug, code=nxt[0], arm=nxt[1])
        if _questionnaire_due(reader):
            return redirect("reader_study:questionnaire", slug=slug)
        return redirect("reader_study:worklist", slug=slug)


def _refused(request, reader, reason: str, status: int = 403):
    return render(request, "reader_study/refused.html", {"study": reader.study, "reason": reason}, status=status)


class CaseView(_ReaderMixin, View):
    """The case page: viewer + answer form; the AI only in the aided arm, once it may be shown."""

    template_name = "reader_study/case.html"

    def _context(self, reader, assignment, arm, form, *, refusal_checked: bool = False):
        study = reader.study
        case = assignment.case
        position, n = selectors.reading_position(assignment)
        done, total = selectors.reader_progress(reader)
        return {
            "study": study, "reader": reader, "case": case, "arm": arm, "arm_label": Arm(arm).label,
            "sequential": study.design == Design.SEQUENTIAL, "position": position, "n_cases": n,
            "session": assignment.session, "done": done, "total": total, "form": form,
            "viewer_config": selectors.case_viewer_config(reader, case, arm),
            "ai": selectors.ai_panel(reader, case, arm, assignment=assignment, refusal_checked=refusal_checked),
            "biopsy": study.task == "biopsy_target",
        }

    def _open(self, request, slug, code, arm):
        return selectors.reader_assignment_for(request.user, slug, code, arm)

    def get(self, request, slug, code, arm):
        reader, assignment = self._open(request, slug, code, arm)
        readings = services.case_readings(reader, assignment.case)  # both arms, one query
        existing = readings.get(arm)
        if existing is not None and existing.is_submitted:
            messages.info(request, f"Case {code} ({Arm(arm).label.lower()}) is already answered and locked.")
            return redirect("reader_study:next", slug=slug)
        try:
            services.reading_open(assignment=assignment, arm=arm, user=request.user, request=request,
                                  readings=readings, study_status=reader.study.status)
        except services.ReadingLocked as exc:
            return _refused(request, reader, str(exc))
        form = ReadingForm(study=reader.study, arm=arm)
        return render(request, self.template_name,
                      self._context(reader, assignment, arm, form, refusal_checked=True))

    def post(self, request, slug, code, arm):
        reader, assignment = self._open(request, slug, code, arm)
        reading = Reading.objects.filter(reader=reader, case=assignment.case, arm=arm).first()
        if reading is None:  # answers only to a case opened on the server (its opened_at)
            return _refused(request, reader, "open the case before answering it")
        if reading.is_submitted:
            messages.info(request, f"Case {code} was already answered; answers are locked once submitted.")
            return redirect("reader_study:next", slug=slug)
        if services.arm_refusal(assignment=assignment, arm=arm):
            return _refused(request, reader, services.arm_refusal(assignment=assignment, arm=arm))
        form = ReadingForm(request.POST, study=reader.study, arm=arm)
        if form.is_valid():
            try:
                services.reading_submit(reading=reading, answer=form.answer(), user=request.user,
                                        active_seconds=form.cleaned_data.get("active_seconds"), request=request)
            except services.ReadingLocked as exc:
                messages.info(request, str(exc))
                return redirect("reader_study:next", slug=slug)
            except services.StudyError as exc:
                form.add_error(None, str(exc))
            else:
                if reader.study.design == Design.SEQUENTIAL and arm == Arm.UNAIDED:
                    messages.success(request, f"Answer for {code} locked. Now the same case with the AI.")
                    return redirect("reader_study:case", slug=slug, code=code, arm=Arm.AIDED)
                messages.success(request, f"Answer for {code} saved.")
                return redirect("reader_study:next", slug=slug)
        return render(request, self.template_name, self._context(reader, assignment, arm, form), status=400)


class QuestionnaireView(_ReaderMixin, View):
    template_name = "reader_study/questionnaire.html"

    def get(self, request, slug):
        reader = selectors.study_reader_for(request.user, slug)
        if not _questionnaire_due(reader):
            return redirect("reader_study:worklist", slug=slug)
        return render(request, self.template_name, {"study": reader.study, "form": QuestionnaireForm(study=reader.study)})

    def post(self, request, slug):
        reader = selectors.study_reader_for(request.user, slug)
        form = QuestionnaireForm(request.POST, study=reader.study)
        if not _questionnaire_due(reader):
            return redirect("reader_study:worklist", slug=slug)
        if form.is_valid():
            try:
                services.questionnaire_submit(reader=reader, answers=form.answers(), user=request.user,
                                              request=request)
            except services.StudyError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, "Thank you: the questionnaire is saved and your part of the study is done.")
                return redirect("reader_study:worklist", slug=slug)
        return render(request, self.template_name, {"study": reader.study, "form": form}, status=400)


class ImageView(_ReaderMixin, View):
    """A de-identified NIfTI through a signed, expiring URL, for the reader the URL was signed for."""

    def get(self, request, token):
        try:
            grant = image_token_verify(token)
        except ImageTokenError as exc:
            raise PermissionDenied(str(exc)) from exc
        reader = (StudyReader.objects.select_related("study").filter(pk=grant.reader_id, user=request.user)
                  .exclude(study__status=StudyStatus.DRAFT).first())
        if reader is None:
            raise Http404("no such image")
        case = reader.study.cases.filter(pk=grant.case_id).select_related("exam").first()
        if case is None:
            raise Http404("no such image")
        assignment = selectors.assignment_for(reader, case.code, grant.arm)
        reason = services.arm_refusal(assignment=assignment, arm=grant.arm)
        if reason:
            raise PermissionDenied(reason)
        name, sha = _image_file(case, grant)
        path = deidentified_nifti(name=name, sha256=sha)
        audit_record(action="study.image", actor=request.user, target=case, site=case.exam.patient.site_id,
                     details={"study": reader.study.slug, "case": case.code, "arm": grant.arm, "what": grant.what},
                     request=request)
        response = FileResponse(open(path, "rb"), content_type="application/octet-stream",
                                filename=f"{case.code}-{grant.what.replace(':', '-')}.nii.gz")
        response["Cache-Control"] = f"private, max-age={IMAGE_URL_MAX_AGE_S}"
        return response


def _image_file(case, grant) -> tuple[str, str]:
    """(stored name, content key) of what a grant names, or 404."""
    exam, what = case.exam, grant.what
    if what in selectors.READER_VOLUME_KINDS:
        volume = Volume.objects.filter(exam=exam, kind=what, space="common").first()
        if volume is not None:
            return volume.file.name, volume.sha256
    elif what.startswith("mask:") and what[5:] in selectors.READER_MASK_KINDS:
        mask = Mask.objects.filter(exam=exam, kind=what[5:], space="common").first()
        if mask is not None:
            return mask.file.name, mask.sha256
    elif what.startswith("map:") and what[4:] in selectors.READER_MAPS:
        quant = ExamQuantification.objects.filter(exam=exam).first()
        field = getattr(quant, f"{what[4:]}_map", None) if quant else None
        if field:
            return field.name, hashlib.sha256(field.name.encode()).hexdigest()
    elif what == "heatmap" and grant.arm == Arm.AIDED:
        prediction = selectors.ai_prediction(case.study, case)
        stored = heatmap_file(prediction)
        if stored:
            return stored, hashlib.sha256(stored.encode()).hexdigest()
    elif what == biopsy.AGGRESSIVENESS and grant.arm == Arm.AIDED:
        stored = biopsy.aggressiveness_file(case)
        if stored:
            return stored
    raise Http404("no such image")
