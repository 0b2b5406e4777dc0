"""``python manage.py simulate_readers STUDY --readers N --seed S [--ai-benefit D]`` (thin wrapper).

Fills an open study's unanswered assignments with simulated readings
(:func:`reader_study.simulation.readers_simulate`; the model is described there and in
docs/statistician.md).
"""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reader_study.management.commands.export_study import study_by_ref
from reader_study.simulation import SimulationError, readers_simulate


class Command(BaseCommand):
    help = ("Simulate readers on an open study (correlated binormal ratings, a configurable AI benefit, "
            "log-normal reading times, questionnaires) so its results page shows real numbers.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("study", help="study slug (or id); the study must be open")
        parser.add_argument("--readers", type=int, required=True,
                            help="readers wanted; simulated reader accounts are added at the study's sites "
                                 "while no reading exists")
        parser.add_argument("--seed", type=int, required=True, help="random seed (same seed, same readings)")
        parser.add_argument("--ai-benefit", type=float, default=0.5,
                            help="added separation of positive from negative cases with the AI, in latent SD "
                                 "units (0: none, 0.5: moderate, 1: large; default 0.5)")

    def handle(self, *args: Any, **options: Any) -> None:
        study = study_by_ref(options["study"])
        if options["readers"] < 1:
            raise CommandError("--readers must be at least 1")
        try:
            summary = readers_simulate(study=study, n_readers=options["readers"], seed=options["seed"],
                                       ai_benefit=options["ai_benefit"])
        except SimulationError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(
            f"{study.slug}: {summary.readings_written} readings written, {summary.readers_added} readers added, "
            f"{summary.questionnaires_written} questionnaires"))
