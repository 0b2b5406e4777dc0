"""``manage.py calibration_report DIR``: AUCs of a generated cohort next to published targets."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ml.phantoms.calibration import calibration_report


class Command(BaseCommand):
    help = (
        "Measure SUVmax, TBRmax, T/S max and TTP in every exam of a cohort made by generate_cohort "
        "(truth masks) and print their AUCs for progression and IDH next to the published values."
    )

    def add_arguments(self, parser):
        parser.add_argument("bids_dir", help="root of a cohort written by generate_cohort")

    def handle(self, *args, **opts):
        try:
            result = calibration_report(opts["bids_dir"])
        except ValueError as err:
            raise CommandError(str(err)) from err
        self.stdout.write(result.summary())
