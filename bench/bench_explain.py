"""Explanation maps of a 3D classifier: seconds per case at 2 mm and faithfulness per method.

What it does (issue 12, WP3 explanations):

1. Trains a tiny 3D CNN (conv-ReLU-pool x 3, global max pool, linear; LRP can run through it) for
   progression vs treatment-related change on the suspected-recurrence stacks of
   ``--stacks`` (default the shared ``/work/data/stacks200_4mm``, built by
   ``ml.foundation.data.build_stacks``), ``--n-train`` cases, and reports its AUC on ``--n-test``
   held-out patients.
2. Times inference plus one map per method per case on the 2 mm common grid (96 x 112 x 96; the
   4 mm stacks upsampled x2, the net is fully convolutional) with ``torch.set_num_threads(2)``;
   also the platform's CNN (``ml.classify.cnn.build_cnn("resnet")``, untrained: timing only) when
   that module is importable.
3. Faithfulness on the held-out cases at 4 mm: deletion and insertion AUC of each method's map
   against random attributions (inside the brain), and the overlap of each map with the true
   aggressive subregion of the progression cases (pointing game within 1 voxel, Dice of the
   region of the mask's size, ROC AUC of the map for the mask).
4. Prints which method scores best: the lowest mean rank over deletion gain, insertion gain and
   the overlap AUC, with the paired difference to the runner-up; the reader study's default is
   ``ml.explain.METHOD_PREFERENCE``, set from these figures (docs/results.md).

    nice -n 10 python bench/bench_explain.py [--stacks DIR] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.explain import (  # noqa: E402
    METHOD_PREFERENCE,
    METHODS,
    attribution_map,
    available_methods,
    faithfulness,
    mask_overlap,
)
from ml.explain.faithfulness import random_curves  # noqa: E402
from ml.foundation.data import ExamStack, load_stack  # noqa: E402

OCCLUSION_MM = 24.0  # occlusion window edge (--occlusion-mm)
IG_STEPS = 8  # integrated-gradients steps (--ig-steps)


def tiny_cnn(in_channels: int = 5, width: int = 8) -> nn.Sequential:
    """Conv-ReLU-pool x 3, global max pool, linear: ~10 k parameters, LRP-compatible."""
    return nn.Sequential(
        nn.Conv3d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(2 * width, 1),
    )


def load_cases(stacks: Path, limit: int, seed: int) -> list[ExamStack]:
    """Suspected-recurrence stacks with a diagnosis, shuffled by ``seed``, at most ``limit``."""
    paths = sorted(stacks.glob("*ses-02.npz"))
    if not paths:
        raise SystemExit(f"no suspected-recurrence stacks (*ses-02.npz) in {stacks}")
    rng = np.random.default_rng(seed)
    rng.shuffle(paths)
    cases: list[ExamStack] = []
    for p in paths:
        s = load_stack(p)
        if s.meta.get("diagnosis") in ("progression", "treatment_related"):
            cases.append(s)
        if len(cases) >= limit:
            break
    return cases


def label(s: ExamStack) -> float:
    return 1.0 if s.meta["diagnosis"] == "progression" else 0.0


def train(model: nn.Module, cases: list[ExamStack], *, epochs: int, seed: int) -> float:
    """Adam + BCE, batch 8, left-right flips; returns the seconds spent."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.stack([c.image for c in cases]))
    y = torch.tensor([label(c) for c in cases])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(cases))
        total = 0.0
        for i in range(0, len(order), 8):
            idx = order[i:i + 8]
            xb = x[idx].clone()
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb[flip] = xb[flip].flip(2)  # left-right (X is the first spatial axis, RAS)
            opt.zero_grad()
            loss = loss_fn(model(xb)[:, 0], y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(f"  epoch {epoch:3d}  loss {total / len(cases):.3f}", flush=True)
    model.eval()
    return time.perf_counter() - t0


def method_kwargs(method: str, voxel_mm: float, brain: np.ndarray) -> dict:
    if method == "occlusion":
        w = max(1, int(round(OCCLUSION_MM / voxel_mm)))
        return {"window": w, "mask": brain, "perturbations_per_eval": 16}
    if method == "integrated_gradients":
        return {"n_steps": IG_STEPS, "internal_batch_size": 4}
    return {}


def time_methods(model: nn.Module, cases: list[ExamStack], methods: list[str], name: str) -> dict:
    """Median seconds per case at 2 mm: inference and each map (inference included).

    Wall seconds depend on what else runs on the machine; the process CPU seconds do not (much):
    on 2 idle cores the wall time lies between CPU / 2 (perfect use of both threads) and CPU.
    """
    out: dict[str, list[tuple[float, float]]] = {"inference": []}
    for c in cases:
        x = torch.from_numpy(ndimage.zoom(c.image, (1, 2, 2, 2), order=1))[None]
        brain = ndimage.zoom(c.masks["brain"], 2, order=0) > 0
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            model(x)
        out["inference"].append((time.perf_counter() - t0, time.process_time() - c0))
        for m in methods:
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                model(x)
            attribution_map(model, x, method=m, **method_kwargs(m, 2.0, brain))
            out.setdefault(m, []).append((time.perf_counter() - t0, time.process_time() - c0))
            print(f"  {name} {m}: {out[m][-1][0]:.1f} s wall, {out[m][-1][1]:.1f} s CPU", flush=True)
    med = {k: {"wall_s": float(np.median([w for w, _ in v])), "cpu_s": float(np.median([c for _, c in v]))}
           for k, v in out.items()}
    print(f"\nSeconds per case at 2 mm (96x112x96, {torch.get_num_threads()} threads), {name}, "
          f"median of {len(cases)} (inference + one map), load average {os.getloadavg()[0]:.1f}:")
    for k, v in med.items():
        print(f"  {k:22s} wall {v['wall_s']:7.2f} s   CPU {v['cpu_s']:7.2f} s   "
              f"idle 2 cores ~{v['cpu_s'] / 2:.1f}-{v['cpu_s']:.1f} s  "
              f"{'< 10 s' if v['cpu_s'] < 10 else '>= 10 s' if v['cpu_s'] / 2 >= 10 else '~10 s'}")
    return med


def main(argv: list[str] | None = None) -> int:
    global IG_STEPS, OCCLUSION_MM
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", type=Path, default=Path("/work/data/stacks200_4mm"),
                    help="folder of exam stacks (.npz from ml.foundation.data.build_stacks)")
    ap.add_argument("--n-train", type=int, default=64, help="training cases")
    ap.add_argument("--n-test", type=int, default=24, help="held-out cases for AUC and faithfulness")
    ap.add_argument("--epochs", type=int, default=40, help="training epochs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, the net and the curves")
    ap.add_argument("--steps", type=int, default=10, help="steps of the deletion/insertion curves")
    ap.add_argument("--n-random", type=int, default=3, help="random attributions per case")
    ap.add_argument("--timing-cases", type=int, default=3, help="cases timed at 2 mm")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the target is 2 CPU cores)")
    ap.add_argument("--ig-steps", type=int, default=IG_STEPS, help="integrated-gradients steps")
    ap.add_argument("--occlusion-mm", type=float, default=OCCLUSION_MM, help="occlusion window edge (mm)")
    ap.add_argument("--skip-timing", action="store_true", help="no 2 mm timing")
    ap.add_argument("--skip-faithfulness", action="store_true", help="no faithfulness table")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    opts = ap.parse_args(argv)
    IG_STEPS, OCCLUSION_MM = opts.ig_steps, opts.occlusion_mm

    torch.set_num_threads(opts.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (others share the machine)")
    cases = load_cases(opts.stacks, opts.n_train + opts.n_test, opts.seed)
    if len(cases) < opts.n_train + 1:
        raise SystemExit(f"only {len(cases)} labelled suspected-recurrence stacks in {opts.stacks}")
    train_cases, test_cases = cases[:opts.n_train], cases[opts.n_train:]
    voxel = test_cases[0].voxel_mm
    print(f"{len(train_cases)} training, {len(test_cases)} test cases at {voxel:g} mm from {opts.stacks}; "
          f"progression {sum(label(c) for c in train_cases):.0f}/{len(train_cases)} and "
          f"{sum(label(c) for c in test_cases):.0f}/{len(test_cases)}")

    torch.manual_seed(opts.seed)
    model = tiny_cnn()
    print(f"tiny CNN, {sum(p.numel() for p in model.parameters())} parameters; training:")
    seconds = train(model, train_cases, epochs=opts.epochs, seed=opts.seed)
    with torch.no_grad():
        logits = model(torch.from_numpy(np.stack([c.image for c in test_cases])))[:, 0].numpy()
    y = np.array([label(c) for c in test_cases])
    auc = float(roc_auc_score(y, logits)) if 0 < y.sum() < len(y) else float("nan")
    print(f"trained in {seconds:.0f} s; held-out AUC {auc:.3f} (n={len(y)}, tiny model, not a WP3 result)")

    methods = [m for m, why in available_methods(model).items() if not why]
    timing = {}
    if not opts.skip_timing:
        timing["tiny_cnn"] = time_methods(model, test_cases[:opts.timing_cases], methods, "tiny CNN")
    try:
        if opts.skip_timing:
            raise ImportError("--skip-timing")
        from ml.classify.cnn import build_cnn
        platform_cnn = build_cnn("resnet", 5).eval()
        blocked = {m: why for m, why in available_methods(platform_cnn).items() if why}
        for m, why in blocked.items():
            print(f"platform ResNet: {m} not available: {why[:200]}...")
        # occlusion needs one forward per window (hundreds at 2 mm): not run for the bigger net
        timing["platform_resnet"] = time_methods(
            platform_cnn, test_cases[:1], [m for m in METHODS if m not in blocked and m != "occlusion"],
            "ml.classify ResNet (untrained)")
    except ImportError as exc:
        print(f"ml.classify.cnn not importable ({exc}): platform CNN not timed")

    if opts.skip_faithfulness:
        if opts.json:
            opts.json.parent.mkdir(parents=True, exist_ok=True)
            opts.json.write_text(json.dumps({"model_auc": auc, "timing_2mm": timing}, indent=2))
        return 0
    print(f"\nFaithfulness on {len(test_cases)} held-out cases at {voxel:g} mm "
          f"(steps {opts.steps}, {opts.n_random} random maps per case; IG {IG_STEPS} steps, "
          f"occlusion {OCCLUSION_MM:g} mm windows):")
    rows: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    for i, c in enumerate(test_cases):
        x = torch.from_numpy(c.image)[None]
        brain = c.masks["brain"] > 0
        rand = random_curves(model, x, mask=brain, steps=opts.steps, n_random=opts.n_random,
                             random_state=opts.seed + i)
        aggressive = c.masks.get("aggressive")
        has_truth = aggressive is not None and 0 < int((aggressive[brain] > 0).sum()) < int(brain.sum())
        for m in methods:
            t0 = time.perf_counter()
            amap = attribution_map(model, x, method=m, **method_kwargs(m, voxel, brain))
            r = rows[m]
            r.setdefault("seconds", []).append(time.perf_counter() - t0)
            res = faithfulness(model, x, amap, mask=brain, random=rand, steps=opts.steps,
                               random_state=opts.seed + i)
            for k, v in (("deletion_auc", res.deletion.auc), ("deletion_random", res.deletion_random.auc),
                         ("insertion_auc", res.insertion.auc), ("insertion_random", res.insertion_random.auc),
                         ("deletion_gain", res.deletion_gain), ("insertion_gain", res.insertion_gain)):
                r.setdefault(k, []).append(v)
            if has_truth and label(c) == 1:
                ov = mask_overlap(amap, aggressive, within=brain, top_percent=1, tolerance_vox=1)
                for k, v in (("pointing", ov.pointing), ("dice_matched", ov.dice_matched),
                             ("overlap_auc", ov.auc), ("top1_in_mask", ov.top_in_mask)):
                    r.setdefault(k, []).append(v)
        print(f"  case {i + 1}/{len(test_cases)} {c.key} ({c.meta['diagnosis']})", flush=True)

    def mean(m: str, k: str) -> float:
        v = rows[m].get(k, [])
        return float(np.mean(v)) if v else float("nan")

    def ci(m: str, k: str) -> str:
        v = np.asarray(rows[m].get(k, []))
        if v.size < 2:
            return ""
        boot = np.random.default_rng(0).choice(v, (2000, v.size)).mean(1)
        return f"[{np.percentile(boot, 2.5):+.3f}, {np.percentile(boot, 97.5):+.3f}]"

    n_truth = len(rows[methods[0]].get("pointing", []))
    print(f"\n{'method':22s} {'del AUC':>8s} {'random':>7s} {'gain (95% CI)':>24s} {'ins AUC':>8s} {'random':>7s} "
          f"{'gain (95% CI)':>24s} {'point':>6s} {'Dice':>6s} {'AUC':>6s} {'s/case':>7s}")
    for m in methods:
        print(f"{m:22s} {mean(m, 'deletion_auc'):8.3f} {mean(m, 'deletion_random'):7.3f} "
              f"{mean(m, 'deletion_gain'):+7.3f} {ci(m, 'deletion_gain'):>16s} {mean(m, 'insertion_auc'):8.3f} "
              f"{mean(m, 'insertion_random'):7.3f} {mean(m, 'insertion_gain'):+7.3f} {ci(m, 'insertion_gain'):>16s} "
              f"{mean(m, 'pointing'):6.2f} {mean(m, 'dice_matched'):6.3f} {mean(m, 'overlap_auc'):6.3f} "
              f"{mean(m, 'seconds'):7.2f}")
    print(f"(overlap with the aggressive subregion on the {n_truth} progression cases with one; "
          "pointing within 1 voxel; Dice of the top |mask| voxels)")
    criteria = ("deletion_gain", "insertion_gain", "overlap_auc")
    ranks = {m: 0.0 for m in methods}
    for k in criteria:
        order = sorted(methods, key=lambda m: -np.nan_to_num(mean(m, k), nan=-np.inf))
        for r, m in enumerate(order):
            ranks[m] += (r + 1) / len(criteria)
    best = min(methods, key=lambda m: ranks[m])
    print("mean rank over " + ", ".join(criteria) + ": "
          + ", ".join(f"{m} {ranks[m]:.2f}" for m in sorted(methods, key=ranks.get)))
    print(f"BEST METHOD on this model: {best}")
    runner = sorted(methods, key=lambda m: ranks[m])[1] if len(methods) > 1 else None
    if runner is not None:
        lo = np.asarray(rows[best]["deletion_gain"]) - np.asarray(rows[runner]["deletion_gain"])
        boot = np.random.default_rng(0).choice(lo, (2000, lo.size)).mean(1)
        low, high = np.percentile(boot, [2.5, 97.5])
        print(f"  {best} - {runner} deletion gain, paired: {lo.mean():+.3f} [95% CI {low:+.3f}, {high:+.3f}]"
              + ("  -> a tie" if low <= 0 <= high else ""))
    print("the reader study shows the first of ml.explain.METHOD_PREFERENCE a prediction has: "
          + ", ".join(METHOD_PREFERENCE) + " (LRP runs on none of the platform's models)")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps({
            "model_auc": auc, "n_train": len(train_cases), "n_test": len(test_cases),
            "n_truth": n_truth, "timing_2mm": timing, "best": best, "ranks": ranks,
            "methods": {m: {k: mean(m, k) for k in rows[m]} for m in methods},
        }, indent=2))
        print(f"figures written to {opts.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
