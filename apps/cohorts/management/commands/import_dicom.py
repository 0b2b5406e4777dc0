from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.cohorts.models import Timepoint
from apps.jobs.cli import run_exam_jobs_inline, run_job_with_bar


class Command(BaseCommand):
    help = (
        "Import PET and MR DICOM series (folder or zip) as one exam: converted to NIfTI with correct "
        "orientation, PET to body-weight SUV from the headers, de-identified."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="folder or .zip holding the DICOM files")
        parser.add_argument("--site", required=True, help="site name")
        parser.add_argument("--patient", required=True, help="pseudonymous patient code (never a name)")
        parser.add_argument("--exam", required=True, help="exam (session) code")
        parser.add_argument("--timepoint", default=Timepoint.INITIAL_DIAGNOSIS, choices=Timepoint.values)
        parser.add_argument("--day", type=int, default=0, help="days since the patient's first exam")
        parser.add_argument("--kind", action="append", default=[], metavar="DESCRIPTION=KIND",
                            help="volume kind of a series whose description is not recognised (repeatable)")
        parser.add_argument("--no-prepare", action="store_true")
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, **opts):
        path = Path(opts["path"]).resolve()
        if not path.exists():
            raise CommandError(f"{path}: no such file or folder")
        kinds = {}
        for item in opts["kind"]:
            if "=" not in item:
                raise CommandError(f"--kind {item!r}: expected DESCRIPTION=KIND")
            desc, kind = item.rsplit("=", 1)
            kinds[desc] = kind
        job = run_job_with_bar(self, kind="import_dicom", quiet=opts["quiet"], params={
            "path": str(path), "site": opts["site"], "patient": opts["patient"], "exam": opts["exam"],
            "timepoint": opts["timepoint"], "day": opts["day"], "kinds": kinds, "prepare": False,
        })
        self.stdout.write(self.style.SUCCESS(job.result["message"]))
        if job.result["new_exam_ids"] and not opts["no_prepare"]:
            run_exam_jobs_inline(self, job.result["new_exam_ids"], quiet=opts["quiet"])
