"""``python manage.py mrmc FILE``: MRMC ROC analysis of a ratings file (thin CLI wrapper).

All statistics live in :mod:`reader_study.analysis`; this command only parses arguments, reads
the file, runs the chosen analysis and prints its ``summary()`` or ``to_dict()`` as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reader_study.analysis import (
    COV_METHODS,
    FOMS,
    FORMATS,
    dbm_analysis,
    or_analysis,
    read_ratings,
    ustat_analysis,
)


class Command(BaseCommand):
    help = (
        "Multi-reader multi-case ROC analysis (Obuchowski-Rockette with Hillis ddf, DBM, or the "
        "iMRMC U-statistic analysis for split-plot designs) of a ratings file."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="ratings file: long CSV (reader,case,modality,truth,rating), .imrmc or .lrc")
        parser.add_argument("--format", default="auto", choices=FORMATS, help="file format (default: auto-detect)")
        parser.add_argument("--cov", default="jackknife", choices=COV_METHODS,
                            help="case covariance estimator for OR (default: jackknife)")
        parser.add_argument("--method", default="or", choices=("or", "dbm", "ustat"),
                            help="or: Obuchowski-Rockette; dbm: Dorfman-Berbaum-Metz; "
                                 "ustat: iMRMC U-statistics (any design)")
        parser.add_argument("--fom", default="auc", choices=FOMS, help="figure of merit (default: auc)")
        parser.add_argument("--threshold", type=float, default=None,
                            help="decision threshold for sensitivity/specificity (rating >= threshold)")
        parser.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level (default 0.05)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of the text summary")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        if not path.exists():
            raise CommandError(f"{path}: file not found")
        if path.is_dir():
            raise CommandError(f"{path} is a folder; give a ratings file (long CSV, .imrmc or .lrc)")
        try:
            data = read_ratings(path, format=options["format"])
            if options["method"] == "ustat":
                if options["fom"] != "auc":
                    raise ValueError("--method ustat supports --fom auc only")
                result = ustat_analysis(data, alpha=options["alpha"])
            elif options["method"] == "dbm":
                result = dbm_analysis(data, fom=options["fom"], threshold=options["threshold"],
                                      alpha=options["alpha"])
            else:
                result = or_analysis(data, fom=options["fom"], cov=options["cov"],
                                     threshold=options["threshold"], alpha=options["alpha"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:  # unreadable: permissions, a device, a broken link
            raise CommandError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        if options["json"]:
            self.stdout.write(json.dumps(result.to_dict(), indent=2))
        else:
            self.stdout.write(result.summary())
