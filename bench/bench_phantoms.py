"""Time the synthetic cohort generator: 100 patients x 2 exams at 2 mm (target < 120 s on 2 cores).

Usage: ``python bench/bench_phantoms.py [--patients 100] [--sites 4] [--workers 2] [--calibration]``.
Prints wall time, seconds per exam, output size and, with ``--calibration``, the calibration table
of the generated cohort (the AUCs quoted in docs/phantoms.md).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.phantoms import calibration_report, generate_cohort  # noqa: E402
from ml.phantoms.exam import preload  # noqa: E402


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", action="store_true", help="also print the calibration table")
    parser.add_argument("--keep", help="write here instead of a temporary folder")
    args = parser.parse_args()
    t0 = time.perf_counter()
    preload(2)
    t_template = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "cohort"
        t1 = time.perf_counter()
        cpu0 = _cpu()
        summary = generate_cohort(out, n_patients=args.patients, n_sites=args.sites, seed=args.seed,
                                  workers=args.workers, overwrite=True)
        wall = time.perf_counter() - t1
        cpu = _cpu() - cpu0
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"template load: {t_template:.1f} s (once per process tree)")
        print(f"generate_cohort: {summary.n_patients} patients, {summary.n_exams} exams, "
              f"{args.workers} workers on {os.cpu_count()} CPUs: {wall:.1f} s "
              f"({wall / summary.n_exams:.2f} s/exam wall; target: 100 patients < 120 s on 2 cores)")
        print(f"CPU time of all processes: {cpu:.1f} s ({cpu / summary.n_exams:.2f} s/exam); "
              f"on {args.workers} otherwise idle cores: about {cpu / args.workers:.0f} s "
              f"(wall time above also counts other users of a shared machine; load average "
              f"{os.getloadavg()[0]:.1f})")
        print(f"output: {summary.n_files} files, {size / 1e9:.2f} GB")
        if args.calibration:
            t2 = time.perf_counter()
            print(calibration_report(out).summary())
            print(f"calibration_report: {time.perf_counter() - t2:.1f} s")


if __name__ == "__main__":
    main()
