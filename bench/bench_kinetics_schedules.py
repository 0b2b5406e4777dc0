"""TTP and late slope of the same tumours under two frame schedules: fitted curve vs frame-bound.

Each generated patient (ml.phantoms, noise and PSF on) is rendered twice on the same scanner
(site ``nancy``) with two frame schedules of the generator's sites (default lyon: 8x15 s, 4x60 s,
5x180 s, 1x360 s = 27 min, and bordeaux: 6x10 s, 6x30 s, 3x120 s, 6x300 s = 40 min), the tumour
TAC taken in the truth mask, and TTP/slope computed both ways (ml.quant.quantify_exam with
kinetics="fit" and "frames"). Prints the paired differences and writes a figure.

    .venv/bin/python bench/bench_kinetics_schedules.py --patients 20 --figure docs/figures/kinetics_schedules.png
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from ml.phantoms import make_exam
from ml.phantoms.sites import site_profile
from ml.quant import QuantConfig, quantify_exam


def measure(seed: int, patient: int, site, timepoint: str) -> dict:
    exam = make_exam(seed=seed, patient_index=patient, site=site, timepoint=timepoint, include_mr=False)
    factor = exam.suv_factor
    dyn = exam.pet_dynamic.data * factor
    static = exam.pet_static.data * factor
    out = {"truth_ttp": exam.truth.ttp_min}
    for method in ("fit", "frames"):
        q = quantify_exam(pet_static=static, pet_dynamic=dyn, frame_start_s=exam.frame_start_s,
                          frame_duration_s=exam.frame_duration_s, affine=exam.pet_static.affine,
                          tumor_mask=exam.pet_masks["tumor"] > 0, background_mask=exam.pet_masks["background"] > 0,
                          config=QuantConfig(kinetics=method, maps_region="none", n_clusters=0))
        out[f"ttp_{method}"] = q.ttp_min
        out[f"slope_{method}"] = q.slope_suv_per_h
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--schedules", nargs=2, default=["lyon", "bordeaux"])
    parser.add_argument("--figure", default=None)
    args = parser.parse_args()
    base = site_profile("nancy")
    sites = [dataclasses.replace(base, frame_durations_s=site_profile(s).frame_durations_s) for s in args.schedules]
    rows = {s: [] for s in args.schedules}
    t0 = time.perf_counter()
    for p in range(args.patients):
        for name, site in zip(args.schedules, sites, strict=True):
            rows[name].append(measure(args.seed, p, site, "initial_diagnosis"))
    a, b = (rows[s] for s in args.schedules)
    print(f"{args.patients} patients x 2 schedules ({' vs '.join(args.schedules)}), "
          f"{time.perf_counter() - t0:.0f} s")
    for key, unit in (("ttp", "min"), ("slope", "SUV/h")):
        for method in ("fit", "frames"):
            x = np.array([r[f"{key}_{method}"] for r in a])
            y = np.array([r[f"{key}_{method}"] for r in b])
            d = y - x
            print(f"{key:5s} {method:6s}: |diff| median {np.median(np.abs(d)):.2f} {unit}, 90th pct "
                  f"{np.percentile(np.abs(d), 90):.2f}, max {np.max(np.abs(d)):.2f}; distinct values "
                  f"{len(np.unique(np.round(x, 3)))}/{len(np.unique(np.round(y, 3)))}")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.6), dpi=110)
        for i, (key, unit) in enumerate((("ttp", "min"), ("slope", "SUV/h"))):
            ax = fig.add_subplot(1, 2, i + 1)
            for method, colour in (("frames", "#aaaaaa"), ("fit", "#c0392b")):
                x = [r[f"{key}_{method}"] for r in a]
                y = [r[f"{key}_{method}"] for r in b]
                ax.scatter(x, y, s=18, color=colour, label=method)
            lim = ax.get_xlim()
            ax.plot(lim, lim, color="k", lw=0.6)
            ax.set_xlabel(f"{key.upper()} ({unit}), {args.schedules[0]} frames")
            ax.set_ylabel(f"{key.upper()} ({unit}), {args.schedules[1]} frames")
            ax.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
