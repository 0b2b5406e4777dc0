"""Command-line interface shared by ``python -m ml.phantoms`` and ``manage.py generate_cohort``.

Both declare the same options through :func:`add_cohort_arguments` and call
:func:`run_generate`, so the Django command stays a thin wrapper.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from ml.phantoms.calibration import calibration_report
from ml.phantoms.cohort import CohortSummary, generate_cohort
from ml.phantoms.sites import SITES

__all__ = ["add_cohort_arguments", "run_generate", "describe", "text_progress", "main", "calibration_main"]


def add_cohort_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the generator's options on ``parser``."""
    parser.add_argument("--out", required=True, help="output BIDS folder (created; must be empty)")
    parser.add_argument("--patients", type=int, default=24, help="number of patients (two exams each)")
    parser.add_argument("--sites", type=int, default=3, choices=range(1, len(SITES) + 1),
                        help=f"number of sites, 1..{len(SITES)} ({', '.join(s.name for s in SITES)})")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--resolution", type=int, default=2, choices=(1, 2),
                        help="template resolution in mm (1 is about 8x slower)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--head-motion", action="store_true",
                        help="realistic, independent PET and MRI head positions (rotations up to 15 deg, "
                             "shifts up to 20 mm, varied fields of view; true transforms in the ground truth)")


def text_progress(stream: TextIO) -> Callable[[int, int], None]:
    """A progress callback: a redrawn bar on a terminal, else one line per tenth of the patients.

    Every line written to a non-terminal ends with a newline, so Django's ``OutputWrapper`` (which
    appends one otherwise) prints it unchanged.
    """
    start = time.monotonic()
    tty = bool(getattr(stream, "isatty", lambda: False)())
    last = [-1]

    def report(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / total)
        elapsed = time.monotonic() - start
        text = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} patients  {elapsed:5.1f} s"
        if tty:
            stream.write("\r" + text + ("\n" if done == total else ""))
        else:
            tenth = int(10 * done / total)
            if tenth == last[0] and done != total:
                return
            last[0] = tenth
            stream.write(text + "\n")
        stream.flush()

    return report


def run_generate(opts: dict, stream: TextIO) -> CohortSummary:
    """Generate a cohort from parsed options (keys of :func:`add_cohort_arguments`)."""
    return generate_cohort(
        opts["out"],
        n_patients=opts["patients"],
        n_sites=opts["sites"],
        seed=opts["seed"],
        resolution=opts["resolution"],
        workers=opts.get("workers"),
        overwrite=opts.get("overwrite", False),
        head_motion=bool(opts.get("head_motion", False)),
        progress=None if opts.get("quiet") else text_progress(stream),
    )


def describe(summary: CohortSummary) -> str:
    """One line describing a generated cohort."""
    return (f"Wrote {summary.n_patients} patients ({summary.n_exams} exams, {summary.n_files} files) "
            f"at sites {', '.join(summary.sites)} to {summary.root}; "
            f"{summary.n_progression} progressions, {summary.n_idh_mutant} IDH-mutant")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ml.phantoms``: generate a cohort."""
    parser = argparse.ArgumentParser(prog="python -m ml.phantoms", description=__doc__.splitlines()[0])
    add_cohort_arguments(parser)
    opts = vars(parser.parse_args(argv))
    try:
        summary = run_generate(opts, sys.stderr)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    print(describe(summary))
    return 0


def calibration_main(argv: Sequence[str] | None = None) -> int:
    """``python -m ml.phantoms.calibration DIR``: print the calibration table."""
    parser = argparse.ArgumentParser(prog="python -m ml.phantoms.calibration",
                                     description="AUCs of a generated cohort next to published targets")
    parser.add_argument("bids_dir", help="a cohort written by ml.phantoms")
    args = parser.parse_args(argv)
    try:
        print(calibration_report(args.bids_dir).summary())
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    return 0
