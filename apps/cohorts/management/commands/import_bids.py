from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.jobs.cli import run_exam_jobs_inline, run_job_with_bar


class Command(BaseCommand):
    help = (
        "Import a BIDS-PET dataset (folder or zip) into the cohort: labels from participants.tsv and "
        "sessions.tsv, anat/ and pet/ images, derivatives/ masks. Atomic; re-importing changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="BIDS dataset root, or a .zip of it")
        parser.add_argument("--site", help="site of participants without a 'site' column; with one, import only this site")
        parser.add_argument("--cohort", help="add the imported exams to this named cohort (created if needed)")
        parser.add_argument(
            "--no-prepare", action="store_true",
            help="skip the per-exam jobs (common grid, thumbnails, quantification); run them later",
        )
        parser.add_argument("--queue", action="store_true", help="queue the per-exam jobs on Celery workers instead of running them here")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, **opts):
        path = Path(opts["path"]).resolve()
        if not path.exists():
            raise CommandError(f"{path}: no such file or folder")
        job = run_job_with_bar(
            self, kind="import_bids", quiet=opts["quiet"],
            params={"path": str(path), "site": opts["site"], "cohort": opts["cohort"], "prepare": opts["queue"]},
        )
        self.stdout.write(self.style.SUCCESS(job.result["message"]))
        new = job.result["new_exam_ids"]
        if new and not opts["no_prepare"] and not opts["queue"]:
            run_exam_jobs_inline(self, new, quiet=opts["quiet"])
