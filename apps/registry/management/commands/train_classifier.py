from django.core.management.base import BaseCommand, CommandError

from apps.jobs.cli import run_job_with_bar
from apps.registry.deep import FAMILIES
from apps.registry.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Train a WP3 classifier (foundation encoder fine-tuned or linear-probed, 3D CNN from scratch, radiomics "
        "pipeline or T/S max rule) on a cohort's prepared exams with one protocol: splits by patient, an external "
        "site never seen in training or leave-one-site-out, a fraction of the labels, calibration and threshold "
        "on validation data. Runs here with a progress bar (the job a GPU worker runs, kind train_classifier); "
        "registers a version with its checkpoint, metrics (95% bootstrap CIs) and plots."
    )

    def add_arguments(self, parser):
        parser.add_argument("--family", required=True, choices=list(FAMILIES),
                            help="foundation (fine-tuned), probe (frozen encoder), cnn, radiomics or ts_rule")
        parser.add_argument("--task", default="progression", choices=["progression", "idh", "codeletion"])
        parser.add_argument("--cohort", required=True, help="training cohort name")
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--external-site", help="site held out as the external test set")
        where.add_argument("--loso", action="store_true", help="leave-one-site-out evaluation as well")
        parser.add_argument("--label-fraction", type=float, default=1.0,
                            help="fraction of the development patients whose labels are used (0-1]")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--encoder", type=int, help="foundation encoder model version id (default: random init)")
        parser.add_argument("--epochs", type=int, default=20, help="maximal epochs of the deep families")
        parser.add_argument("--crop", type=int, default=48, help="lesion-centred crop edge (voxels)")
        parser.add_argument("--calibration", default="platt", choices=["platt", "isotonic"])
        parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
        parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **opts):
        if not 0 < opts["label_fraction"] <= 1:
            raise CommandError(f"--label-fraction must be in (0, 1], got {opts['label_fraction']}")
        if opts["epochs"] < 1 or opts["bootstrap"] < 1:
            raise CommandError("--epochs and --bootstrap must be >= 1")
        job = run_job_with_bar(self, kind="train_classifier", quiet=opts["quiet"], params={
            "family": opts["family"], "task": opts["task"], "cohort": opts["cohort"],
            "external_site": opts["external_site"], "loso": opts["loso"], "label_fraction": opts["label_fraction"],
            "seed": opts["seed"], "encoder": opts["encoder"], "epochs": opts["epochs"], "crop": opts["crop"],
            "calibration": opts["calibration"], "n_bootstrap": opts["bootstrap"], "device": opts["device"],
        })
        mv = ModelVersion.objects.get(pk=job.result["model"])
        self.stdout.write(self.style.SUCCESS(f"{job.result['message']} — model id {mv.pk}"))
        for key in ("internal", "external"):
            ev = mv.metrics.get(key)
            if ev:
                m = ev["metrics"]
                self.stdout.write(f"  {ev['name']}: n={ev['n']} " + "  ".join(
                    f"{k}={m[k]['estimate']:.3f} [{m[k]['lower']:.3f}, {m[k]['upper']:.3f}]"
                    for k in ("auc", "sensitivity", "specificity") if m[k]['estimate'] is not None))
        loso = mv.metrics.get("loso")
        if loso:
            auc = loso["pooled"]["metrics"]["auc"]
            self.stdout.write(f"  leave-one-site-out pooled AUC {auc['estimate']:.3f} "
                              f"[{auc['lower']:.3f}, {auc['upper']:.3f}] (each site's cases scored by its own "
                              f"model: the pooled ranking mixes the models' scales)")
            for site, ev in loso["per_site"].items():
                a = ev["metrics"]["auc"]
                shown = "n/a" if a["estimate"] is None else f"{a['estimate']:.3f} [{a['lower']:.3f}, {a['upper']:.3f}]"
                self.stdout.write(f"  leave-one-site-out {site}: n={ev['n']} AUC {shown}")
