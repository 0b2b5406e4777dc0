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


#: What each pretraining loss measures, as the model page says it (ml.foundation.pretext).
LOSS_MEANINGS = {
    "loss": "the weighted sum of the tasks' losses",
    "inpainting": "mean squared error of the hidden patches (normalised intensities)",
    "crossmodal": "mean squared error of the hidden modality's channels (normalised intensities)",
    "contrastive": "NT-Xent between the two views of each exam (lower: the embedding tells exams apart)",
    "patchstats": "mean squared error of each visible patch's own mean and max per channel (standardised)",
}


#: The pretraining job's probe metrics: key in ModelVersion.metrics, the embedding it probes
#: (ml.foundation.probe.POOLINGS). Versions made before the global max embedding have no probe_max.
PROBE_METRICS = (("probe", "global"), ("probe_max", "max"), ("probe_lesion", "lesion"))
#: What each embedding is, as the model page says it (the web process does not import ml.foundation).
POOLING_MEANINGS = {
    "global": "mean over the brain",
    "max": "each feature's maximum over the brain's patches",
    "lesion": "mean over the tumour's patches",
}


def pretraining_losses(metrics: dict) -> list[dict]:
    """Rows of the model page's loss table: task, first and last epoch's loss, what it measures and,
    for the contrastive task, its chance level and whether it ended there (as the pretraining job
    stored them: ml.foundation.pretext.contrastive_at_chance)."""
    first, chance = metrics.get("first_losses") or {}, metrics.get("loss_chance") or {}
    stuck = set(metrics.get("at_chance") or ())
    rows = []
    for task, last in (metrics.get("final_losses") or {}).items():
        rows.append({"task": task, "first": first.get(task), "last": last, "meaning": LOSS_MEANINGS.get(task, ""),
                     "chance": chance.get(task), "at_chance": task in stuck})
    return rows


def foundation_summary(user, model_version: ModelVersion) -> dict:
    """What the model page shows of a foundation encoder, per-case parts scoped like the metrics.

    Nearest-neighbour retrieval names exams: a query exam the user may not see is left out, and a
    neighbour of another site the user has no data role at keeps its rank and similarity but not
    its identity or label.
    """
    import yaml

    metrics = model_metrics_visible(user, model_version)
    retrieval = metrics.get("retrieval") or {}
    ids = {int(q["exam"]) for q in retrieval.get("queries", [])}
    ids |= {int(n["exam"]) for q in retrieval.get("queries", []) for n in q.get("neighbours", [])}
    exams = {e.pk: e for e in Exam.objects.filter(pk__in=ids).select_related("patient__site")}
    if is_admin(user):
        visible = set(exams)
    else:
        visible = set(Exam.objects.filter(pk__in=ids, patient__site__in=sites_for(user, DATA_ROLES))
                      .values_list("pk", flat=True))
    queries = []
    for q in retrieval.get("queries", []):
        if int(q["exam"]) not in visible or int(q["exam"]) not in exams:
            continue
        neighbours = [{"rank": i + 1, "similarity": n.get("similarity"),
                       "exam": exams.get(int(n["exam"])) if int(n["exam"]) in visible else None,
                       "label": n.get("label") if int(n["exam"]) in visible else None}
                      for i, n in enumerate(q.get("neighbours", []))]
        queries.append({"exam": exams[int(q["exam"])], "label": q.get("label"), "neighbours": neighbours})
    plots = model_version.plots or {}
    captions = model_version.config.get("plot_captions") or {}
    reconstructions = []
    # per exam, inpainting before cross-modal
    for key in sorted(plots, key=lambda k: (k.split("_")[2:], k.split("_")[1:2] != ["inpainting"])):
        if key.startswith("recon_"):
            _, task, *exam = key.split("_")
            default = f"{'Cross-modal prediction' if task == 'crossmodal' else task.capitalize()}" + (
                f", held-out exam {exam[0]}" if exam else "")
            reconstructions.append({"key": key, "task": task, "caption": captions.get(key, default)})
    probe_rows = []
    for key, embedding in PROBE_METRICS:  # versions made before the max pooling have no probe_max
        for task, p in (metrics.get(key) or {}).items():
            difference = p.get("difference")  # signed: a pretrained encoder can be worse than random
            probe_rows.append({"task": task, "embedding": embedding, "meaning": POOLING_MEANINGS[embedding],
                               "difference_signed": None if difference is None else f"{difference:+.3f}", **p})
    config = {k: v for k, v in (model_version.config or {}).items() if k != "plot_captions"}
    return {
        "losses": pretraining_losses(metrics),
        "curves": "curves" in plots,
        "reconstructions": reconstructions,
        "probe": probe_rows,
        "probe_note": metrics.get("probe_note", ""),
        "retrieval": {"k": retrieval.get("k"), "labels": retrieval.get("labels", ""), "queries": queries,
                      "note": retrieval.get("note", "")},
        "n_exams_seen": len(model_version.exams_seen or []),
        "n_embeddings": model_version.embeddings.count(),
        "children": list(model_version.children.all()),
        "config_yaml": yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100),
        "training": metrics.get("training", {}),
    }
