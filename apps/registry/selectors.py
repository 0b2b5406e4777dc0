"""Reads on the model registry, scoped to what the user may see (rules in apps.accounts.permissions).

A model version is shared by every researcher, but its evaluation stores one row per exam
(``cases`` with ``y_true``, ``prob`` and ``thresholds``: see ``ml.classical.EvaluationResult``),
and a case is an exam with its diagnosis. Per-case rows follow the exams' site scoping: a user
sees the rows of exams of the sites where they hold a data role, and none without one. Aggregate
metrics (AUC with CI, ROC band, calibration bins, importance) are kept whole.
"""
from __future__ import annotations

from typing import Any

from apps.accounts.permissions import DATA_ROLES, is_admin, sites_for
from apps.cohorts.models import Exam
from apps.registry.models import ModelVersion


def _case_ids(metrics: Any) -> set[str]:
    """Every case identifier named anywhere in ``metrics`` (nested evaluations included)."""
    found: set[str] = set()
    if isinstance(metrics, dict):
        cases = metrics.get("cases")
        if isinstance(cases, list):
            found.update(str(c) for c in cases)
        for value in metrics.values():
            found |= _case_ids(value)
    elif isinstance(metrics, list):
        for value in metrics:
            found |= _case_ids(value)
    return found


def _filter_cases(metrics: Any, visible: set[str]) -> Any:
    """A copy of ``metrics`` where each evaluation keeps only the rows of ``visible`` cases.

    Every list of an evaluation as long as its ``cases`` is a per-case column and is filtered the
    same way, so a column added to the evaluation later cannot leak. ``cases_shown`` says how many
    rows are left (``n`` stays the number of cases the metrics were computed on).
    """
    if isinstance(metrics, list):
        return [_filter_cases(v, visible) for v in metrics]
    if not isinstance(metrics, dict):
        return metrics
    out = {k: _filter_cases(v, visible) for k, v in metrics.items()}
    cases = metrics.get("cases")
    if not isinstance(cases, list):
        return out
    keep = [i for i, c in enumerate(cases) if str(c) in visible]
    for key, value in metrics.items():
        if isinstance(value, list) and len(value) == len(cases):
            out[key] = [value[i] for i in keep]
    out["cases_shown"] = len(keep)
    return out


def model_metrics_visible(user, model_version: ModelVersion) -> dict:
    """The model's metrics with per-case rows limited to exams of the user's data sites."""
    metrics = model_version.metrics or {}
    if is_admin(user):
        return _filter_cases(metrics, _case_ids(metrics))
    ids = {int(c) for c in _case_ids(metrics) if str(c).isdigit()}
    visible = {
        str(pk) for pk in Exam.objects.filter(pk__in=ids, patient__site__in=sites_for(user, DATA_ROLES))
        .values_list("pk", flat=True)
    }
    return _filter_cases(metrics, visible)
