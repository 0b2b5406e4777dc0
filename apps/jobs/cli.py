"""Running a job from a management command: same handler as the worker, with a progress bar."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from apps.jobs.models import Job, JobStatus
from apps.jobs.services import job_run_inline


def run_job_with_bar(command: BaseCommand, *, kind: str, params: dict, quiet: bool = False) -> Job:
    """Run ``kind`` inline, drawing a progress bar on stderr; CommandError when it fails."""
    bar = None if quiet else tqdm(total=100, desc=kind, unit="%", leave=True, file=command.stderr._out)

    def echo(percent: int, message: str) -> None:
        if bar is not None:
            bar.n = percent
            if message:
                bar.set_postfix_str(message[:60], refresh=False)
            bar.refresh()

    job = job_run_inline(kind=kind, params=params, echo=echo)
    if bar is not None:
        bar.close()
    if job.status != JobStatus.SUCCEEDED:
        raise CommandError(job.message or f"job {job.pk} failed")
    return job
