"""The one Celery task: run a Job row's registered handler (see apps.jobs.services)."""
from celery import shared_task

from apps.jobs.services import job_run


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_job(*, job_pk: int) -> str:
    job = job_run(job_pk=job_pk)
    return job.status
