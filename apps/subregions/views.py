"""Downloads of an exam's subregion files and the cohort's habitat-marker association table.

Scoped like the exam page: a user sees the maps of their sites' exams (``exams_visible``); every
download is audited (``subregions.download``). The association table is shown for a cohort the user
can see; it holds only aggregate statistics over the cohort's exams.
"""
from __future__ import annotations

import csv
import io

from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.views import View
from django.views.generic import TemplateView

from apps.accounts.permissions import DATA_ROLES, RoleRequiredMixin
from apps.audit.services import audit_record
from apps.cohorts.selectors import cohorts_visible, exams_visible
from apps.cohorts.services.store import media_path
from apps.subregions.models import (
    TARGET_METHODS,
    TARGET_WORDING,
    SubregionCohortAnalysis,
    SubregionMap,
)

#: Library columns first (ml.subregions.export.POINT_COLUMNS: scanner RAS mm), then the rest.
TARGET_COLUMNS = ("name", "x_mm", "y_mm", "z_mm", "method", "margin_mm", "coordinates", "border_distance_mm",
                  "mni_x_mm", "mni_y_mm", "mni_z_mm", "voxel_i", "voxel_j", "voxel_k", "voxel_mm", "fallback")
ASSOCIATION_COLUMNS = ("marker", "feature", "n", "n_pos", "or_per_sd", "or_lo", "or_hi", "p_logit", "q_logit",
                       "rank_biserial", "rb_lo", "rb_hi", "p_mwu", "q_mwu", "fisher_or", "p_fisher", "q_fisher")


def _visible_map(request, pk: int) -> SubregionMap:
    return get_object_or_404(SubregionMap.objects.filter(exam__in=exams_visible(request.user))
                             .select_related("exam__patient"), pk=pk)


class MapFileView(RoleRequiredMixin, View):
    """A stored file of a mapping: habitats / aggressiveness / region (NIfTI), seg (zip)."""

    required_roles = DATA_ROLES
    FIELDS = {"habitats": "habitats", "aggressiveness": "aggressiveness", "region": "region", "seg": "seg"}

    def get(self, request, pk, which):
        sm = _visible_map(request, pk)
        field = getattr(sm, self.FIELDS.get(which, ""), None)
        if not field:
            raise Http404("no such file")
        audit_record(action="subregions.download", target=sm, site=sm.exam.patient.site_id, request=request,
                     details={"file": which, "exam": sm.exam_id, "key": sm.key})
        suffix = ".zip" if which == "seg" else ".nii.gz"
        name = f"exam{sm.exam_id}_{which}{'_target_seg' if which == 'seg' else ''}{suffix}"
        return FileResponse(open(media_path(field.name), "rb"), filename=name,
                            as_attachment=which in ("region", "seg"))


class TargetsCsvView(RoleRequiredMixin, View):
    """The biopsy targets as a navigation point list (scanner RAS mm of the T1c)."""

    required_roles = DATA_ROLES

    def get(self, request, pk):
        sm = _visible_map(request, pk)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(TARGET_COLUMNS)
        for method in TARGET_METHODS:
            t = sm.targets.get(method)
            if not t:
                continue
            xyz = t.get("scanner_mm") or t["mni_mm"]
            frame = f"scanner RAS ({t.get('scanner_reference')})" if t.get("scanner_mm") else "MNI152 RAS"
            w.writerow([TARGET_WORDING[method], *(f"{v:.2f}" for v in xyz), method, f"{t['margin_mm']:g}", frame,
                        f"{t['border_distance_mm']:.2f}", *(f"{v:.2f}" for v in t["mni_mm"]), *t["voxel"],
                        f"{t['voxel_mm']:g}", int(bool(t["fallback"]))])
        audit_record(action="subregions.download", target=sm, site=sm.exam.patient.site_id, request=request,
                     details={"file": "targets.csv", "exam": sm.exam_id, "key": sm.key})
        response = HttpResponse(buf.getvalue(), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="exam{sm.exam_id}_biopsy_targets.csv"'
        return response


def _fmt(v, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def _ci_text(est, lo, hi, fmt: str) -> str:
    """``est (lo to hi)`` with ``fmt``; "—" without an estimate, no interval where it is missing
    (e.g. a separated logistic fit has an odds ratio but no finite Wald interval)."""
    if est is None:
        return "—"
    if lo is None or hi is None:
        return fmt.format(est)
    return f"{fmt.format(est)} ({fmt.format(lo)} to {fmt.format(hi)})"


def _or_text(est, lo, hi) -> str:
    """Odds ratio per SD with its CI; beyond 1000 (or below 0.001) the logistic fit has (quasi-)complete
    separation and the Wald interval says nothing: shown as such, the CSV keeps the numbers."""
    if est is not None and not 1e-3 <= est <= 1e3:
        return f"{'> 1000' if est > 1e3 else '< 0.001'} (separation)"
    return _ci_text(est, lo, hi, "{:.2f}")


class AssociationView(RoleRequiredMixin, TemplateView):
    """The cohort's habitat signature vs IDH, 1p/19q and WHO grade (BH-corrected); ``?format=csv``."""

    required_roles = DATA_ROLES
    template_name = "subregions/association.html"

    def get(self, request, *args, **kwargs):
        cohort = get_object_or_404(cohorts_visible(request.user), pk=kwargs["pk"])
        self.analysis = get_object_or_404(SubregionCohortAnalysis.objects.select_related("model_version"),
                                          cohort=cohort, key=kwargs["key"])
        if request.GET.get("format") == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(ASSOCIATION_COLUMNS)
            for row in self.analysis.association:
                w.writerow(["" if row.get(c) is None else row.get(c) for c in ASSOCIATION_COLUMNS])
            audit_record(action="subregions.download", target=self.analysis, request=request,
                         details={"file": "association.csv", "cohort": cohort.name, "key": self.analysis.key})
            response = HttpResponse(buf.getvalue(), content_type="text/csv")
            response["Content-Disposition"] = (f'attachment; filename="{cohort.name}_{self.analysis.key}'
                                               '_habitat_association.csv"')
            return response
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        a = self.analysis
        rows = sorted(a.association, key=lambda r: (r.get("q_mwu") is None, r.get("q_mwu") or 1.0,
                                                    r.get("p_mwu") or 1.0))
        shown = []
        for r in rows:
            shown.append({**r, "or_text": _or_text(r.get("or_per_sd"), r.get("or_lo"), r.get("or_hi")),
                          "rb_text": _ci_text(r.get("rank_biserial"), r.get("rb_lo"), r.get("rb_hi"), "{:+.2f}"),
                          "p_text": _fmt(r.get("p_mwu")), "q_text": _fmt(r.get("q_mwu")),
                          "q_logit_text": _fmt(r.get("q_logit")), "q_fisher_text": _fmt(r.get("q_fisher")),
                          "significant": r.get("q_mwu") is not None and r["q_mwu"] < 0.05})
        ctx.update(analysis=a, cohort=a.cohort, rows=shown, tested=sum(1 for r in rows if r.get("p_mwu") is not None))
        return ctx
