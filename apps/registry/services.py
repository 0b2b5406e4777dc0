"""Train classical models on the cohort's quantification, register them, predict with SHAP."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from django.db import transaction
from django.db.models import Max

from apps.accounts.models import Site
from apps.audit.services import audit_record
from apps.cohorts.models import Cohort
from apps.cohorts.services.store import StoreTransaction, media_path
from apps.quantification.services import feature_table
from apps.registry.models import ModelVersion, Prediction
from ml.classical import TrainedModel, predict_with_explanations, train_classical

#: Which exams and which label each task uses.
TASK_LABELS = {
    "progression": ("suspected_recurrence", lambda e: e.diagnosis if e.diagnosis != "unknown" else "n/a"),
    "idh": ("initial_diagnosis", lambda e: e.patient.idh or "n/a"),
    "codeletion": ("initial_diagnosis", lambda e: e.patient.codeletion_1p19q or "n/a"),
}


class TrainingError(ValueError):
    """Training cannot start (no quantified exams, unknown cohort or site...)."""


def _training_inputs(cohort: Cohort, task: str, features: str):
    timepoint, label_of = TASK_LABELS[task]
    exams = list(cohort.exams.filter(timepoint=timepoint).select_related("patient__site"))
    table = feature_table(exams, features=features)
    if table.empty:
        raise TrainingError(f"cohort {cohort.name!r} has no quantified {timepoint} exam (run quantify first)")
    by_pk = {e.pk: e for e in exams}
    labels = pd.Series({pk: label_of(by_pk[pk]) for pk in table.index})
    sites = pd.Series({pk: by_pk[pk].patient.site.name for pk in table.index})
    return table, labels, sites


def classical_train(
    *, task: str, cohort: str, algorithm: str = "logreg", external_site: str | None = None,
    features: str = "parameters", threshold_feature: str | None = None, seed: int = 0,
    n_bootstrap: int = 1000, user=None, progress: Callable[[float, str], None] | None = None,
) -> ModelVersion:
    """Nested-CV training (and external-site test) of a classical model; registers a version."""
    report = progress or (lambda pct, msg="": None)
    if task not in TASK_LABELS:
        raise TrainingError(f"unknown task {task!r}; choose from {', '.join(TASK_LABELS)}")
    cohort_obj = Cohort.objects.filter(name=cohort).first()
    if cohort_obj is None:
        raise TrainingError(f"no cohort named {cohort!r}")
    site_obj = None
    if external_site:
        site_obj = Site.objects.filter(name=external_site).first()
        if site_obj is None:
            raise TrainingError(f"no site named {external_site!r}")
    if algorithm == "threshold" and threshold_feature is None:
        threshold_feature = "ts_max" if task == "progression" else "tbr_max"
    report(5, "Building the feature table")
    table, labels, sites = _training_inputs(cohort_obj, task, features)
    report(15, f"Training {algorithm} on {len(table)} exams (nested CV)")
    result = train_classical(table, labels, sites, task=task, model=algorithm, external_site=external_site,
                             seed=seed, n_bootstrap=n_bootstrap, threshold_feature=threshold_feature)
    report(80, "Saving the model, metrics and plots")
    store = StoreTransaction()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            saved = result.save(tmp)
            artifact, _ = store.put_file(saved["model"], category="models")
            plots = {k: store.put_file(v, category="plots")[0] for k, v in saved.items() if v.suffix == ".png"}
        summary = result.to_dict()
        name = f"{task}-{algorithm}" + ("" if features == "parameters" else f"-{features}")
        with transaction.atomic():
            version = (ModelVersion.objects.select_for_update().filter(name=name)
                       .aggregate(v=Max("version"))["v"] or 0) + 1
            mv = ModelVersion.objects.create(
                name=name, version=version, task=task,
                family="rule" if algorithm == "threshold" else "classical", algorithm=algorithm,
                config=summary["config"] | {"features_set": features, "cohort": cohort},
                metrics={"cv": summary["cv"], "external": summary["external"], "rule": summary["rule"],
                         "importance": summary["importance"], "n_excluded": summary["n_excluded"]},
                threshold=float(np.clip(result.model.threshold, 0.0, 1.0)),
                features=list(result.model.feature_names), training_cohort=cohort_obj,
                external_site=site_obj, artifact=artifact, plots=plots, created_by=user,
            )
            audit_record(action="model.register", actor=user, target=mv,
                         details={"cohort": cohort, "algorithm": algorithm, "features": features,
                                  "artifact_sha256": Path(artifact).stem})
            return mv
    except BaseException:
        store.rollback()
        raise


def predictions_make(*, model_version: ModelVersion, cohort: str, user=None,
                     progress: Callable[[float, str], None] | None = None) -> int:
    """Predict every quantified exam of the cohort (the task's time point); idempotent.

    A prediction that already exists and comes out different (new quantification) is updated and
    the change, old and new probability, is recorded in the audit trail: never silently changed.
    """
    report = progress or (lambda pct, msg="": None)
    cohort_obj = Cohort.objects.filter(name=cohort).first()
    if cohort_obj is None:
        raise TrainingError(f"no cohort named {cohort!r}")
    timepoint, _ = TASK_LABELS[model_version.task]
    features_set = model_version.config.get("features_set", "parameters")
    table = feature_table(cohort_obj.exams.filter(timepoint=timepoint), features=features_set)
    if table.empty:
        raise TrainingError(f"cohort {cohort!r} has no quantified {timepoint} exam")
    model = TrainedModel.load(media_path(model_version.artifact.name))
    report(30, f"Predicting {len(table)} exams")
    predictions = predict_with_explanations(model, table)
    changed, created = [], 0
    with transaction.atomic():
        existing = {pr.exam_id: pr for pr in Prediction.objects.select_for_update()
                    .filter(model_version=model_version, exam_id__in=[int(p.case) for p in predictions])}
        for p in predictions:
            d = p.to_dict()
            old = existing.get(int(p.case))
            if old is None:
                created += 1
            elif abs(old.probability - p.probability) > 1e-12 or old.decision != p.decision:
                changed.append({"exam": old.exam_id, "before": old.probability, "after": p.probability})
            Prediction.objects.update_or_create(
                model_version=model_version, exam_id=int(p.case),
                defaults={"probability": p.probability, "decision": p.decision, "label": p.label,
                          "threshold": p.threshold,
                          "explanation": {k: d[k] for k in ("base_value", "output", "contributions")}},
            )
        audit_record(action="predictions.make", actor=user, target=model_version,
                     details={"cohort": cohort, "n": len(predictions), "created": created, "changed": changed})
    return len(predictions)


def artifact_path(model_version: ModelVersion) -> Path:
    return media_path(model_version.artifact.name)
