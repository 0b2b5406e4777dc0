"""Job handlers of the quantification app."""
from apps.cohorts.handlers import exam_links
from apps.cohorts.models import Exam
from apps.jobs.models import Job
from apps.jobs.services import Progress, job_handler
from apps.quantification.services import exam_quantify


@job_handler("quantify_exam")
def handle_quantify_exam(job: Job, progress: Progress) -> dict:
    exam = Exam.objects.get(pk=job.params["exam"])
    quant = exam_quantify(exam=exam, radiomics=job.params.get("radiomics", True), progress=progress)
    return {"message": f"Quantified {exam}: TBRmax {quant.tbr_max:.2f}", "exam": exam.pk,
            "links": exam_links([exam.pk])}
