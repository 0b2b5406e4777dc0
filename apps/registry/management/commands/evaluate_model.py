from django.core.management.base import BaseCommand, CommandError

from apps.registry.models import ModelVersion
from apps.registry.services import TASK_TIMEPOINTS, TrainingError, model_evaluate


class Command(BaseCommand):
    help = (
        "External evaluation of a registered model on a cohort or a site whose labels are known now (labels "
        "imported after the images count): AUC, sensitivity, specificity... with bootstrap 95% CIs at the model's "
        "stored cut-off, stored with the model under metrics.evaluations."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, type=int, help="model version id (see /models/)")
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--cohort", help="evaluate on this cohort")
        where.add_argument("--site", help="evaluate on this site's exams")
        parser.add_argument("--timepoint", choices=sorted({t for ts in TASK_TIMEPOINTS.values() for t in ts}))
        parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **opts):
        mv = ModelVersion.objects.filter(pk=opts["model"]).first()
        if mv is None:
            raise CommandError(f"no model version with id {opts['model']}")
        try:
            result = model_evaluate(model_version=mv, cohort=opts["cohort"], site=opts["site"],
                                    timepoint=opts["timepoint"], n_bootstrap=opts["bootstrap"], seed=opts["seed"])
        except TrainingError as exc:
            raise CommandError(str(exc)) from exc
        m = result["metrics"]
        self.stdout.write(self.style.SUCCESS(f"{mv} on {result['name']}: n={result['n']} " + "  ".join(
            f"{k}={m[k]['estimate']:.3f} [{m[k]['lower']:.3f}, {m[k]['upper']:.3f}]"
            for k in ("auc", "sensitivity", "specificity") if k in m)))
        if result["n_excluded_unlabelled"]:
            self.stdout.write(f"  {result['n_excluded_unlabelled']} exams without a label left out")
