"""Explanation maps of the deep models' predictions as overlays of the exam page's viewer.

A WP3 prediction stores its voxel maps in ``Prediction.maps`` (``{method: stored NIfTI on the common
grid}``, written by ``apps.registry.deep`` with ``ml.explain``). :func:`explanation_layers` adds the
latest prediction's maps to the exam page's viewer (hidden until turned on, the most faithful method
first, by ``ml.explain.METHOD_PREFERENCE``); :class:`PredictionMapFileView` serves one map to whoever
may see the exam. The reading page shows the preferred map as its heat map instead
(``reader_study.explanations.heatmap_file``).
"""
from __future__ import annotations

from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views import View

from apps.accounts.permissions import DATA_ROLES, RoleRequiredMixin
from apps.cohorts.selectors import exams_visible
from apps.cohorts.services.store import media_path
from apps.registry.models import Prediction


def _ordered_methods(maps: dict) -> list[str]:
    from ml.explain.methods import METHOD_PREFERENCE

    return [m for m in METHOD_PREFERENCE if m in maps] + sorted(m for m in maps if m not in METHOD_PREFERENCE)


def explanation_layers(config: dict, exam, user) -> None:
    """Append the latest prediction's explanation maps (one overlay per method) to ``config``."""
    prediction = (Prediction.objects.filter(exam=exam).exclude(maps={}).select_related("model_version")
                  .order_by("-created_at", "-pk").first())
    if prediction is None:
        return
    from ml.explain.methods import METHOD_WORDING

    for method in _ordered_methods(prediction.maps):
        name, description = METHOD_WORDING.get(method, (f"AI map ({method})", "relative, 0-1"))
        config["overlays"].append({
            "key": f"explanation-{method}", "url": reverse("quantification:prediction-map",
                                                           args=[prediction.pk, method]),
            "name": name, "filename": f"{method}.nii.gz", "colormap": "cool", "opacity": 0.5, "visible": False,
            "unit": "relevance (0-1)", "cal_min": 0.05, "cal_max": 1.0,
            "description": f"{description}; {prediction.model_version}: {prediction.label} "
                           f"(p = {prediction.probability:.2f})",
        })


class PredictionMapFileView(RoleRequiredMixin, View):
    """One explanation map (NIfTI on the common grid) of a prediction on an exam the user may see."""

    required_roles = DATA_ROLES

    def get(self, request, pk, method):
        prediction = get_object_or_404(Prediction, pk=pk, exam__in=exams_visible(request.user))
        stored = (prediction.maps or {}).get(method)
        if not stored:
            raise Http404("no such map")
        return FileResponse(open(media_path(stored), "rb"), filename=f"{method}.nii.gz")
