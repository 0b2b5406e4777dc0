from django.core.management.base import BaseCommand, CommandError

from apps.jobs.cli import run_job_with_bar
from apps.registry.models import ModelVersion
from apps.registry.services import TASK_TIMEPOINTS


class Command(BaseCommand):
    help = (
        "Store a prediction (probability, decision, SHAP explanation, warnings where the exam lies outside the "
        "model's development data) of a registered model for each quantified exam of a cohort or a site."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, type=int, help="model version id (see /models/)")
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--cohort", help="predict the exams of this cohort")
        where.add_argument("--site", help="predict the exams of this site")
        parser.add_argument("--timepoint", choices=sorted({t for ts in TASK_TIMEPOINTS.values() for t in ts}),
                            help="exams of this time point instead of the task's own, where the task allows it "
                                 "(IDH and 1p/19q: either; progression: suspected_recurrence only)")
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, **opts):
        mv = ModelVersion.objects.filter(pk=opts["model"]).first()
        if mv is None:
            raise CommandError(f"no model version with id {opts['model']}")
        if mv.task not in TASK_TIMEPOINTS:
            raise CommandError(f"{mv} is a {mv.get_task_display().lower()} model: it predicts nothing "
                               "(encode_exams stores its embeddings; train_classifier --encoder fine-tunes it)")
        if opts["timepoint"] and opts["timepoint"] not in TASK_TIMEPOINTS[mv.task]:
            raise CommandError(f"a {mv.task} model applies to {', '.join(TASK_TIMEPOINTS[mv.task])} exams, "
                               f"not {opts['timepoint']}")
        job = run_job_with_bar(self, kind="predict", quiet=opts["quiet"],
                               params={"model": opts["model"], "cohort": opts["cohort"], "site": opts["site"],
                                       "timepoint": opts["timepoint"]})
        self.stdout.write(self.style.SUCCESS(job.result["message"]))
