from django.core.management.base import BaseCommand

from apps.cohorts.models import Exam
from apps.jobs.cli import run_exam_jobs_inline


class Command(BaseCommand):
    help = "Resample exams onto the common grid and render QC thumbnails (exams lacking it, or --all)."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="redo exams that are already prepared")
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, **opts):
        exams = Exam.objects.all()
        if not opts["all"]:
            exams = exams.exclude(volumes__space="common")
        run_exam_jobs_inline(self, list(exams.values_list("pk", flat=True)), kinds=["prepare_exam"],
                             quiet=opts["quiet"])
