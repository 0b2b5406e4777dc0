"""The quantification panel of the exam page: parameter table, TAC plot, viewer with maps."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
            "viewer_config": exam_page_layers(exam_viewer_config(exam, url_for=exam_page_url), exam, user),
            "radiomics": exam.radiomics.all()}


# --- layers other apps add to the exam page's viewer (never to the reading page) -------------------

_EXAM_PAGE_LAYERS: list[Callable[[dict, Any, Any], None]] = []


def register_exam_page_layers(func: Callable[[dict, Any, Any], None]) -> Callable[[dict, Any, Any], None]:
    """Add ``func(config, exam, user)``, which may append overlays, markers or a legend to the exam
    page's viewer configuration in place (apps.subregions: habitats and biopsy targets)."""
    if func not in _EXAM_PAGE_LAYERS:
        _EXAM_PAGE_LAYERS.append(func)
    return func


def exam_page_layers(config: dict | None, exam, user) -> dict | None:
    """``config`` with the registered apps' exam-page layers added (None stays None)."""
    if config is not None:
        for func in _EXAM_PAGE_LAYERS:
            func(config, exam, user)
    return config
