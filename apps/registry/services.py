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
from apps.cohorts.models import Cohort, Exam, Volume
from apps.cohorts.services.store import StoreTransaction, media_path
from apps.quantification.models import ExamQuantification
from apps.quantification.services import feature_table, registration_refusals
from apps.registry.models import ModelVersion, Prediction
from ml.classical import (
    TrainedModel,
    evaluate_predictions,
    leave_one_site_out,
    predict_with_explanations,
    train_classical,
)
from ml.classical.domain import describe_development, domain_warnings, frame_schedule_key
from ml.classical.tasks import encode_labels

#: Which exams and which label each task uses.
TASK_LABELS = {
    "progression": ("suspected_recurrence", lambda e: e.diagnosis if e.diagnosis != "unknown" else "n/a"),
    "idh": ("initial_diagnosis", lambda e: e.patient.idh or "n/a"),
    "codeletion": ("initial_diagnosis", lambda e: e.patient.codeletion_1p19q or "n/a"),
}


#: Time points a task's model may be applied to (``predict --timepoint``): IDH and 1p/19q are the
#: tumour's, so a recurrence exam may be predicted too; progression only exists at recurrence.
TASK_TIMEPOINTS = {
    "progression": ("suspected_recurrence",),
    "idh": ("initial_diagnosis", "suspected_recurrence"),
    "codeletion": ("initial_diagnosis", "suspected_recurrence"),
}


def model_name(*, task: str, algorithm: str, features: str = "parameters", threshold_feature: str | None = None) -> str:
    """What the model is: ``idh-rule-ttp_min`` for a threshold rule, ``progression-logreg-radiomics``..."""
    if algorithm == "threshold":
        return f"{task}-rule-{(threshold_feature or 'feature').replace('_', '-')}"
    return f"{task}-{algorithm}" + ("" if features == "parameters" else f"-{features}")


