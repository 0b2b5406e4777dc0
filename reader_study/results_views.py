"""Results pages of a reader study (statisticians, the study's coordinators): the page, its figures
and the export downloads. Thin: the numbers come from :mod:`reader_study.results`, the files from
:mod:`reader_study.exports`; :func:`results_page` only turns them into labelled rows for the template.
"""
from __future__ import annotations

import io
import math
from typing import Any

from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views import View

from apps.accounts.permissions import RoleRequiredMixin
from reader_study.analysis import or_analysis, plot_forest, plot_roc
from reader_study.biopsy import biopsy_results
from reader_study.exports import FORMATS, ExportError, study_export
from reader_study.models import Arm, Study
from reader_study.results import (
    RESULTS_STUDY_ROLES,
    StudyResults,
    analysable,
    analysis_inputs,
    readings_frame,
    results_studies_for,
    study_results_cached,
)

ARM_LABELS = dict(Arm.choices)
FIGURES = ("roc", "forest")


def _p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "—"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _diff(gen, a: str = Arm.AIDED, b: str = Arm.UNAIDED) -> Any:
    """The difference ``a - b`` of a generalisation, whichever order the library stored it in."""
    try:
        d = gen.difference(a, b)
        return d.estimate, d.se, d.df, d.ci_low, d.ci_high, d.p_value
    except KeyError:
        d = gen.difference(b, a)
        return -d.estimate, d.se, d.df, -d.ci_high, -d.ci_low, d.p_value


def _mrmc_rows(result, *, scale: float = 1.0) -> list[dict]:
    """RRRC, FRRC, RRFC rows of ``aided - unaided`` (``scale`` 100 for percentage points)."""
    rows = []
    meaning = {"RRRC": "readers and cases random (generalises to both: the primary analysis)",
               "FRRC": "these readers, cases random", "RRFC": "readers random, these cases"}
    for gen in (result.rrrc, result.frrc, result.rrfc):
        est, se, df, lo, hi, p = _diff(gen)
        rows.append({"name": gen.name, "meaning": meaning[gen.name], "estimate": est * scale, "se": se * scale,
                     "df": df if math.isfinite(df) else None, "ci_low": lo * scale, "ci_high": hi * scale,
                     "p": _p(p)})
    return rows


def _modality_cis(result, *, scale: float = 1.0) -> list[dict]:
    return [{"arm": ARM_LABELS.get(c.modality, c.modality), "estimate": c.estimate * scale,
             "ci_low": c.ci_low * scale, "ci_high": c.ci_high * scale} for c in result.rrrc.modality_cis]


def _cell(row) -> dict | None:
    """One reader x arm cell of the per-reader table: AUC and its CI, Se, Sp, accuracy in %."""
    if row is None:
        return None
    return {"arm": row.modality, "auc": row.auc, "auc_low": row.auc_ci[0], "auc_high": row.auc_ci[1],
            "se": 100 * row.sensitivity, "sp": 100 * row.specificity, "acc": 100 * row.accuracy,
            "n": row.n_negative + row.n_positive}


