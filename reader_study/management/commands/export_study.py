"""``python manage.py export_study STUDY --format csv|imrmc|json [--out FILE]`` (thin CLI wrapper).

The files are built by :func:`reader_study.exports.study_export`, which also records the export in
the audit trail (actor: the system).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reader_study.exports import FORMATS, ExportError, study_export
from reader_study.models import Study


def study_by_ref(ref: str) -> Study:
    """A study by slug (or numeric id); CommandError naming the known slugs otherwise."""
    study = Study.objects.filter(slug=ref).first()
    if study is None and ref.isdigit():
        study = Study.objects.filter(pk=int(ref)).first()
    if study is None:
        known = ", ".join(Study.objects.order_by("slug").values_list("slug", flat=True)[:20]) or "none"
        raise CommandError(f"no study {ref!r} (studies: {known})")
    return study


class Command(BaseCommand):
    help = ("Export a reader study's submitted readings: the analysis-ready long CSV, the iMRMC input "
            "file, or JSON (results and readings). Pseudonymous reader and case codes only.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("study", help="study slug (or id)")
        parser.add_argument("--format", default="csv", choices=FORMATS, help="file format (default: csv)")
        parser.add_argument("--out", default=None, help="output file (default: standard output)")

    def handle(self, *args: Any, **options: Any) -> None:
        study = study_by_ref(options["study"])
        out = Path(options["out"]) if options["out"] else None
        if out is not None and not out.parent.is_dir():  # before the export is built and audited
            raise CommandError(f"{out.parent} is not a directory")
        try:
            export = study_export(study=study, format=options["format"])
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        if out is not None:
            tmp = out.with_name(f".{out.name}.partial")
            tmp.write_bytes(export.content)
            tmp.replace(out)  # a whole file or none
            self.stderr.write(self.style.SUCCESS(
                f"wrote {out} ({export.n_readings} readings, {len(export.content)} bytes)"))
        else:
            sys.stdout.flush()
            self.stdout.write(export.content.decode("utf-8"), ending="")
