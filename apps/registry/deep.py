"""WP3 classifiers on the platform (issue 12): train a family on a cohort's prepared exams through
the protocol of :mod:`ml.classify.protocol`, register the version, predict with explanation maps.

Inputs are the exams' channel stacks (:func:`apps.registry.foundation.stack_index`, built from the
prepared volumes on the common grid, at the encoder's voxel size for the foundation families and
4 mm otherwise); labels are read from the database at call time. One run is one split:

* ``external_site``: that site is the test set (never seen in training, tuning or calibration);
* ``loso``: every site held out in turn (metrics per site and pooled), then the registered model is
  fitted on all sites with an internal patient-level test split;
* neither: an internal patient-level test split (20 % of patients, stratified).

The registered version stores the artifact (:class:`ml.classify.artifact.TrainedClassifier`) with
its SHA-256, the config (seed, fraction, split, hyper-parameters, library versions), the exams
seen (training + validation), the parent (the foundation encoder version), the metrics (AUC,
accuracy, Se, Sp, PPV, NPV with bootstrap CIs, calibration slope/intercept/Brier before and after
post-hoc calibration) and ROC, calibration and training-curve plots.
"""
from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Max

from apps.accounts.models import Site
from apps.audit.services import audit_record
from apps.cohorts.models import Cohort, Exam
from apps.cohorts.services.store import StoreTransaction, media_path
from apps.registry.models import ModelVersion, Prediction

Progress = Callable[[float, str], None]

#: ``--family`` choices -> (registry family, algorithm label).
FAMILIES: dict[str, tuple[str, str]] = {
    "foundation": ("foundation", "vit-finetune"),
    "probe": ("foundation", "vit-probe"),
    "cnn": ("cnn", "densenet3d"),
    "radiomics": ("classical", "radiomics-logreg"),
    "ts_rule": ("rule", "ts-max-rule"),
}
#: Marks the versions this module trained (their artifact is a TrainedClassifier).
PROTOCOL = "ml.classify"
DEFAULT_MAP_METHOD = "integrated_gradients"


class ClassifierError(ValueError):
    """Training or prediction cannot start or finish (unknown cohort/site/encoder, too few labels...)."""


def _noop(pct: float, msg: str = "") -> None:
    return None


def _encoder_checkpoint(encoder: int | str | None) -> tuple[Path | None, ModelVersion | None, float]:
    """The encoder version's checkpoint, the version, and its voxel size (4 mm without an encoder)."""
    if encoder in (None, ""):
        return None, None, 4.0
    mv = ModelVersion.objects.filter(pk=int(encoder)).first() if str(encoder).isdigit() else None
    if mv is None:
        raise ClassifierError(f"--encoder {encoder}: no model version with that id")
    if mv.family != "foundation":
        raise ClassifierError(f"--encoder {encoder}: {mv} is a {mv.family} model, not a foundation encoder")
    path = media_path(mv.artifact.name) if mv.artifact else None
    if path is None or not path.is_file():
        raise ClassifierError(f"--encoder {encoder}: the checkpoint of {mv} is missing")
    from ml.foundation.model import load_encoder

    try:
        enc, _ = load_encoder(path)
    except ValueError as exc:
        raise ClassifierError(f"--encoder {encoder}: {exc}") from exc
    return path, mv, float(enc.config.voxel_mm)


