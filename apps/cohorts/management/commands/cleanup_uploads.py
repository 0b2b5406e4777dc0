"""``manage.py cleanup_uploads``: remove uploaded archives that are no longer needed."""
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.cohorts.services.uploads import uploads_cleanup


class Command(BaseCommand):
    help = (
        "Remove uploaded archives (the originals, with names, IDs and birth dates): those whose import "
        "succeeded, those whose import failed more than AMINOPET_FAILED_UPLOAD_RETENTION_DAYS ago, and "
        "those no job names. Uploads of queued or running imports are kept. Run it daily (cron)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--retention-days", type=int, default=None,
            help=f"days to keep the upload of a failed import (default "
                 f"{settings.AMINOPET_FAILED_UPLOAD_RETENTION_DAYS}, AMINOPET_FAILED_UPLOAD_RETENTION_DAYS)",
        )

    def handle(self, *args, **opts):
        if opts["retention_days"] is not None and opts["retention_days"] < 0:
            raise CommandError("--retention-days must not be negative")
        report = uploads_cleanup(retention_days=opts["retention_days"])
        self.stdout.write(self.style.SUCCESS(report.message()))
