"""``manage.py generate_cohort``: thin wrapper around :func:`ml.phantoms.generate_cohort`."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from ml.phantoms.cli import add_cohort_arguments, describe, run_generate


class Command(BaseCommand):
    help = (
        "Generate a synthetic multi-centre 18F-FDOPA PET/MRI glioma cohort with ground truth as a "
        "BIDS-PET dataset (two exams per patient). Same seed, same bytes."
    )

    def add_arguments(self, parser):
        add_cohort_arguments(parser)

    def handle(self, *args, **opts):
        try:
            summary = run_generate(opts, self.stderr)
        except ValueError as err:
            raise CommandError(str(err)) from err
        self.stdout.write(self.style.SUCCESS(describe(summary)))