def _evaluation(name: str, fold, *, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """The fold's test evaluation in the registry's format (ml.classical EvaluationResult) + calibration."""
    from ml.classical.evaluation import evaluate_predictions, json_safe

    ev = evaluate_predictions(name, fold.y_test, fold.prob, fold.threshold, cases=fold.test_keys,
                              n_bootstrap=n_bootstrap, seed=seed)
    out = ev.to_dict()
    out["calibration_stats"] = fold.report.calibration.to_dict()
    out["calibration_stats_uncalibrated"] = fold.report_raw.calibration.to_dict()
    out["calibration_method"] = fold.calibration_method
    out["prob_uncalibrated"] = [float(v) for v in fold.prob_raw]
    return json_safe(out), ev


def _curve_figure(history: list[dict]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "-o", ms=3, label="training loss")
    if history and "val_loss" in history[0]:
        ax.plot(epochs, [h["val_loss"] for h in history], "-o", ms=3, label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def classifier_train(
    *, family: str, cohort: str, task: str = "progression", label_fraction: float = 1.0,
    external_site: str | None = None, loso: bool = False, seed: int = 0, encoder: int | str | None = None,
    epochs: int = 20, crop: int = 48, batch_size: int = 8, calibration: str = "platt", n_bootstrap: int = 1000,
    device: str = "cpu", user=None, progress: Progress | None = None, log: Callable[[str], None] | None = None,
) -> ModelVersion:
    """Train ``family`` on ``cohort`` with the WP3 protocol and register a version (module docstring).

    Raises:
        ClassifierError: unknown family, task, cohort, site or encoder; too few prepared labelled
            exams for the split.
    """
    import torch

    from apps.registry.foundation import stack_index
    from ml.classify.artifact import TrainedClassifier
    from ml.classify.protocol import (
        TASK_TIMEPOINT,
        LabelledCohort,
        StackLoader,
        leave_one_site_out,
        make_estimator,
        make_split,
        run_split,
    )

    report = progress or _noop
    write_log = log or (lambda line: None)
    if family not in FAMILIES:
        raise ClassifierError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if task not in TASK_TIMEPOINT:
        raise ClassifierError(f"unknown task {task!r}; choose from {', '.join(TASK_TIMEPOINT)}")
    if external_site and loso:
        raise ClassifierError("give --external-site or --loso, not both")
    if not 0 < label_fraction <= 1:
        raise ClassifierError(f"--label-fraction must be in (0, 1], got {label_fraction}")
    cohort_obj = Cohort.objects.filter(name=cohort).first()
    if cohort_obj is None:
        raise ClassifierError(f"no cohort named {cohort!r}")
    site_obj = None
    if external_site:
        site_obj = Site.objects.filter(name=external_site).first()
        if site_obj is None:
            raise ClassifierError(f"no site named {external_site!r}")
    if family not in ("foundation", "probe") and encoder not in (None, ""):
        raise ClassifierError(f"--encoder applies to the foundation families, not {family}")
    enc_path, parent, voxel_mm = _encoder_checkpoint(encoder if family in ("foundation", "probe") else None)
    torch.manual_seed(seed)
    exams = list(cohort_obj.exams.filter(timepoint=TASK_TIMEPOINT[task]).select_related("patient__site")
                 .order_by("pk"))
    report(2, f"Channel stacks of {len(exams)} exams at {voxel_mm:g} mm")
    index, skipped = stack_index(exams=exams, voxel_mm=voxel_mm,
                                 progress=lambda pct, msg="": report(2 + 0.13 * pct, msg))
    for s in skipped:
        write_log(f"exam {s['exam']} left out: {s['reason']}")
    if index.empty:
        raise ClassifierError(f"cohort {cohort!r}: no prepared {TASK_TIMEPOINT[task]} exam (run prepare_exams)")
    labelled = LabelledCohort.from_index(index, task)
    if len(labelled.keys) == 0:
        raise ClassifierError(f"cohort {cohort!r}: no {TASK_TIMEPOINT[task]} exam has a known {task} label")
    load = StackLoader(index)
    options = {"epochs": epochs, "crop": crop, "batch_size": batch_size, "device": device,
               "encoder_path": str(enc_path) if enc_path else None}

    def factory(s: int):
        kw = {k: v for k, v in options.items() if family in ("foundation", "probe") or k != "encoder_path"}
        if family in ("radiomics", "ts_rule"):
            kw = {}
        return make_estimator(family, seed=s, **kw)

    metrics: dict[str, Any] = {}
    plots_src: dict[str, Any] = {}
    try:
        if loso:
            report(15, f"Leave-one-site-out over {len(labelled.site_names)} sites")
            res = leave_one_site_out(factory, labelled, load, family=family, seed=seed, label_fraction=label_fraction,
                                     calibration=calibration, n_bootstrap=n_bootstrap, progress=write_log)
            metrics["loso"] = {"pooled": res.pooled.to_dict(),
                               "per_site": {f.split.test_site: f.report.to_dict() for f in res.folds}}
        report(50 if loso else 15, "Training")
        split = make_split(labelled, test_site=external_site or None, seed=seed, label_fraction=label_fraction)
        write_log(f"split {split.name}: {len(split.train)} training, {len(split.val)} validation, "
                  f"{len(split.test)} test exams ({len(split.unlabelled)} development exams unlabelled by the "
                  f"fraction {label_fraction:g})")
        fold, fitted, calibrator = run_split(factory(seed), labelled, split, load, family=family,
                                             calibration=calibration, n_bootstrap=n_bootstrap)
    except ValueError as exc:
        raise ClassifierError(f"cohort {cohort!r}: {exc}") from exc
    for h in fold.details.get("history", []):
        if "epoch" in h:
            write_log("epoch {epoch}: training loss {train_loss:.4f}".format(**h)
                      + (f", validation loss {h['val_loss']:.4f}, AUC {h['val_auc']:.3f}" if "val_loss" in h else ""))
    key = "external" if external_site else "internal"
    name_ev = f"external:{external_site}" if external_site else "internal test (held-out patients)"
    metrics[key], ev = _evaluation(name_ev, fold, n_bootstrap=n_bootstrap, seed=seed)
    plots_src[f"{key}_roc"] = ev.roc_figure()
    plots_src[f"{key}_calibration"] = ev.calibration_figure()
    if any("epoch" in h for h in fold.details.get("history", [])):
        plots_src["training_curve"] = _curve_figure([h for h in fold.details["history"] if "epoch" in h])
    metrics["threshold_rule"] = "Youden on calibrated validation probabilities"
    reg_family, algorithm = FAMILIES[family]
    # where the model was developed (sites, frame schedules, voxel sizes, background methods of its
    # training and validation exams): predictions elsewhere carry a warning (ml.classical.domain)
    import pandas as pd

    from apps.registry.services import exam_context
    from ml.classical.domain import describe_development

    dev = [int(k) for k in (*split.train, *split.val)]
    development = describe_development(pd.DataFrame(index=dev), exam_context(dev).reindex(dev))
    config = {
        "protocol": PROTOCOL, "family": family, "task": task, "cohort": cohort, "seed": seed,
        "label_fraction": label_fraction, "external_site": external_site, "loso": loso, "calibration": calibration,
        "n_bootstrap": n_bootstrap, "voxel_mm": voxel_mm, "encoder": parent.pk if parent else None,
        "estimator": {k: v for k, v in fitted.get_params().items() if isinstance(v, str | int | float | bool)
                      or v is None},
        "split": split.to_dict(), "details": {k: v for k, v in fold.details.items() if k != "history"},
        "skipped_exams": skipped, "development": development,
    }
    trained = TrainedClassifier(family=family, estimator=fitted, calibrator=calibrator, threshold=fold.threshold,
                                config=config)
    report(90, "Saving the model, metrics and plots")
    store = StoreTransaction()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = trained.save(Path(tmp) / "classifier.pt")
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            artifact, _ = store.put_file(path, category="models")
            plots = {}
            for k, fig in plots_src.items():
                png = Path(tmp) / f"{k}.png"
                fig.savefig(png, format="png")
                plots[k] = store.put_file(png, category="plots")[0]
        name = f"{task}-{family.replace('_', '-')}"
        seen = [int(k) for k in (*split.train, *split.val)]
        from ml.classical.evaluation import json_safe
        with transaction.atomic():
            version = (ModelVersion.objects.select_for_update().filter(name=name)
                       .aggregate(v=Max("version"))["v"] or 0) + 1
            mv = ModelVersion.objects.create(
                name=name, version=version, task=task, family=reg_family, algorithm=algorithm,
                config=json_safe(config), metrics=json_safe(metrics),
                threshold=float(np.clip(fold.threshold, 0.0, 1.0)),
                features=list(getattr(fitted, "feature_names_", ())), training_cohort=cohort_obj,
                external_site=site_obj, artifact=artifact, artifact_sha256=sha, parent=parent,
                exams_seen=seen, plots=plots, created_by=user,
            )
            audit_record(action="model.register", actor=user, target=mv,
                         details={"cohort": cohort, "family": family, "algorithm": algorithm,
                                  "artifact_sha256": sha, "parent": parent.pk if parent else None,
                                  "exams_seen": len(seen), "label_fraction": label_fraction})
    except BaseException:
        store.rollback()
        raise
    report(100, f"Registered {mv}")
    return mv


def is_classifier_version(model_version: ModelVersion) -> bool:
    """True for versions trained by :func:`classifier_train` (artifact = TrainedClassifier)."""
    return (model_version.config or {}).get("protocol") == PROTOCOL


def classifier_predictions_make(*, model_version: ModelVersion, exams: list[Exam], map_method: str | None = None,
                                user=None, progress: Progress | None = None) -> int:
    """Store a prediction (calibrated probability, decision at the stored threshold) for every
    prepared exam of ``exams``; for the deep families also an explanation map (NIfTI on the
    stack's common grid) in ``Prediction.maps``. Idempotent; changed outputs are audited.

    Raises:
        ClassifierError: the artifact is missing or none of the exams is prepared.
    """
    from apps.registry.foundation import stack_index
    from ml.classify.artifact import TrainedClassifier
    from ml.classify.protocol import StackLoader
    from ml.explain.attributions import save_map_nifti

    report = progress or _noop
    path = media_path(model_version.artifact.name) if model_version.artifact else None
    if path is None or not path.is_file():
        raise ClassifierError(f"{model_version}: its artifact is missing")
    trained = TrainedClassifier.load(path)
    voxel_mm = float(model_version.config.get("voxel_mm", 4.0))
    index, skipped = stack_index(exams=exams, voxel_mm=voxel_mm,
                                 progress=lambda pct, msg="": report(0.2 * pct, msg))
    if index.empty:
        raise ClassifierError("no prepared exam to predict" + (f": {skipped[0]['reason']}" if skipped else ""))
    keys = list(index.index)
    stacks = StackLoader(index)(keys)
    from apps.registry.services import exam_context
    from ml.classical.domain import domain_warnings

    context = exam_context([int(k) for k in keys])
    description = model_version.config.get("development")
    warnings = {k: domain_warnings(description, {}, context.loc[int(k)].to_dict()) for k in keys}
    report(25, f"Predicting {len(keys)} exams")
    prob = trained.predict_proba(stacks)
    decision = trained.decide(prob)
    method = map_method or DEFAULT_MAP_METHOD
    pos_label, neg_label = _labels(model_version.task)
    changed, created = [], 0
    store = StoreTransaction()
    try:
        maps: dict[str, dict[str, str]] = {}
        if trained.is_deep:
            with tempfile.TemporaryDirectory() as tmp:
                for i, (k, stack) in enumerate(zip(keys, stacks, strict=True)):
                    report(30 + 60 * i / len(keys), f"Explanation map of exam {k} ({method})")
                    amap = trained.explain(stack, method=method)
                    f = save_map_nifti(amap, stack.affine, Path(tmp) / f"map-{k}.nii.gz")
                    maps[k] = {method: store.put_file(f, category="maps")[0]}
        with transaction.atomic():
            existing = {p.exam_id: p for p in Prediction.objects.select_for_update()
                        .filter(model_version=model_version, exam_id__in=[int(k) for k in keys])}
            for k, p, d in zip(keys, prob, decision, strict=True):
                old = existing.get(int(k))
                if old is None:
                    created += 1
                elif abs(old.probability - float(p)) > 1e-9 or old.decision != bool(d):
                    changed.append({"exam": int(k), "before": old.probability, "after": float(p)})
                Prediction.objects.update_or_create(
                    model_version=model_version, exam_id=int(k),
                    defaults={"probability": float(p), "decision": bool(d),
                              "label": pos_label if d else neg_label, "threshold": trained.threshold,
                              "explanation": {"output": "calibrated probability", "family": trained.family,
                                              "map_method": method if trained.is_deep else None},
                              "maps": maps.get(k, {}), "warnings": warnings[k]})
            audit_record(action="predictions.make", actor=user, target=model_version,
                         details={"n": len(keys), "created": created, "changed": changed,
                                  "skipped": [s["exam"] for s in skipped]})
    except BaseException:
        store.rollback()
        raise
    report(100, f"{len(keys)} predictions")
    return len(keys)


def _labels(task: str) -> tuple[str, str]:
    from ml.classical.tasks import TASKS

    return TASKS[task]


# --- label efficiency across registered runs ------------------------------------------------------

def label_efficiency_runs(model_version: ModelVersion) -> list[dict[str, Any]]:
    """The learning curve this version belongs to: every WP3 version of the same task, training
    cohort and external site (any family, label fraction and seed), one row each with its external
    AUC and CI. Empty for a version without an external site (LOSO or an internal test)."""
    if not is_classifier_version(model_version) or model_version.external_site_id is None:
        return []
    versions = (ModelVersion.objects.filter(task=model_version.task, training_cohort=model_version.training_cohort_id,
                                            external_site=model_version.external_site_id,
                                            config__protocol=PROTOCOL)
                .only("pk", "name", "version", "config", "metrics").order_by("pk"))
    rows = []
    for mv in versions:
        auc = ((mv.metrics or {}).get("external") or {}).get("metrics", {}).get("auc") or {}
        if auc.get("estimate") is None:
            continue
        cfg = mv.config or {}
        calib = ((mv.metrics or {}).get("external") or {}).get("calibration_stats") or {}
        rows.append({"pk": mv.pk, "version": str(mv), "family": cfg.get("family"),
                     "fraction": float(cfg.get("label_fraction", 1.0)), "seed": cfg.get("seed"),
                     "n_train": len((cfg.get("split") or {}).get("train") or []) or None,
                     "auc": auc["estimate"], "auc_lo": auc.get("lower"), "auc_hi": auc.get("upper"),
                     "brier": calib.get("brier")})
    return rows


def label_efficiency(model_version: ModelVersion) -> dict[str, Any] | None:
    """Table of :func:`label_efficiency_runs` per family and label fraction (mean AUC over seeds, SD,
    mean CI), for the model page; None with fewer than two runs."""
    import pandas as pd

    from ml.classify.protocol import summarise_learning_curve

    runs = label_efficiency_runs(model_version)
    if len(runs) < 2:
        return None
    summary = summarise_learning_curve(pd.DataFrame(runs)).sort_values(["family", "fraction"], kind="stable")
    rows = [{"family": r.family, "fraction": r.fraction, "seeds": int(r.seeds), "auc_mean": r.auc_mean,
             "auc_sd": None if not np.isfinite(r.auc_sd) else r.auc_sd,
             "auc_lo": r.auc_lo, "auc_hi": r.auc_hi,
             "n_train": None if not np.isfinite(r.n_train) else r.n_train,
             "current": (r.family == model_version.config.get("family")
                         and abs(r.fraction - float(model_version.config.get("label_fraction", 1.0))) < 1e-9)}
            for r in summary.itertuples()]
    return {"rows": rows, "n_runs": len(runs), "site": model_version.external_site.name}


def label_efficiency_png(model_version: ModelVersion) -> bytes | None:
    """The learning-curve plot (:func:`ml.classify.protocol.learning_curve_figure`) of the version's runs."""
    import io

    import pandas as pd

    from ml.classify.protocol import learning_curve_figure

    runs = label_efficiency_runs(model_version)
    if len(runs) < 2:
        return None
    buf = io.BytesIO()
    learning_curve_figure(pd.DataFrame(runs), test_site=model_version.external_site.name).savefig(buf, format="png")
    return buf.getvalue()