def exam_context(exam_ids: list[int]) -> pd.DataFrame:
    """Per exam: site, dynamic frame schedule, static PET voxel size, background method (index: pk)."""
    exams = Exam.objects.filter(pk__in=exam_ids).select_related("patient__site")
    rows = {e.pk: {"site": e.patient.site.name, "frame_schedule": None, "voxel_mm": None,
                   "background_source": None} for e in exams}
    for v in Volume.objects.filter(exam_id__in=rows, space="native", kind__in=["pet_static", "pet_dynamic"]):
        if v.kind == "pet_dynamic":
            rows[v.exam_id]["frame_schedule"] = frame_schedule_key(v.frame_duration_s)
        else:
            rows[v.exam_id]["voxel_mm"] = [float(x) for x in (v.voxel_size or [])[:3]] or None
    for exam_id, source in ExamQuantification.objects.filter(exam_id__in=rows).values_list("exam_id",
                                                                                             "background_source"):
        rows[exam_id]["background_source"] = source
    return pd.DataFrame.from_dict(rows, orient="index", columns=["site", "frame_schedule", "voxel_mm",
                                                                 "background_source"])


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
    n_bootstrap: int = 1000, loso: bool = False, user=None, progress: Callable[[float, str], None] | None = None,
) -> ModelVersion:
    """Nested-CV training (and external-site test) of a classical model; registers a version.

    ``loso``: also leave-one-site-out (:func:`ml.classical.leave_one_site_out`: train on all sites
    but one with an inner CV, test on it, for every site), stored as ``metrics["loso"]``; the
    registered model is the one fitted on every site (no external site then).
    """
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
    if loso and external_site:
        raise TrainingError("give an external site or leave-one-site-out, not both")
    if algorithm == "threshold" and threshold_feature is None:
        threshold_feature = "ts_max" if task == "progression" else "tbr_max"
    report(5, "Building the feature table")
    table, labels, sites = _training_inputs(cohort_obj, task, features)
    report(15, f"Training {algorithm} on {len(table)} exams (nested CV)")
    result = train_classical(table, labels, sites, task=task, model=algorithm, external_site=external_site,
                             seed=seed, n_bootstrap=n_bootstrap, threshold_feature=threshold_feature)
    loso_metrics = None
    if loso:
        report(60, f"Leave-one-site-out over {sites.nunique()} sites")
        try:
            loso_metrics = leave_one_site_out(table, labels, sites, task=task, model=algorithm, seed=seed,
                                              n_bootstrap=n_bootstrap,
                                              threshold_feature=threshold_feature).to_dict()
        except ValueError as exc:
            raise TrainingError(f"leave-one-site-out: {exc}") from exc
    dev = [pk for pk in table.index if sites[pk] != external_site]
    numeric = table.drop(columns=[c for c in ("curve_class",) if c in table.columns])
    development = describe_development(numeric.loc[dev], exam_context(dev).reindex(dev))
    report(80, "Saving the model, metrics and plots")
    store = StoreTransaction()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            saved = result.save(tmp)
            artifact, _ = store.put_file(saved["model"], category="models")
            plots = {k: store.put_file(v, category="plots")[0] for k, v in saved.items() if v.suffix == ".png"}
        summary = result.to_dict()
        name = model_name(task=task, algorithm=algorithm, features=features, threshold_feature=threshold_feature)
        with transaction.atomic():
            version = (ModelVersion.objects.select_for_update().filter(name=name)
                       .aggregate(v=Max("version"))["v"] or 0) + 1
            mv = ModelVersion.objects.create(
                name=name, version=version, task=task,
                family="rule" if algorithm == "threshold" else "classical", algorithm=algorithm,
                config=summary["config"] | {"features_set": features, "cohort": cohort,
                                            "development": development},
                metrics={"cv": summary["cv"], "external": summary["external"], "rule": summary["rule"],
                         "importance": summary["importance"], "n_excluded": summary["n_excluded"]}
                | ({"loso": loso_metrics} if loso_metrics else {}),
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


def _timepoint(model_version: ModelVersion, timepoint: str | None) -> str:
    allowed = TASK_TIMEPOINTS[model_version.task]
    if timepoint is None:
        return TASK_LABELS[model_version.task][0]
    if timepoint not in allowed:
        raise TrainingError(f"a {model_version.task} model applies to {', '.join(allowed)} exams, not {timepoint}")
    return timepoint


def _cohort_exams(cohort: str | None, site: str | None):
    if (cohort is None) == (site is None):
        raise TrainingError("give a cohort or a site")
    if cohort is not None:
        cohort_obj = Cohort.objects.filter(name=cohort).first()
        if cohort_obj is None:
            raise TrainingError(f"no cohort named {cohort!r}")
        return cohort_obj.exams.all(), f"cohort {cohort}"
    if not Site.objects.filter(name=site).exists():
        raise TrainingError(f"no site named {site!r}")
    return Exam.objects.filter(patient__site__name=site), f"site {site}"


def predictions_make(*, model_version: ModelVersion, cohort: str | None = None, site: str | None = None,
                     timepoint: str | None = None, user=None,
                     progress: Callable[[float, str], None] | None = None) -> int:
    """Predict every quantified exam of the cohort or site (the task's time point); idempotent.

    ``timepoint`` overrides the task's default time point where the task allows it
    (:data:`TASK_TIMEPOINTS`). Each prediction stores ``warnings``: where the exam lies outside
    the model's development data (:func:`ml.classical.domain.domain_warnings`). A prediction that
    already exists and comes out different (new quantification) is updated and the change, old
    and new probability, is recorded in the audit trail: never silently changed. Exams whose
    quantification used a registration now marked failed or flagged poor are refused
    (:func:`apps.quantification.services.registration_refusals`), with their reasons in the audit
    record; an earlier prediction of such an exam is withdrawn there.

    Raises:
        TrainingError: no quantified exam of the time point, or every one of them refused.
    """
    report = progress or (lambda pct, msg="": None)
    exams, where = _cohort_exams(cohort, site)
    timepoint = _timepoint(model_version, timepoint)
    from apps.registry.deep import classifier_predictions_make, is_classifier_version

    if is_classifier_version(model_version):  # WP3 families: channel stacks, explanation maps
        return classifier_predictions_make(
            model_version=model_version, user=user, progress=progress,
            exams=list(exams.filter(timepoint=timepoint).select_related("patient__site").order_by("pk")))
    features_set = model_version.config.get("features_set", "parameters")
    table = feature_table(exams.filter(timepoint=timepoint), features=features_set)
    if table.empty:
        raise TrainingError(f"{where} has no quantified {timepoint} exam")
    # an exam whose automatic VOIs came from a registration marked failed (or flagged poor, not
    # passed) is refused; its earlier prediction is withdrawn (audited), so no reader study shows it
    refused = registration_refusals(table.index)
    table = table.drop(index=list(refused))
    if table.empty:
        raise TrainingError(f"{where}: every quantified {timepoint} exam is refused: " + "; ".join(refused.values()))
    context = exam_context(list(table.index))
    description = model_version.config.get("development")
    model = TrainedModel.load(media_path(model_version.artifact.name))
    report(30, f"Predicting {len(table)} exams")
    predictions = predict_with_explanations(model, table)
    changed, created = [], 0
    with transaction.atomic():
        existing = {pr.exam_id: pr for pr in Prediction.objects.select_for_update()
                    .filter(model_version=model_version, exam_id__in=[int(p.case) for p in predictions])}
        for p in predictions:
            d = p.to_dict()
            pk = int(p.case)
            warnings = domain_warnings(description, table.loc[pk].to_dict(), context.loc[pk].to_dict())
            old = existing.get(int(p.case))
            if old is None:
                created += 1
            elif abs(old.probability - p.probability) > 1e-12 or old.decision != p.decision:
                changed.append({"exam": old.exam_id, "before": old.probability, "after": p.probability})
            Prediction.objects.update_or_create(
                model_version=model_version, exam_id=int(p.case),
                defaults={"probability": p.probability, "decision": p.decision, "label": p.label,
                          "threshold": p.threshold,
                          "explanation": {k: d[k] for k in ("base_value", "output", "contributions")},
                          "warnings": warnings},
            )
        withdrawn = [{"exam": pr.exam_id, "before": pr.probability, "reason": refused[pr.exam_id]}
                     for pr in Prediction.objects.filter(model_version=model_version, exam_id__in=list(refused))]
        Prediction.objects.filter(model_version=model_version, exam_id__in=list(refused)).delete()
        audit_record(action="predictions.make", actor=user, target=model_version,
                     details={"cohort": cohort, "site": site, "timepoint": timepoint, "n": len(predictions),
                              "created": created, "changed": changed, "withdrawn": withdrawn,
                              "refused": {str(pk): reason for pk, reason in refused.items()}})
    return len(predictions)


def model_evaluate(*, model_version: ModelVersion, cohort: str | None = None, site: str | None = None,
                   timepoint: str | None = None, n_bootstrap: int = 1000, seed: int = 0, user=None) -> dict:
    """External evaluation of a registered model on a cohort or site whose labels are known (now).

    Labels imported after the images (``import_labels``) count: the labels are read at call time.
    The model's stored cut-off is used; metrics with bootstrap 95% CIs (as the training's external
    evaluation) are stored under ``metrics["evaluations"][<cohort or site>:<timepoint>]``.

    Raises:
        TrainingError: no such cohort/site, no quantified exam, or no exam with a known label.
    """
    exams, where = _cohort_exams(cohort, site)
    timepoint = _timepoint(model_version, timepoint)
    _, label_of = TASK_LABELS[model_version.task]
    exam_list = list(exams.filter(timepoint=timepoint).select_related("patient__site"))
    table = feature_table(exam_list, features=model_version.config.get("features_set", "parameters"))
    if table.empty:
        raise TrainingError(f"{where} has no quantified {timepoint} exam")
    by_pk = {e.pk: e for e in exam_list}
    y, excluded = encode_labels(pd.Series({pk: label_of(by_pk[pk]) for pk in table.index}), model_version.task)
    if y.empty:
        raise TrainingError(f"{where}: no {timepoint} exam has a known label for {model_version.task} "
                            "(import the labels first: manage.py import_labels)")
    model = TrainedModel.load(media_path(model_version.artifact.name))
    prob = model.predict_proba(table.loc[y.index])
    key = f"{where.replace(' ', ':')}:{timepoint}"
    result = evaluate_predictions(f"external:{key}", y.to_numpy(), prob, model.threshold,
                                  cases=tuple(y.index), n_bootstrap=n_bootstrap, seed=seed)
    summary = result.to_dict() | {"n_excluded_unlabelled": len(excluded)}
    with transaction.atomic():
        mv = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
        mv.metrics = mv.metrics | {"evaluations": mv.metrics.get("evaluations", {}) | {key: summary}}
        mv.save(update_fields=["metrics"])
        audit_record(action="model.evaluate", actor=user, target=mv,
                     details={"key": key, "n": len(y), "n_excluded_unlabelled": len(excluded)})
    return summary


def artifact_path(model_version: ModelVersion) -> Path:
    return media_path(model_version.artifact.name)
