from django.core.management.base import BaseCommand, CommandError

from apps.jobs.cli import run_job_with_bar
from apps.registry.models import ModelVersion


class Command(BaseCommand):
    help = "Store a prediction (probability, decision, SHAP explanation) of a registered model for each exam of a cohort."

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, type=int, help="model version id (see /models/)")
        parser.add_argument("--cohort", required=True)
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, **opts):
        if not ModelVersion.objects.filter(pk=opts["model"]).exists():
            raise CommandError(f"no model version with id {opts['model']}")
        job = run_job_with_bar(self, kind="predict", quiet=opts["quiet"],
                               params={"model": opts["model"], "cohort": opts["cohort"]})
        self.stdout.write(self.style.SUCCESS(job.result["message"]))
