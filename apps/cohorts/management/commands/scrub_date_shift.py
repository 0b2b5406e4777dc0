"""``manage.py scrub_date_shift``: remove the stored DICOM date shift from volumes imported before."""
from django.core.management.base import BaseCommand

from apps.cohorts.services.dicom import metadata_scrub_date_shift


class Command(BaseCommand):
    help = (
        "Remove 'date_shift_days' from the metadata of DICOM volumes imported before AMINOPET stopped "
        "storing it: beside the shifted dates it undoes the de-identification. Safe to run again."
    )

    def handle(self, *args, **opts):
        n = metadata_scrub_date_shift()
        self.stdout.write(self.style.SUCCESS(f"date shift removed from {n} volumes"))
