"""WP3 diagnostic: a linear probe on the WP1 lesion embedding, trained on three sites, tested on the
fourth, by share of the training labels.

The WP3 ``probe`` family embeds a lesion-centred crop and averages all its tokens; this bench uses
what the WP1 probes use (``ml.foundation.probe.embed_stacks_pooled``: the whole brain encoded by
sliding windows, the tumour's patches averaged, weighted by their share of the mask), so the two
representations can be told apart on the same external site. Suspected-recurrence exams of a stack
index; training exams drawn by patient (``--fractions`` of the training sites' patients, stratified
by outcome, ``--seeds``); logistic regression with C chosen by inner 5-fold CV on the training exams
only; AUC on every exam of the test site with a bootstrap 95 % CI; the same for a randomly
initialised encoder of the same configuration; ``--site-standardise`` also z-scores each site's
embeddings with its own exams' mean and SD (unlabelled, transductive: a check for site offsets).

    nice -n 10 .venv/bin/python bench/bench_lesion_probe.py --stacks /work/data/stacks200_4mm \\
        --encoder RUN/model.pt --test-site paris
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.foundation.data import load_index  # noqa: E402
from ml.foundation.model import load_encoder  # noqa: E402
from ml.foundation.probe import POOLINGS, embed_stacks_pooled, random_encoder  # noqa: E402


def _auc_ci(y: np.ndarray, p: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float, float]:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, p))
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() != y[i].max():
            boots.append(roc_auc_score(y[i], p[i]))
    return auc, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", default="/work/data/stacks200_4mm")
    ap.add_argument("--encoder", required=True, help="WP1 checkpoint (model.pt)")
    ap.add_argument("--test-site", default="paris")
    ap.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--pooling", default="lesion", choices=list(POOLINGS))
    ap.add_argument("--site-standardise", action="store_true")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    import torch
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    index = load_index(args.stacks)
    index = index[index["timepoint"] == "suspected_recurrence"]
    pretrained = load_encoder(args.encoder, map_location="cpu")[0]
    encoders = {"pretrained": pretrained, "random": random_encoder(pretrained.config, 0)}
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{len(index)} suspected-recurrence exams; test site {args.test_site}; {args.pooling} embedding; "
          f"site-standardised: {args.site_standardise}")
    for name, enc in encoders.items():
        t0 = time.perf_counter()
        table = embed_stacks_pooled(enc, index, poolings=(args.pooling,))[args.pooling]
        cols = [c for c in table.columns if c.startswith("e") and c[1:].isdigit()]
        x = table[cols].to_numpy(float)
        y = (table["diagnosis"] == "progression").to_numpy(int)
        site, patient = table["site"].to_numpy(), table["patient"].to_numpy()
        if args.site_standardise:
            for s in np.unique(site):
                m = site == s
                x[m] = (x[m] - x[m].mean(0)) / (x[m].std(0) + 1e-6)
        test = site == args.test_site
        train_patients = np.unique(patient[~test])
        print(f"\n{name} encoder ({time.perf_counter() - t0:.0f} s to embed):")
        print(f"{'labels':>7} {'n train':>8} {'AUC mean (SD)':>15} {'mean 95% CI':>17}")
        for frac in fractions:
            aucs, los, his, ns = [], [], [], []
            for seed in seeds:
                rng = np.random.default_rng(seed)
                pos = [p for p in train_patients if y[patient == p][0] == 1]
                neg = [p for p in train_patients if y[patient == p][0] == 0]
                keep = set(rng.permutation(pos)[:max(2, round(frac * len(pos)))]) | \
                    set(rng.permutation(neg)[:max(2, round(frac * len(neg)))])
                tr = ~test & np.isin(patient, list(keep))
                sc = StandardScaler().fit(x[tr])
                cv = min(5, int(min(y[tr].sum(), (1 - y[tr]).sum())))
                clf = LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1.0], cv=cv, scoring="roc_auc",
                                           max_iter=5000).fit(sc.transform(x[tr]), y[tr])
                auc, lo, hi = _auc_ci(y[test], clf.predict_proba(sc.transform(x[test]))[:, 1], args.n_boot, rng)
                aucs.append(auc), los.append(lo), his.append(hi), ns.append(int(tr.sum()))
            print(f"{frac:>7.0%} {np.mean(ns):>8.0f} {np.mean(aucs):>8.3f} ({np.std(aucs):.3f}) "
                  f"[{np.mean(los):.3f}, {np.mean(his):.3f}]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
