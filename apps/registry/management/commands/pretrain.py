from pathlib import Path

import yaml
from django.core.management.base import BaseCommand, CommandError

from apps.jobs.cli import run_job_with_bar
from apps.registry.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Self-supervised pretraining of the PET + MRI foundation encoder (3D ViT; masked inpainting, "
        "cross-modal prediction, contrastive) on a cohort's prepared exams, run here with a progress bar "
        "(the same job a GPU worker runs). Registers a model version with its checkpoint and SHA-256, "
        "config, exams seen, parent, per-task losses, linear probe vs a random encoder, retrieval and "
        "reconstructions. For several GPUs use torchrun (docs/deploy.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--config", required=True, help="YAML pretraining config (configs/foundation/*.yaml)")
        parser.add_argument("--cohort", required=True, help="cohort name")
        parser.add_argument("--init", help="start from a local checkpoint file or a registered model version id "
                                           "(matching weights loaded, the rest reported; nothing is downloaded)")
        parser.add_argument("--resume", action="store_true",
                            help="continue the same run (same config, cohort and init) from its last checkpoint")
        parser.add_argument("--held-out", type=float, default=0.2,
                            help="fraction of patients kept out of pretraining (reconstructions, retrieval)")
        parser.add_argument("--name", default="foundation-vit", help="registered model name")
        parser.add_argument("--export-index", metavar="DIR",
                            help="only write the pretraining exams' stack index to DIR for a torchrun run "
                                 "(python -m ml.foundation.train --index DIR; docs/deploy.md)")
        parser.add_argument("--register-run", metavar="DIR",
                            help="register a run trained outside (torchrun) in DIR, on the index --export-index "
                                 "wrote with the same config, cohort and --held-out")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **opts):
        path = Path(opts["config"])
        if not path.is_file():
            raise CommandError(f"{path}: no such config file")
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise CommandError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(config, dict):
            raise CommandError(f"{path}: expected a mapping of config keys")
        if not 0 <= opts["held_out"] < 1:
            raise CommandError(f"--held-out must be in [0, 1), got {opts['held_out']}")
        if opts["export_index"] and opts["register_run"]:
            raise CommandError("give --export-index or --register-run, not both")
        if opts["export_index"]:
            from apps.registry.foundation import FoundationError, foundation_export_index

            try:
                written = foundation_export_index(cohort=opts["cohort"], config=config, out_dir=opts["export_index"],
                                                  held_out=opts["held_out"], log=self.stderr.write)
            except FoundationError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(self.style.SUCCESS(f"Wrote {written}"))
            self.stdout.write(f"  torchrun --standalone --nproc_per_node=gpu -m ml.foundation.train --config {path} "
                              f"--index {written.parent} --out RUN_DIR\n"
                              f"  then: python manage.py pretrain --config {path} --cohort {opts['cohort']} "
                              f"--held-out {opts['held_out']} --register-run RUN_DIR")
            return
        job = run_job_with_bar(self, kind="pretrain", quiet=opts["quiet"], params={
            "config": config, "config_file": path.name, "cohort": opts["cohort"], "init": opts["init"],
            "resume": opts["resume"], "held_out": opts["held_out"], "name": opts["name"],
            "register_run": str(Path(opts["register_run"]).resolve()) if opts["register_run"] else None,
        })
        mv = ModelVersion.objects.get(pk=job.result["model"])
        self.stdout.write(self.style.SUCCESS(f"{job.result['message']} — model id {mv.pk}"))
        if not opts["quiet"] and job.log:
            self.stdout.write(job.log.rstrip())
        for task, p in (mv.metrics.get("probe") or {}).items():
            if "error" in p:
                self.stdout.write(f"  probe {task}: {p['error']}")
            else:
                random = p["random"]
                baseline = (f"random encoders {random['estimate']:.3f} (mean of {random['runs']}, "
                            f"{random['min']:.3f}-{random['max']:.3f})" if random.get("runs")
                            else f"random encoder {_auc(random)}")
                self.stdout.write(f"  probe {task}: AUC {_auc(p['encoder'])} vs {baseline} "
                                  f"({p['n_exams']} exams, {p['scope']})")


def _auc(value: dict) -> str:
    """``0.812 [0.700, 0.901]``; the interval left out where it could not be computed."""
    text = f"{value['estimate']:.3f}"
    if value.get("lower") is not None and value.get("upper") is not None:
        text += f" [{value['lower']:.3f}, {value['upper']:.3f}]"
    return text
