"""WP2 bench: habitats, marker association and the biopsy target at initial diagnosis.

Usage::

    nice -n 10 python bench/bench_subregions.py [--stacks /work/data/stacks200_4mm] [--max-exams 120]
        [--margins 0 5] [--encoder CKPT] [--out var/bench_subregions] [--seed 0]

On the initial-diagnosis exams of a stack cache (``ml.foundation.data.build_stacks``; the shared
``/work/data/stacks200_4mm`` of the 200-patient generated cohort; ``index.csv`` when present,
otherwise the ``*_ses-01.npz`` files already written) it:

1. describes each tumour voxel (TBR, SUV relative to the tumour median, TTP, slope; plus the
   WP1 encoder's patch embeddings with ``--encoder``), fits habitats (Gaussian mixture, k by BIC
   in 2..5, ordered by mean TTP) on all exams, and tests the habitat signature against IDH,
   1p/19q and WHO grade (``marker_association``: logit OR per SD, MWU rank-biserial, Fisher, BH);
2. cross-fits (2 folds of exams) the learned maps on one fold and applies them to the other. The
   marker models (WHO grade 4 vs 2-3; ``--marker idh``) see the metabolically active tumour
   (TBR >= ``--min-tbr``, necrosis left out; the whole tumour when nothing reaches it) with the
   neighbourhood features: ``attr_mean``: the exact voxel attribution of the mean-pooled
   logistic model (``MarkerAttributionModel``); ``attr_mil``: captum Integrated Gradients of the
   multiple-instance model (``MILMarkerModel``, log-sum-exp pooling); ``habitat``: the posterior
   of the habitat with the largest share of the MIL attribution in the training fold;
   ``supervised``: a voxel logistic regression trained on the generator's true aggressive
   subregions of the training fold (an upper reference: a site would need multi-biopsy labels);
3. plans targets with each map and the two comparators (``suvmax``, ``earliest_ttp``) for each
   margin, and prints hit rate, distance and Dice with bootstrap CIs and the paired difference
   in hit rate from SUVmax (bootstrap CI, exact McNemar p).

CSV files (per-exam targets, summaries, association table) go to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.foundation.data import load_index, load_stack  # noqa: E402
from ml.subregions.aggressiveness import (  # noqa: E402
    MarkerAttributionModel,
    MILMarkerModel,
    habitat_attribution,
)
from ml.subregions.habitats import (  # noqa: E402
    CONTEXT_FEATURES,
    DYNAMIC_FEATURES,
    HabitatModel,
    pooled_frame,
    voxel_features,
)
from ml.subregions.signature import encode_marker, habitat_signature, marker_association  # noqa: E402
from ml.subregions.target import (  # noqa: E402
    earliest_ttp_target,
    evaluate_targets,
    map_target,
    suvmax_target,
)


def _paths(stacks: Path, max_exams: int | None) -> list[Path]:
    if (stacks / "index.csv").is_file():
        idx = load_index(stacks)
        idx = idx[idx["timepoint"] == "initial_diagnosis"]
        paths = [Path(p) for p in idx["path"]]
    else:
        paths = sorted(stacks.glob("*_ses-01.npz"))
    return paths[:max_exams] if max_exams else paths


def _btv_features(stack, emb, min_tbr: float):
    """Voxel features of the metabolically active tumour (TBR >= min_tbr) with the neighbourhood
    features; the whole tumour when no voxel reaches the threshold (low-uptake gliomas)."""
    dyn = DYNAMIC_FEATURES + CONTEXT_FEATURES
    try:
        return voxel_features(stack, embeddings=emb, dynamic=dyn, min_tbr=min_tbr)
    except ValueError:
        return voxel_features(stack, embeddings=emb, dynamic=dyn)


def _load(paths: list[Path], encoder_path: str | None, min_tbr: float) -> tuple[list, list, list]:
    encoder = None
    if encoder_path:
        from ml.foundation.model import encode, load_encoder

        encoder, _ = load_encoder(encoder_path)
    stacks, feats, btv = [], [], []
    for p in paths:
        try:
            s = load_stack(p)
        except Exception as exc:  # a file still being written by the cache builder
            print(f"  skip {p.name}: {exc}")
            continue
        if s.ttp_min is None or s.masks.get("tumor") is None or not s.masks["tumor"].any():
            continue
        if "aggressive" not in s.masks or not s.masks["aggressive"].any():
            continue
        emb = encode(encoder, s) if encoder is not None else None
        stacks.append(s)
        feats.append(voxel_features(s, embeddings=emb))
        btv.append(_btv_features(s, emb, min_tbr))
    return stacks, feats, btv


def _full_attribution(model, full, btv) -> np.ndarray:
    """The MIL attribution of the BTV voxels spread onto the whole-tumour voxels (0 elsewhere)."""
    vol = model.attribution_volume(btv)
    vals = vol[tuple(full.ijk.T)]
    return np.where(np.isfinite(vals), vals, 0.0)


def _voxel_supervised(train_feats, train_stacks, random_state: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = pd.concat([f.frame for f in train_feats], ignore_index=True)
    y = np.concatenate([(s.masks["aggressive"] > 0)[tuple(f.ijk.T)] for s, f in zip(train_stacks, train_feats)])
    w = np.concatenate([np.full(len(f.frame), 1.0 / len(f.frame)) for f in train_feats])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500, random_state=random_state))
    model.fit(X, y, logisticregression__sample_weight=w * len(train_feats))
    return model


def _by_pattern(per_exam: pd.DataFrame, groundtruth: str) -> pd.DataFrame:
    """Hit rate per method and aggressive-subregion pattern of the generator (n in the column names)."""
    gt = pd.read_csv(groundtruth, sep="\t", dtype=str)
    gt["key"] = gt["participant_id"] + "/" + gt["session_id"]
    pattern = gt.set_index("key")["aggressive_pattern"] if "aggressive_pattern" in gt else pd.Series(dtype=str)
    rows = per_exam.assign(pattern=per_exam["key"].map(pattern).fillna("n/a"))
    table = rows.pivot_table(index="method", columns="pattern", values="hit", aggfunc="mean")
    counts = rows[rows["method"] == rows["method"].iloc[0]]["pattern"].value_counts()
    table.columns = [f"hit {c} (n={counts.get(c, 0)})" for c in table.columns]
    return table.loc[per_exam["method"].unique()].round(3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", default="/work/data/stacks200_4mm", help="stack cache folder")
    ap.add_argument("--max-exams", type=int, default=None, help="use at most this many exams")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 5.0], help="safety margins (mm)")
    ap.add_argument("--radius", type=float, default=5.0, help="target region radius (mm)")
    ap.add_argument("--encoder", default=None, help="WP1 encoder checkpoint (adds patch embeddings)")
    ap.add_argument("--marker", default="who_grade", choices=["who_grade", "idh"],
                    help="marker the attribution model predicts")
    ap.add_argument("--min-tbr", type=float, default=1.6,
                    help="TBR threshold of the metabolically active tumour the marker models see")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--out", default="var/bench_subregions", help="folder for the CSV files")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--groundtruth", default=None,
                    help="the cohort's derivatives/groundtruth/groundtruth.tsv: hit rates also by aggressive_pattern "
                         "(static hotspot / dynamic hotspot)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stacks, feats, btv = _load(_paths(Path(args.stacks), args.max_exams), args.encoder, args.min_tbr)
    n = len(stacks)
    if n < 8:
        print(f"only {n} usable exams: need at least 8")
        return 1
    print(f"{n} initial-diagnosis exams with a tumour and a true aggressive subregion "
          f"({time.perf_counter() - t0:.0f} s to load and describe); features: {list(feats[0].frame.columns)[:6]}"
          f"{' ...' if feats[0].frame.shape[1] > 6 else ''}")
    keys = [s.key for s in stacks]

    # 1. habitats on all exams (unsupervised) and the association table
    t1 = time.perf_counter()
    hab = HabitatModel(method="gmm", k_range=(2, 3, 4, 5), random_state=args.seed)
    hab.fit(pooled_frame(feats, max_voxels=400, random_state=args.seed))
    k = hab.n_habitats_
    print(f"\nHabitats: GMM, k = {k} by BIC {({kk: round(v) for kk, v in hab.criterion_.items()})} "
          f"({time.perf_counter() - t1:.0f} s)")
    print(hab.means_frame().round(2).to_string())
    sigs = []
    for s, f in zip(stacks, feats):
        labels = f.to_volume(hab.predict(f.frame) + 1, fill=0, dtype=np.int16)
        sigs.append(habitat_signature(labels, k, suv=s.suv, ttp_min=s.ttp_min))
    sig = pd.DataFrame(sigs, index=keys)
    markers = pd.DataFrame([{m: s.meta.get(m, "n/a") for m in ("idh", "codeletion_1p19q", "who_grade")}
                            for s in stacks], index=keys)
    assoc = marker_association(sig, markers, n_boot=1000, random_state=args.seed)
    assoc.to_csv(out / "association.csv")
    top = assoc.summary_frame().head(12)[["n", "n_pos", "or_per_sd", "or_lo", "or_hi", "q_logit",
                                          "rank_biserial", "rb_lo", "rb_hi", "q_mwu", "q_fisher"]]
    print("\nAssociation (12 smallest MWU q):")
    print(top.to_string())

    # 2. learned maps, cross-fitted on two folds by patient
    y = encode_marker(args.marker, markers[args.marker].tolist())
    rng = np.random.default_rng(args.seed)
    fold = np.zeros(n, int)
    fold[rng.permutation(n)[: n // 2]] = 1
    names = ("attr_mean", "attr_mil", "habitat", "supervised")
    maps: dict[str, list] = {name: [None] * n for name in names}
    for f_id in (0, 1):
        tr = [i for i in range(n) if fold[i] != f_id and np.isfinite(y[i])]
        te = [i for i in range(n) if fold[i] == f_id]
        y_tr = y[tr].astype(int)
        mean_model = MarkerAttributionModel(C=1.0, random_state=args.seed).fit([btv[i] for i in tr], y_tr)
        mil = MILMarkerModel(beta=4.0, random_state=args.seed).fit([btv[i] for i in tr], y_tr)
        acc_mean = float((mean_model.predict([btv[i] for i in te]) == y[te]).mean())
        acc_mil = float((mil.predict([btv[i] for i in te]) == y[te]).mean())
        for label, m, acc in (("mean-pooled", mean_model, acc_mean), ("MIL", mil, acc_mil)):
            print(f"\nfold {f_id}: {label} marker model ({args.marker}), held-out accuracy {acc:.2f}, weights per SD: "
                  + ", ".join(f"{c}={v:+.2f}" for c, v in m.coef_frame_.items() if not c.startswith("emb_")))
        shares = np.zeros(k)
        for i in tr:
            shares += habitat_attribution(_full_attribution(mil, feats[i], btv[i]),
                                          hab.predict(feats[i].frame), k)
        best_h = int(np.argmax(shares))
        sup = _voxel_supervised([btv[i] for i in tr], [stacks[i] for i in tr], args.seed)
        print(f"fold {f_id}: habitat shares of the MIL attribution {np.round(shares / len(tr), 3).tolist()} "
              f"-> habitat {best_h}")
        for i in te:
            maps["attr_mean"][i] = mean_model.attribution_volume(btv[i])
            maps["attr_mil"][i] = mil.attribution_volume(btv[i])
            maps["habitat"][i] = feats[i].to_volume(hab.predict_proba(feats[i].frame)[:, best_h])
            maps["supervised"][i] = btv[i].to_volume(sup.predict_proba(btv[i].frame)[:, 1], fill=np.nan)

    # 3. targets and their evaluation
    truths = [s.masks["aggressive"] > 0 for s in stacks]
    affines = [s.affine for s in stacks]
    summaries = []
    for margin in args.margins:
        t2 = time.perf_counter()
        kw = {"margin_mm": margin, "radius_mm": args.radius}
        targets: dict[str, list] = {"suvmax": [], "earliest_ttp": [], **{name: [] for name in names}}
        for i, s in enumerate(stacks):
            tm = s.masks["tumor"] > 0
            targets["suvmax"].append(suvmax_target(s.suv, tm, s.affine, **kw))
            targets["earliest_ttp"].append(earliest_ttp_target(s.ttp_min, tm, s.affine, random_state=args.seed, **kw))
            for name in names:
                targets[name].append(map_target(maps[name][i], tm, s.affine, method=name, **kw))
        ev = evaluate_targets(targets, truths, affines, keys=keys, reference="suvmax", n_boot=args.n_boot,
                              random_state=args.seed)
        ev.per_exam.to_csv(out / f"targets_margin{margin:g}.csv", index=False)
        frame = ev.summary_frame()
        frame.insert(0, "margin_mm", margin)
        summaries.append(frame)
        print(f"\nBiopsy targets, margin {margin:g} mm, region radius {args.radius:g} mm, n = {n} "
              f"({time.perf_counter() - t2:.0f} s):")
        cols = ["hit_rate", "hit_lo", "hit_hi", "median_distance_mm", "distance_mm", "distance_lo", "distance_hi",
                "dice", "dice_lo", "dice_hi", "fallbacks", "hit_diff", "diff_lo", "diff_hi", "mcnemar_p"]
        print(frame[cols].round(3).to_string())
        if args.groundtruth:
            print(_by_pattern(ev.per_exam, args.groundtruth).to_string())
    pd.concat(summaries).to_csv(out / "targets_summary.csv")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; CSV in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
