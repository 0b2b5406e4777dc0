from django.core.management.base import BaseCommand, CommandError

from apps.jobs.cli import run_job_with_bar
from apps.registry.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Encode the prepared exams of a cohort with a registered foundation encoder: one embedding per exam "
        "and model version (global vector + patch grid on the common grid), stored for the subregion and "
        "classification work. Idempotent: exams already encoded are kept unless their preparation changed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, type=int, help="id of a foundation model version")
        parser.add_argument("--cohort", required=True, help="cohort name")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **opts):
        mv = ModelVersion.objects.filter(pk=opts["model"]).first()
        if mv is None:
            raise CommandError(f"no model version with id {opts['model']}")
        if mv.family != "foundation":
            raise CommandError(f"{mv} is a {mv.family} model, not a foundation encoder")
        job = run_job_with_bar(self, kind="encode_exams", quiet=opts["quiet"],
                               params={"model": mv.pk, "cohort": opts["cohort"]})
        self.stdout.write(self.style.SUCCESS(job.result["message"]))
        for s in job.result.get("skipped", []):
            self.stderr.write(f"  exam {s['exam']} skipped: {s['reason']}")
