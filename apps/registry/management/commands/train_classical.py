from django.core.management.base import BaseCommand

from apps.jobs.cli import run_job_with_bar
from apps.registry.models import ModelVersion
from ml.classical import MODELS


class Command(BaseCommand):
    help = (
        "Train a classical model (radiomics/parameters + scikit-learn, or a clinical threshold rule) with "
        "nested cross-validation and optional external-site validation; registers a model version with "
        "its config, metrics (95% bootstrap CIs) and plots."
    )

    def add_arguments(self, parser):
        parser.add_argument("--task", required=True, choices=["progression", "idh", "codeletion"])
        parser.add_argument("--cohort", required=True, help="training cohort name")
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--external-site", help="site held out for external validation")
        where.add_argument("--loso", action="store_true",
                           help="also leave-one-site-out: each site held out in turn (metrics per site and pooled)")
        parser.add_argument("--model", default="logreg", choices=sorted(MODELS),
                            help="classifier, or 'threshold' for the clinical cut-off rule")
        parser.add_argument("--threshold-feature", help="feature of the threshold rule (default ts_max/tbr_max)")
        parser.add_argument("--features", default="parameters", choices=["parameters", "radiomics", "all"])
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, **opts):
        job = run_job_with_bar(self, kind="train_classical", quiet=opts["quiet"], params={
            "task": opts["task"], "cohort": opts["cohort"], "external_site": opts["external_site"],
            "algorithm": opts["model"], "threshold_feature": opts["threshold_feature"],
            "features": opts["features"], "seed": opts["seed"], "n_bootstrap": opts["bootstrap"],
            "loso": opts["loso"],
        })
        mv = ModelVersion.objects.get(pk=job.result["model"])
        self.stdout.write(self.style.SUCCESS(f"{job.result['message']} — model id {mv.pk}"))
        for key in ("cv", "external"):
            ev = mv.metrics.get(key)
            if ev:
                m = ev["metrics"]
                self.stdout.write(f"  {ev['name']}: n={ev['n']} " + "  ".join(
                    f"{k}={m[k]['estimate']:.3f} [{m[k]['lower']:.3f}, {m[k]['upper']:.3f}]"
                    for k in ("auc", "sensitivity", "specificity") if k in m))
        loso = mv.metrics.get("loso")
        if loso:
            for name, ev in [("pooled", loso["pooled"]), *loso["per_site"].items()]:
                auc = ev["metrics"]["auc"]
                shown = "n/a" if auc["estimate"] is None else (
                    f"{auc['estimate']:.3f} [{auc['lower']:.3f}, {auc['upper']:.3f}]")
                self.stdout.write(f"  leave-one-site-out {name}: n={ev['n']} auc={shown}")
