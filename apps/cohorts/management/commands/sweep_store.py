"""``manage.py sweep_store``: list (or delete) store files that no row names."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.cohorts.services.store import store_sweep_orphans


class Command(BaseCommand):
    help = ("List the image-store files (volumes, masks, thumbnails, models, plots, maps...) that no committed "
            "row names: a process killed between writing a file and committing its row leaves one behind. "
            "Nothing is deleted without --delete. Run it weekly (cron), after backups.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--delete", action="store_true", help="delete the orphans (default: only list them)")
        parser.add_argument("--older-than-hours", type=float, default=24.0,
                            help="only files older than this (an import may still be committing; default 24)")

    def handle(self, *args: Any, **options: Any) -> None:
        hours = options["older_than_hours"]
        if hours < 1:
            raise CommandError("--older-than-hours must be at least 1 (an import may still be committing)")
        sweep = store_sweep_orphans(older_than=timedelta(hours=hours), delete=options["delete"])
        for name in sweep.orphans:
            self.stdout.write(name)
        self.stdout.write(self.style.SUCCESS(sweep.message()))
