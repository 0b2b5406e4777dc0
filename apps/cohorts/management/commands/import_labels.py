from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.cohorts.services.labels import LabelsImportError, labels_import


class Command(BaseCommand):
    help = (
        "Add or correct outcomes (diagnosis and its basis, IDH, 1p/19q, MGMT, TERTp, WHO type/grade) of patients "
        "and exams already imported at one site, from a TSV keyed by BIDS participant_id (and session_id). "
        "Hospital spellings (yes/no, 1/0, positive/negative, wt/mut, PD/TRC, biopsy...) are mapped and reported; "
        "every problem is listed at once and nothing is changed unless the whole file is valid."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="labels TSV (header row; participant_id, session_id, label columns)")
        parser.add_argument("--site", required=True, help="site whose participants the file names")
        parser.add_argument("--dry-run", action="store_true", help="check and list the changes without writing")

    def handle(self, *args, **opts):
        path = Path(opts["file"])
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        try:
            report = labels_import(site=opts["site"], content=path.read_bytes(), source_name=path.name,
                                   dry_run=opts["dry_run"])
        except LabelsImportError as exc:
            raise CommandError(str(exc)) from exc
        for line in report.mapping_lines():
            self.stdout.write(f"  read {line}")
        if report.ignored_columns:
            self.stdout.write(f"  ignored columns: {', '.join(report.ignored_columns)}")
        for c in report.changes:
            where = c["participant_id"] + (f" {c['session_id']}" if c["session_id"] else "")
            self.stdout.write(f"  {where} {c['field']}: {c['old'] if c['old'] is not None else '(none)'} -> {c['new']}")
        self.stdout.write(self.style.SUCCESS(("DRY RUN, nothing written: " if report.dry_run else "") + report.message()))
