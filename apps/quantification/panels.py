"""The quantification panel of the exam page: parameter table, TAC plot, viewer with maps."""
from __future__ import annotations

from django.urls import reverse

from apps.cohorts.models import Mask, Volume


def exam_page_url(obj) -> str:
    """The exam page's ``url_for``: ordinary, permission-checked URLs of the cohort and the maps."""
    if isinstance(obj, Volume):
        return reverse("cohorts:volume-file", args=[obj.pk])
    if isinstance(obj, Mask):
        return reverse("cohorts:mask-file", args=[obj.pk])
    exam, which = obj
    return reverse("quantification:map", args=[exam.pk, which])


def quantification_panel(exam, user) -> dict | None:
    from apps.quantification.viewer import exam_viewer_config  # numpy, ml.quant: not at start-up

    quant = getattr(exam, "quantification", None)
    return {"template": "quantification/_exam_panel.html", "quant": quant,
            "viewer_config": exam_viewer_config(exam, url_for=exam_page_url),
            "radiomics": exam.radiomics.all()}
