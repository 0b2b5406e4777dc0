"""Pretrain a small CPU config in a time budget and probe it against a random encoder.

Issue 11's target: on a generated cohort of about 200 patients, the small CPU config pretrains in
under 30 minutes on 2 cores and its linear probe (logistic regression on frozen global embeddings,
patient-grouped cross-validation: every exam scored by a model that never saw its patient) beats the
same probe on a randomly initialised encoder (same config and seed) by at least 0.05 AUC, for
progression (suspected-recurrence exams) and IDH (initial-diagnosis exams). Three embeddings are
probed: the global one (mean over the brain), the global max one (each feature's maximum over the
brain's patches: no mask, the tumour's few patches not diluted) and the lesion one (mean over the
patches the tumour mask covers), each against the random encoder's same embedding.

    nice -n 10 .venv/bin/python bench/bench_pretrain.py --index /work/data/stacks200_4mm \
        --patients 200 --minutes 30

``--holdout F`` pretrains on the other patients only and probes the held-out fraction (stricter, fewer
probe exams), ``--holdout-site S`` the same with one site's patients (the WP3 external site: its
images never reach the encoder); by default pretraining sees every exam's images (no labels: self-supervised) and the
probe's cross-validation keeps patients apart. ``--bids DIR`` builds the stacks of a BIDS cohort into
``--index`` first (ml.foundation.data.build_stacks).

The probes are repeated (``--repeats``, 5): each run has its own patient-grouped fold split and its
own randomly initialised encoder, and the difference compares the means (one random draw moves the
baseline by several AUC points: a single draw decided earlier verdicts). ``--probe-only RUN/model.pt``
probes an existing checkpoint without pretraining (every patient, or the ``--holdout`` /
``--holdout-site`` ones).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.foundation.config import load_config  # noqa: E402
from ml.foundation.data import INDEX_COLUMNS, build_stacks, load_index  # noqa: E402
from ml.foundation.pretext import TASKS, contrastive_at_chance, contrastive_chance  # noqa: E402
from ml.foundation.probe import POOLING_MEANINGS, probe_reports, training_curve_png  # noqa: E402
from ml.foundation.train import pretrain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _index(folder: Path) -> pd.DataFrame:
    """The folder's index.csv, or (a folder still being built) an index of the stacks already there."""
    if (folder / "index.csv").is_file():
        return load_index(folder)
    rows = []
    for path in sorted(folder.glob("sub-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            meta = dict(zip(z["meta_keys"].tolist(), z["meta_values"].tolist()))
            rows.append({"key": str(z["key"]), **{k: meta.get(k, "n/a") for k in INDEX_COLUMNS[:-1]},
                         "path": str(path)})
    if not rows:
        raise SystemExit(f"{folder}: no index.csv and no stacks")
    index = pd.DataFrame(rows).set_index("key")
    complete = index.groupby("patient").size()
    print(f"{folder}: no index.csv yet, using the {len(index)} stacks there", flush=True)
    return index[index["patient"].isin(complete[complete == 2].index)]


def print_reports(reports: dict, minutes: float | None, n_patients: int, budget: float) -> dict[str, bool]:
    """Print each pooling's probes and the target's verdict (``minutes`` None: no pretraining timed)."""
    verdicts = {}
    for pooling, report in reports.items():
        ok = minutes is None or minutes < 30.0
        print(f"{pooling} embedding ({POOLING_MEANINGS[pooling]}):")
        for task in report.pretrained:
            p = report.pretrained[task]
            pre, ran = np.array(report.aucs("pretrained", task)), np.array(report.aucs("random", task))
            diff = report.difference[task]
            ok = ok and diff >= 0.05
            print(f"  {task:12s} pretrained AUC {pre.mean():.3f} (SD {pre.std():.3f}; first run [{p.ci_low:.3f}, "
                  f"{p.ci_high:.3f}])  random AUC {ran.mean():.3f} (SD {ran.std():.3f}, range {ran.min():.3f}-"
                  f"{ran.max():.3f})  difference {diff:+.3f}  (n={p.n_exams}, positives {p.n_positive}, "
                  f"{len(ran)} runs)")
        verdicts[pooling] = ok
        print(f"  target ({'' if minutes is None else '< 30 min, '}difference >= 0.05 for both): "
              f"{'met' if ok else 'NOT met'} ({n_patients} patients, {budget:g} min budget)")
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default="/work/data/stacks200_4mm", help="stack folder with index.csv")
    parser.add_argument("--bids", default=None, help="build the stacks of this BIDS cohort into --index first")
    parser.add_argument("--patients", type=int, default=200, help="first N patients of the index")
    parser.add_argument("--minutes", type=float, default=30.0, help="pretraining time budget")
    parser.add_argument("--config", default=str(REPO / "configs/foundation/cpu_small.yaml"))
    parser.add_argument("--out", default="/tmp/bench_pretrain", help="run folder (overwritten)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--holdout", type=float, default=0.0, help="fraction of patients kept out of pretraining")
    parser.add_argument("--holdout-site", default=None,
                        help="keep this site's patients out of pretraining and probe them only (an external site)")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--repeats", type=int, default=5,
                        help="probe runs: fold splits, each against a differently initialised random encoder")
    parser.add_argument("--probe-only", default=None,
                        help="skip pretraining: probe this checkpoint (model.pt of an earlier run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bids:
        build_stacks(args.bids, args.index, voxel_mm=4.0, workers=args.threads, limit=args.patients)
    index = _index(Path(args.index))
    patients = sorted(index["patient"].unique())[: args.patients]
    index = index[index["patient"].isin(patients)]
    config = load_config(args.config)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    rng = np.random.default_rng(config.seed)
    held = set(rng.choice(patients, size=int(round(args.holdout * len(patients))), replace=False)) if args.holdout else set()
    if args.holdout_site:
        held |= set(index.loc[index["site"] == args.holdout_site, "patient"])
        if not held:
            raise SystemExit(f"no patient of site {args.holdout_site!r} in the index")
    train_index = index[~index["patient"].isin(held)]
    probe_index = index[index["patient"].isin(held)] if held else index
    if args.probe_only:
        t1 = time.monotonic()
        reports = probe_reports(args.probe_only, probe_index, random_state=config.seed, repeats=args.repeats)
        print(f"probe of {args.probe_only} on {len(probe_index)} exams ({probe_index['patient'].nunique()} patients): "
              f"{(time.monotonic() - t1) / 60:.1f} min")
        print_reports(reports, None, len(patients), args.minutes)
        return 0
    out = Path(args.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)

    # fit the schedule to the budget: time a few steps of the config (incl. caching), then set epochs
    t0 = time.monotonic()
    probe_cfg = dataclasses.replace(config, epochs=1, max_minutes=None)
    calib = train_index.iloc[: min(len(train_index), 4 * config.batch_size)]
    cal = pretrain(probe_cfg, calib, out_dir=out / "calibration")
    step_s = cal.history[0]["seconds"] / max(1, cal.history[0]["steps"])
    steps_per_epoch = max(1, len(train_index) // config.batch_size)
    cache_s = len(train_index) * 0.05
    budget_s = args.minutes * 60.0 - (time.monotonic() - t0)
    epochs = max(1, int(math.floor(0.9 * (budget_s - cache_s) / (step_s * steps_per_epoch))))
    config = dataclasses.replace(config, epochs=min(config.epochs, epochs),
                                 max_minutes=max(0.5, budget_s / 60.0))
    print(f"exams {len(train_index)} for pretraining ({train_index['patient'].nunique()} patients), "
          f"probe on {len(probe_index)} exams; {step_s:.2f} s/step -> {config.epochs} epochs of "
          f"{steps_per_epoch} steps", flush=True)

    def progress(fraction: float, message: str) -> None:
        if "step 1/" in message:
            print(f"  {time.monotonic() - t0:7.1f} s  {message}", flush=True)

    result = pretrain(config, train_index, out_dir=out / "run", progress=progress)
    minutes = (time.monotonic() - t0) / 60.0
    training_curve_png(result.history, out / "curve.png")
    print(f"pretraining: {minutes:.1f} min wall (incl. calibration), {len(result.history)} epochs, "
          f"stopped early: {result.stopped_early}, {result.history[-1]['volumes_per_s']:.1f} exams/s last epoch")
    print("losses first -> last epoch: " + ", ".join(
        f"{k} {result.history[0][k]:.4f} -> {result.history[-1][k]:.4f}"
        for k in TASKS if k in result.history[0]))
    if "contrastive" in result.history[-1]:
        chance, last = contrastive_chance(config.batch_size), result.history[-1]["contrastive"]
        print(f"contrastive: chance log(2B - 1) = {chance:.3f}; last epoch {last:.3f} "
              f"({'at chance: it did not learn' if contrastive_at_chance(last, config.batch_size) else f'{chance - last:.3f} below chance'})")
    t1 = time.monotonic()
    reports = probe_reports(result.checkpoint, probe_index, random_state=config.seed, repeats=args.repeats)
    print(f"probe: {(time.monotonic() - t1) / 60:.1f} min (embedding {len(probe_index)} exams with the pretrained "
          f"encoder and {args.repeats} random ones; {args.repeats} patient-grouped fold splits)")
    verdicts = print_reports(reports, minutes, len(patients), args.minutes)
    (out / "report.json").write_text(json.dumps({"minutes": minutes, "epochs": len(result.history),
                                                 "patients": len(patients),
                                                 "probe": {k: r.to_dict() for k, r in reports.items()},
                                                 "target_met": verdicts,
                                                 "history": list(result.history)}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
