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


def run_exam_jobs_inline(command: BaseCommand, exam_ids: list[int], *, kinds: list[str] | None = None,
                         quiet: bool = False) -> int:
    """Run per-exam jobs (default: settings.AMINOPET_AFTER_IMPORT_JOBS) here, one bar per kind.

    Returns the number of failed jobs; each failure is printed with its message.
    """
    from django.conf import settings

    from apps.jobs.services import handler_kinds

    failed = 0
    for kind in kinds or [k for k in settings.AMINOPET_AFTER_IMPORT_JOBS if k in handler_kinds()]:
        for pk in tqdm(exam_ids, desc=kind, unit="exam", disable=quiet, file=command.stderr._out):
            job = job_run_inline(kind=kind, params={"exam": pk})
            if job.status != JobStatus.SUCCEEDED:
                failed += 1
                command.stderr.write(f"{kind} of exam {pk}: {job.message}")
        command.stdout.write(command.style.SUCCESS(f"{kind}: {len(exam_ids)} exams"))
    return failed