def results_page(results: StudyResults) -> dict[str, Any]:
    """Template context: every number with its label, unit and meaning."""
    rep = results.report
    ctx: dict[str, Any] = {"results": results, "study": results.study, "report": rep,
                           "acc": results.acceptability, "formats": FORMATS}
    frame = results.frame
    sites = dict(zip(frame["reader"], frame["reader_site"])) if len(frame) else {}
    if rep is None:
        return ctx
    if rep.or_auc is not None:
        ctx["auc_rows"] = _mrmc_rows(rep.or_auc)
        ctx["auc_cis"] = _modality_cis(rep.or_auc)
        ctx["headline"] = ctx["auc_rows"][0]
    u = rep.ustat_auc
    ctx["ustat_modalities"] = [{"arm": ARM_LABELS.get(m.modality, m.modality), "auc": m.auc, "ci_low": m.ci_low,
                                "ci_high": m.ci_high} for m in u.modality]
    ctx["ustat_differences"] = [
        {"label": f"{ARM_LABELS.get(d.modality_a, d.modality_a)} − {ARM_LABELS.get(d.modality_b, d.modality_b)}",
         "estimate": d.estimate, "ci_low": d.ci_low, "ci_high": d.ci_high, "p": _p(d.p_value),
         "df": d.df} for d in u.differences]
    for name, part in (("se", rep.or_sensitivity), ("sp", rep.or_specificity)):
        if part is not None:
            ctx[f"{name}_rows"] = _mrmc_rows(part, scale=100.0)
            ctx[f"{name}_cis"] = _modality_cis(part, scale=100.0)
    by_reader: dict[str, dict] = {}
    for row in rep.performance.rows:
        entry = by_reader.setdefault(row.reader, {"reader": row.reader, "site": sites.get(row.reader, ""),
                                                  "arms": {}})
        entry["arms"][row.modality] = row
    arms = [a for a in (Arm.UNAIDED, Arm.AIDED) if any(a in e["arms"] for e in by_reader.values())]
    ctx["arms"] = [(a, ARM_LABELS[a]) for a in arms]
    ctx["reader_rows"] = [
        {"reader": e["reader"], "site": e["site"] or ("algorithm" if e["reader"] == "AI" else ""),
         "cells": [_cell(e["arms"].get(a)) for a in arms]} for e in by_reader.values()]
    if rep.agreement is not None:
        ctx["kappa_rows"] = [
            {"arm": ARM_LABELS.get(m, m), "fleiss": k, "se": se, "p": _p(p), "cohen": rep.agreement.mean_cohen(m)}
            for m, k, se, p in zip(rep.agreement.modalities, rep.agreement.fleiss, rep.agreement.fleiss_se,
                                   rep.agreement.fleiss_p)]
    if rep.decision_changes is not None:
        dc = rep.decision_changes
        ctx["change_rows"] = [{"row": c, "p": _p(c.p_value)} for c in (*dc.per_reader, dc.overall)]
    if rep.standalone is not None:
        s = rep.standalone
        ctx["standalone"] = {"ai": s.ai_fom, "readers": s.reader_mean, "difference": s.difference,
                             "ci_low": s.rrrc.ci_low, "ci_high": s.rrrc.ci_high, "p": _p(s.p_value_rrrc),
                             "arm": ARM_LABELS.get(s.modality, s.modality)}
    if rep.reading_time is not None:
        t = rep.reading_time
        ctx["time"] = {
            "geo": [(ARM_LABELS.get(a, a), v) for a, v in t.geometric_mean.items()],
            "effects": [{"arm": ARM_LABELS.get(e.arm, e.arm), "ratio": e.ratio, "ci_low": e.ratio_ci_low,
                         "ci_high": e.ratio_ci_high, "p": _p(e.p_value)} for e in t.effects],
            "n": t.n_readings, "converged": t.converged,
            "basis": "active time on the page" if results.time_basis == "active_seconds"
            else "server time from opening to submitting",
        }
        med = frame.groupby("modality")[["reading_seconds", "active_seconds"]].median()
        ctx["time"]["medians"] = [(ARM_LABELS.get(a, a), med.loc[a, "reading_seconds"], med.loc[a, "active_seconds"])
                                  for a in (Arm.UNAIDED, Arm.AIDED) if a in med.index]
    return ctx


class _ResultsMixin(RoleRequiredMixin):
    required_roles = RESULTS_STUDY_ROLES

    def get_study(self, slug: str) -> Study:
        return get_object_or_404(results_studies_for(self.request.user).select_related("model_version"), slug=slug)


class ResultsView(_ResultsMixin, View):
    """The results page: interim while the study is open, final once closed."""

    def get(self, request, slug):
        study = self.get_study(slug)
        ctx = results_page(study_results_cached(study))
        ctx["biopsy"] = biopsy_results(study)  # biopsy-target studies: hit rates (reader_study.biopsy)
        return render(request, "reader_study/results.html", ctx)


class ResultsFigureView(_ResultsMixin, View):
    """ROC curves (per reader and reader-averaged per arm, AI dashed) or the forest plot, as SVG."""

    def get(self, request, slug, figure):
        study = self.get_study(slug)
        if figure not in FIGURES:
            raise Http404("no such figure")
        usable, _ = analysable(readings_frame(study))
        try:  # the same readings and inputs as the page's analysis, without the reading-time model
            inputs = analysis_inputs(usable)
            data = inputs["data"]
            if figure == "roc":
                fig = plot_roc(data, ai_ratings=inputs["ai_ratings"],
                               title="ROC curves: readers (thin), mean per arm (thick)")
            else:
                fig = plot_forest(or_analysis(data.select(modalities=[Arm.UNAIDED, Arm.AIDED])),
                                  a=Arm.UNAIDED, b=Arm.AIDED,
                                  title="AUC difference with − without AI, per reader (95% CI)")
        except (ValueError, KeyError) as exc:  # too few readings, one arm, or not fully crossed
            raise Http404(f"no figure yet: {exc}") from exc
        buf = io.BytesIO()
        fig.savefig(buf, format="svg")
        response = HttpResponse(buf.getvalue(), content_type="image/svg+xml")
        response["Cache-Control"] = "private, no-store"
        return response


class ResultsExportView(_ResultsMixin, View):
    """Download one export (CSV, iMRMC, JSON); each download is an audit event."""

    def get(self, request, slug, fmt):
        study = self.get_study(slug)
        if fmt not in FORMATS:
            raise Http404("no such format")
        try:
            export = study_export(study=study, format=fmt, user=request.user, request=request)
        except ExportError as exc:
            return render(request, "reader_study/results_empty.html", {"study": study, "message": str(exc)},
                          status=409)
        response = HttpResponse(export.content, content_type=export.content_type)
        response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
        response["Cache-Control"] = "private, no-store"
        return response
