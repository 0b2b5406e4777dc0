from django.core.management.base import BaseCommand, CommandError

from apps.cohorts.models import Cohort, Exam
from apps.jobs.cli import run_job_with_bar
from apps.registry.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Map the aggressive subregions of a cohort's prepared exams: habitats fitted on the cohort's tumour "
        "voxels (foundation-encoder embeddings + PET dynamics, or the PET dynamics only with --model none), "
        "the voxel aggressiveness map, and three biopsy targets (learned map, SUVmax hotspot, earliest-TTP "
        "cluster) with a safety margin; stores the maps, the target region (NIfTI, DICOM SEG) and the "
        "cohort's habitat-marker association table. Idempotent: a re-run replaces the same exams' maps."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True,
                            help="id of a foundation model version, or 'none' for the PET dynamics only")
        parser.add_argument("--cohort", required=True, help="cohort name (habitats are fitted on its exams)")
        parser.add_argument("--exam", type=int, default=None, help="map only this exam (id) of the cohort")
        parser.add_argument("--k", type=int, default=None, choices=range(1, 9), metavar="{1..8}",
                            help="number of habitats (default: chosen by BIC among 2..5)")
        parser.add_argument("--margin-mm", type=float, default=5.0,
                            help="safety margin of the targets from the tumour border, mm (default 5)")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **opts):
        model = None
        if str(opts["model"]).lower() != "none":
            try:
                pk = int(opts["model"])
            except ValueError as exc:
                raise CommandError(f"--model: a model version id or 'none', got {opts['model']!r}") from exc
            mv = ModelVersion.objects.filter(pk=pk).first()
            if mv is None:
                raise CommandError(f"no model version with id {pk}")
            if mv.family != "foundation":
                raise CommandError(f"{mv} is a {mv.family} model, not a foundation encoder")
            model = mv.pk
        cohort = Cohort.objects.filter(name=opts["cohort"]).first()
        if cohort is None:
            raise CommandError(f"no cohort named {opts['cohort']!r}")
        if opts["exam"] is not None and not cohort.exams.filter(pk=opts["exam"]).exists():
            if not Exam.objects.filter(pk=opts["exam"]).exists():
                raise CommandError(f"no exam with id {opts['exam']}")
            raise CommandError(f"exam {opts['exam']} is not in cohort {cohort.name!r}")
        if opts["margin_mm"] < 0:
            raise CommandError(f"--margin-mm must be >= 0, got {opts['margin_mm']}")
        job = run_job_with_bar(self, kind="map_subregions", quiet=opts["quiet"],
                               params={"model": model, "cohort": cohort.name, "exam": opts["exam"], "k": opts["k"],
                                       "margin_mm": opts["margin_mm"]})
        self.stdout.write(self.style.SUCCESS(job.result["message"]))
        for s in job.result.get("skipped", []):
            self.stderr.write(f"  exam {s['exam']} skipped: {s['reason']}")
