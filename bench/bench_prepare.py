"""Preparation without the registration: resampling every volume and mask onto the common grid,
storing them, thumbnails and the similarity QC, per exam (issue 10 goal: under 1.5 s at 2 mm).

Usage: ``python bench/bench_prepare.py [--patients 2] [--sites 2] [--repeat 3] [--profile]``.

Generates a small cohort with realistic head positions, imports it into a throw-away SQLite
database and media folder, registers each exam once (cached: the registration has its own figure
in ``bench_registration.py``) and times ``exam_prepare`` ``--repeat`` times per exam with that
registration, wall and CPU seconds (median over repeats, then median and max over exams).
``--profile`` prints a profile of one exam's preparation (pyinstrument if installed, else cProfile).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile of one exam (pyinstrument, else cProfile)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{work / 'db.sqlite3'}"
    os.environ["MEDIA_ROOT"] = str(work / "media")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    import apps.cohorts.services.prepare as prepare_module
    from apps.cohorts.models import Exam
    from apps.cohorts.services.bids import bids_import
    from ml.phantoms import generate_cohort

    call_command("migrate", verbosity=0)
    summary = generate_cohort(work / "bids", n_patients=args.patients, n_sites=args.sites, seed=args.seed,
                              head_motion=True, workers=2)
    report = bids_import(path=summary.root)
    exams = list(Exam.objects.filter(pk__in=report.new_exam_ids).select_related("patient"))
    original = prepare_module.register_exam
    cached: dict = {}

    def cached_register(**kw):
        if "current" not in cached:
            cached["current"] = original(**kw)
        return cached["current"]

    prepare_module.register_exam = cached_register
    walls, cpus = [], []
    for exam in exams:
        cached.clear()
        prepare_module.exam_prepare(exam=exam)  # registers once (cached), warms the template caches
        w_runs, c_runs = [], []
        for _ in range(args.repeat):
            w, c = time.perf_counter(), _cpu()
            prepare_module.exam_prepare(exam=exam)
            w_runs.append(time.perf_counter() - w)
            c_runs.append(_cpu() - c)
        walls.append(float(np.median(w_runs)))
        cpus.append(float(np.median(c_runs)))
        print(f"{exam}: resampling + thumbnails + storing {walls[-1]:.2f} s wall, {cpus[-1]:.2f} s CPU "
              f"({exam.volumes.filter(space='native').count()} volumes, {exam.masks.filter(space='native').count()} masks)")
    print(f"per exam: wall median {np.median(walls):.2f} s (max {max(walls):.2f}), "
          f"CPU median {np.median(cpus):.2f} s (max {max(cpus):.2f}); goal < 1.5 s")
    if args.profile:
        cached.clear()
        prepare_module.exam_prepare(exam=exams[0])
        try:
            from pyinstrument import Profiler
        except ImportError:  # not a dependency: the standard library's profiler instead
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.runcall(prepare_module.exam_prepare, exam=exams[0])
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        else:
            profiler = Profiler(interval=0.002)
            profiler.start()
            prepare_module.exam_prepare(exam=exams[0])
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False, show_all=False))
    print(f"(work folder {work}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
