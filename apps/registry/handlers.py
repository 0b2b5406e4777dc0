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


def _links(mv: ModelVersion) -> list[dict]:
    return [{"label": f"Open {mv}", "url": reverse("registry:detail", args=[mv.pk])}]
