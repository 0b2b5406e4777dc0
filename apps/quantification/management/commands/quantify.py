import csv
import sys

from django.core.management.base import BaseCommand, CommandError

from apps.cohorts.models import Cohort, Exam, Timepoint
from apps.jobs.cli import run_exam_jobs_inline
from apps.quantification.services import CSV_COLUMNS, feature_table, quantification_rows


class Command(BaseCommand):
    help = (
        "Quantify exams (SUV, TBR, T/S, MTV, TTP, late slope, curve class, parametric maps, radiomics) "
        "and optionally write one CSV row per exam."
    )

    def add_arguments(self, parser):
        parser.add_argument("--cohort", help="only the exams of this cohort (default: every exam)")
        parser.add_argument("--csv", help="write the parameter table here ('-' for standard output)")
        parser.add_argument("--features-csv", help="write the radiomics feature table (one row per exam) here")
        parser.add_argument("--timepoint", choices=Timepoint.values, help="only exams at this time point")
        parser.add_argument("--missing-only", action="store_true", help="skip exams already quantified")
        parser.add_argument("--no-radiomics", action="store_true", help="parameters only (faster)")
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, **opts):
        exams = Exam.objects.select_related("patient__site")
        if opts["cohort"]:
            cohort = Cohort.objects.filter(name=opts["cohort"]).first()
            if cohort is None:
                raise CommandError(f"no cohort named {opts['cohort']!r}")
            exams = exams.filter(cohorts=cohort)
        if opts["timepoint"]:
            exams = exams.filter(timepoint=opts["timepoint"])
        if opts["missing_only"]:
            exams = exams.filter(quantification__isnull=True)
        ids = list(exams.values_list("pk", flat=True))
        if not ids and not (opts["csv"] or opts["features_csv"]):
            raise CommandError("no exam to quantify")
        if ids:
            from apps.jobs.services import job_run_inline

            failed = 0
            if opts["no_radiomics"]:
                for pk in ids:
                    job = job_run_inline(kind="quantify_exam", params={"exam": pk, "radiomics": False})
                    if job.status != "succeeded":
                        failed += 1
                        self.stderr.write(f"exam {pk}: {job.message}")
            else:
                failed = run_exam_jobs_inline(self, ids, kinds=["quantify_exam"], quiet=opts["quiet"])
            if failed:
                self.stderr.write(self.style.WARNING(f"{failed} exam(s) could not be quantified"))
        if opts["features_csv"]:
            table = feature_table(exams, features="radiomics")
            if table.empty:
                raise CommandError("no radiomics features stored for these exams (run without --no-radiomics)")
            labels = {e.pk: (e.patient.site.name, e.patient.code, e.code) for e in exams.filter(pk__in=table.index)}
            table.index = [f"{s}/{p}/{c}" for s, p, c in (labels[pk] for pk in table.index)]
            table.to_csv(opts["features_csv"], index_label="exam")
            self.stdout.write(self.style.SUCCESS(f"{table.shape[0]} exams x {table.shape[1]} features written to "
                                                 f"{opts['features_csv']}"))
        if opts["csv"]:
            rows = quantification_rows(exams.filter(pk__in=ids).select_related("quantification")
                                       if ids else exams)
            out = sys.stdout if opts["csv"] == "-" else open(opts["csv"], "w", newline="")
            writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
            if out is not sys.stdout:
                out.close()
                self.stdout.write(self.style.SUCCESS(f"{len(rows)} rows written to {opts['csv']}"))
