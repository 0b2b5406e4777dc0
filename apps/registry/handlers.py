"""Job handlers of the model registry (training and inference run on workers)."""
from django.urls import reverse

from apps.jobs.models import Job
from apps.jobs.services import Progress, job_handler
from apps.registry.models import ModelVersion
from apps.registry.services import classical_train, predictions_make


@job_handler("train_classical")
def handle_train_classical(job: Job, progress: Progress) -> dict:
    params = dict(job.params)
    mv = classical_train(user=job.created_by, progress=progress, **params)
    auc = mv.metrics["cv"]["metrics"]["auc"]
    return {"message": f"Registered {mv} (CV AUC {auc['estimate']:.3f})", "model": mv.pk, "links": _links(mv)}


@job_handler("predict")
def handle_predict(job: Job, progress: Progress) -> dict:
    mv = ModelVersion.objects.get(pk=job.params["model"])
    n = predictions_make(model_version=mv, cohort=job.params.get("cohort"), site=job.params.get("site"),
                         timepoint=job.params.get("timepoint"), user=job.created_by, progress=progress)
    return {"message": f"{n} predictions by {mv}", "model": mv.pk, "links": _links(mv)}


@job_handler("pretrain")
def handle_pretrain(job: Job, progress: Progress) -> dict:
    """Self-supervised pretraining of a foundation encoder (queued on the GPU queue, settings)."""
    from apps.registry.foundation import foundation_pretrain, foundation_register_run

    params = dict(job.params)
    common = dict(cohort=params["cohort"], config=params["config"], init=params.get("init"),
                  held_out=float(params.get("held_out", 0.2)), name=params.get("name") or "foundation-vit",
                  user=job.created_by, progress=progress, log=progress.log)
    if params.get("register_run"):  # trained outside the worker (torchrun): evaluate and register
        mv = foundation_register_run(run_dir=params["register_run"], **common)
    else:
        # a retried attempt (its worker was lost) continues from the run's last checkpoint
        resume = True if params.get("resume") else ("auto" if job.attempts > 1 else False)
        mv = foundation_pretrain(resume=resume, **common)
    losses = ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} not finite"
                       for k, v in mv.metrics.get("final_losses", {}).items())
    stuck = mv.metrics.get("at_chance") or []  # tasks whose last loss is at chance (the contrastive one)
    warning = f"; {', '.join(stuck)} at chance: did not learn" if stuck else ""
    return {"message": f"Registered {mv} ({losses or 'no losses'}{warning})", "model": mv.pk, "links": _links(mv)}


@job_handler("encode_exams")
def handle_encode_exams(job: Job, progress: Progress) -> dict:
    """Embeddings of a cohort's exams by a foundation encoder (idempotent)."""
    from apps.registry.foundation import embeddings_compute

    mv = ModelVersion.objects.get(pk=job.params["model"])
    done = embeddings_compute(model_version=mv, cohort=job.params["cohort"], user=job.created_by,
                              progress=progress)
    for s in done.skipped:
        progress.log(f"exam {s['exam']} skipped: {s['reason']}")
    return {"message": f"{done.n} exams embedded by {mv} ({done.created} new, {done.updated} changed, "
                       f"{len(done.skipped)} skipped)", "model": mv.pk, "created": done.created,
            "updated": done.updated, "unchanged": done.unchanged, "skipped": done.skipped, "links": _links(mv)}


@job_handler("train_classifier")
def handle_train_classifier(job: Job, progress: Progress) -> dict:
    """WP3 classifier training through the ml.classify protocol (queued on the GPU queue, settings)."""
    from apps.registry.deep import classifier_train

    mv = classifier_train(user=job.created_by, progress=progress, log=progress.log, **dict(job.params))
    ev = mv.metrics.get("external") or mv.metrics.get("internal") or {}
    auc = (ev.get("metrics") or {}).get("auc") or {}
    shown = f"{ev.get('name')} AUC {auc['estimate']:.3f}" if auc.get("estimate") is not None else "no AUC"
    return {"message": f"Registered {mv} ({shown})", "model": mv.pk, "links": _links(mv)}


def _links(mv: ModelVersion) -> list[dict]:
    return [{"label": f"Open {mv}", "url": reverse("registry:detail", args=[mv.pk])}]
