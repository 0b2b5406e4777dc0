from django.core.management.base import BaseCommand
from tqdm import tqdm

from apps.cohorts.models import Exam
from apps.jobs.services import job_run_inline


def prepare_inline(command: BaseCommand, exam_ids: list[int], *, quiet: bool = False) -> int:
    failed = 0
    for pk in tqdm(exam_ids, desc="prepare", unit="exam", disable=quiet, file=command.stderr._out):
        job = job_run_inline(kind="prepare_exam", params={"exam": pk})
        if job.status != "succeeded":
            failed += 1
            command.stderr.write(f"exam {pk}: {job.message}")
    command.stdout.write(command.style.SUCCESS(f"Prepared {len(exam_ids) - failed}/{len(exam_ids)} exams"))
    return failed


class Command(BaseCommand):
    help = "Resample exams onto the common grid and render QC thumbnails (all exams lacking it, or --all)."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="redo exams that are already prepared")
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, **opts):
        exams = Exam.objects.all()
        if not opts["all"]:
            exams = exams.exclude(volumes__space="common")
        prepare_inline(self, list(exams.values_list("pk", flat=True)), quiet=opts["quiet"])
