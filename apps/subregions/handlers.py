"""Job handler of the subregions app: ``map_subregions`` per exam or per cohort, with progress."""
from apps.cohorts.handlers import exam_links
from apps.cohorts.models import Exam
from apps.jobs.models import Job
from apps.jobs.services import JobError, Progress, job_handler


@job_handler("map_subregions")
def handle_map_subregions(job: Job, progress: Progress) -> dict:
    """params: ``cohort`` (name) and/or ``exam`` (id), ``model`` (foundation version id or None),
    ``k``, ``margin_mm``."""
    from apps.registry.models import ModelVersion
    from apps.subregions.services import SubregionError, subregions_map

    p = job.params
    mv = ModelVersion.objects.filter(pk=p["model"]).first() if p.get("model") is not None else None
    if p.get("model") is not None and mv is None:
        raise JobError(f"no model version with id {p['model']}")
    exam = Exam.objects.filter(pk=p["exam"]).first() if p.get("exam") is not None else None
    if p.get("exam") is not None and exam is None:
        raise JobError(f"no exam with id {p['exam']}")
    try:
        done = subregions_map(cohort=p.get("cohort"), exam=exam, model_version=mv, k=p.get("k"),
                              margin_mm=float(p.get("margin_mm", 5.0)), user=job.created_by, progress=progress)
    except SubregionError as exc:
        raise JobError(str(exc)) from exc
    for s in done.skipped:
        progress.log(f"exam {s['exam']} skipped: {s['reason']}")
    progress.log(f"aggressiveness map: {done.aggressiveness_source}")
    from apps.subregions.models import SubregionMap

    exam_ids = list(SubregionMap.objects.filter(pk__in=done.maps).values_list("exam_id", flat=True))
    return {"message": done.message, "key": done.key, "maps": done.maps, "skipped": done.skipped,
            "analysis": done.analysis, "links": exam_links(exam_ids[:20])}
