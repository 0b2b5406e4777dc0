"""WP3 label-efficiency benchmark: every model family x label fraction x seed on an external site.

Usage::

    python bench/bench_classify.py [--stacks /work/data/stacks200_4mm] [--test-site bordeaux]
        [--families foundation,probe,cnn,radiomics,ts_rule] [--fractions 0.1,0.25,0.5,1.0]
        [--seeds 0,1,2,3,4] [--epochs 15] [--crop 32] [--encoder CKPT.pt] [--loso radiomics,ts_rule]
        [--write-docs]

Reads the 4 mm channel stacks (``ml.foundation.data.build_stacks``: ``index.csv`` + one ``.npz``
per exam; without an index the ``.npz`` files are read directly), keeps the labelled
suspected-recurrence exams (progression vs treatment-related change), and runs the protocol of
:mod:`ml.classify.protocol`: splits by patient, the external site never seen in training, nested
label fractions, validation (20 % of the labelled patients) for early stopping, Platt calibration
and the Youden cut-off. Prints per fold and a summary table (AUC mean and SD over seeds, mean
bootstrap 95 % CI), the paired DeLong test of the best family against the T/S max rule on the
same external cases (per seed), optionally leave-one-site-out, and saves the plot (PNG), the
per-fold JSON and, with ``--write-docs``, the table into docs/results.md (its WP3 section).

The machine is shared: use ``--seeds``, ``--fractions``, ``--epochs`` and ``--crop`` to size the
run; the figures printed say what was run. ``nice -n 10`` it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def index_from_npz(folder: Path) -> pd.DataFrame:
    """An index like ``load_index`` from the ``.npz`` files themselves (while index.csv is missing)."""
    rows = []
    for path in sorted(p for p in folder.glob("*.npz") if not p.name.startswith(".")):
        with np.load(path, allow_pickle=False) as z:
            meta = dict(zip(z["meta_keys"].tolist(), z["meta_values"].tolist(), strict=True))
            rows.append({"key": str(z["key"]), **meta, "path": str(path)})
    if not rows:
        raise SystemExit(f"{folder}: no stacks (.npz)")
    return pd.DataFrame(rows).set_index("key")


def load_cohort_index(stacks: Path) -> pd.DataFrame:
    from ml.foundation.data import load_index

    if (stacks / "index.csv").is_file():
        return load_index(stacks)
    print(f"{stacks}: no index.csv yet, reading the .npz files", flush=True)
    return index_from_npz(stacks)


def markdown_table(summary: pd.DataFrame) -> str:
    lines = ["| family | labels | n train (mean) | seeds | AUC mean (SD) | mean 95% CI | Brier | calibration slope |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        sd = "" if not np.isfinite(r["auc_sd"]) else f" ({r['auc_sd']:.3f})"
        lines.append(f"| {r['family']} | {r['fraction'] * 100:.0f}% | {r['n_train']:.0f} | {r['seeds']} | "
                     f"{r['auc_mean']:.3f}{sd} | [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}] | {r['brier']:.3f} | "
                     f"{r['cal_slope']:.2f} |")
    return "\n".join(lines)


def time_inference(threads: int, voxel_mm: float = 2.0, crop: int = 48) -> list[str]:
    """Seconds for one case: calibrated probability + one explanation map, per deep family, at ``voxel_mm``.

    A generator exam (suspected recurrence) resampled onto the common grid; the models are fitted for
    one step (their cost does not depend on the weights).
    """
    import dataclasses

    import torch

    from ml.classify.artifact import TrainedClassifier
    from ml.classify.cnn import CnnClassifier
    from ml.classify.finetune import FoundationClassifier
    from ml.foundation.data import stack_from_arrays
    from ml.io.grid import common_grid, resample_to_grid
    from ml.phantoms import make_exam

    torch.set_num_threads(threads)
    exam = make_exam(seed=3, patient_index=0, site=0, timepoint="suspected_recurrence")
    grid = common_grid(voxel_mm)
    f = exam.suv_factor
    stack = stack_from_arrays(
        t1c=resample_to_grid(exam.t1c.data, exam.t1c.affine, grid),
        flair=resample_to_grid(exam.flair.data, exam.flair.affine, grid),
        suv=np.maximum(resample_to_grid(exam.pet_static.data * f, exam.pet_static.affine, grid), 0),
        affine=grid.affine, key="case",
        masks={"tumor": resample_to_grid(exam.pet_masks["tumor"].astype(np.float32), exam.pet_static.affine, grid,
                                         order=0)})
    two = [stack, dataclasses.replace(stack, key="case2")]
    lines = []
    for name, est in (("cnn (densenet)", CnnClassifier(arch="densenet", crop=crop, epochs=1, batch_size=2)),
                      ("cnn (resnet)", CnnClassifier(arch="resnet", crop=crop, epochs=1, batch_size=2)),
                      ("foundation (ViT)", FoundationClassifier(crop=crop, epochs=1, batch_size=2))):
        est.fit(two, [0, 1])
        trained = TrainedClassifier(family="cnn" if "cnn" in name else "foundation", estimator=est,
                                    calibrator=None, threshold=0.5)
        for method in ("integrated_gradients", "occlusion"):
            t0 = time.perf_counter()
            trained.predict_proba([stack])
            kw = {"window": 8} if method == "occlusion" else {}
            amap = trained.explain(stack, method=method, **kw)
            dt = time.perf_counter() - t0
            lines.append(f"{name:<18} {method:<21} {dt:6.1f} s per case ({voxel_mm:g} mm grid, crop {crop}^3, "
                         f"map {amap.shape}, {threads} thread(s))")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=Path, default=Path("/work/data/stacks200_4mm"))
    parser.add_argument("--test-site", default="bordeaux")
    parser.add_argument("--families", default="foundation,probe,cnn,radiomics,ts_rule")
    parser.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--crop", type=int, default=32, help="crop edge in voxels (32 at 4 mm = 128 mm)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--min-steps", type=int, default=150,
                        help="deep families: at least this many optimiser steps (small fractions get more epochs)")
    parser.add_argument("--arch", default="densenet", help="CNN architecture (resnet, densenet, densenet121)")
    parser.add_argument("--encoder", default=None, help="WP1 encoder checkpoint; default: random init")
    parser.add_argument("--pooling", default="lesion", choices=["lesion", "max", "mean"],
                        help="foundation/probe head: tokens weighted by the tumour mask (default), each feature's "
                             "max over the brain's patches (use --crop 48 at 4 mm) or the mean of all the crop's")
    parser.add_argument("--head-init", default="probe", choices=["random", "probe"],
                        help="fine-tuning starts from the linear probe's head (LP-FT, default) or a random one")
    parser.add_argument("--no-radiomics", action="store_true", help="radiomics family: clinical parameters only")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--loso", default="", help="families to run leave-one-site-out as well (comma list)")
    parser.add_argument("--loso-encoder", default=None, metavar="TEMPLATE",
                        help="leave-one-site-out of the foundation families with one encoder per held-out site, "
                             "pretrained without it: a path with {site}, e.g. DIR_no{site}/run/model.pt "
                             "(default: --encoder for every fold)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="only the first N labelled exams per site")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench_classify")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the table and plot into docs/results.md (WP3 section) and docs/figures")
    parser.add_argument("--inference", action="store_true",
                        help="only time inference + one explanation map per case (2 mm, 2 threads) and exit")
    args = parser.parse_args(argv)
    if args.inference:
        time_inference(threads=2)
        return 0

    import torch
    torch.set_num_threads(args.threads)
    from ml.classify.protocol import (
        LabelledCohort,
        StackLoader,
        learning_curve,
        leave_one_site_out,
        make_estimator,
    )

    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    families = [f for f in args.families.split(",") if f]
    index = load_cohort_index(args.stacks)
    cohort = LabelledCohort.from_index(index, "progression")
    if args.limit:
        keep = pd.Series(cohort.keys).groupby(pd.Series(cohort.sites)).head(args.limit).tolist()
        sub = index.loc[keep]
        cohort = LabelledCohort.from_index(sub, "progression")
    print(f"cohort: {len(cohort.keys)} labelled recurrence exams, {int(cohort.y.sum())} progression; sites "
          + ", ".join(f"{s}={sum(x == s for x in cohort.sites)}" for s in cohort.site_names), flush=True)
    load = StackLoader(index)
    common = {"epochs": args.epochs, "crop": args.crop, "batch_size": args.batch_size,
              "min_steps": args.min_steps}
    def factory_for(fam: str, encoder: str | None):
        if fam == "cnn":
            return lambda s: make_estimator("cnn", seed=s, arch=args.arch, **common)
        if fam in ("foundation", "probe"):
            extra = {"pooling": args.pooling} | ({"head_init": args.head_init} if fam == "foundation" else {})
            return lambda s: make_estimator(fam, seed=s, encoder_path=encoder, **extra, **common)
        if fam == "radiomics":
            return lambda s: make_estimator("radiomics", seed=s, radiomics=not args.no_radiomics)
        return lambda s: make_estimator(fam, seed=s)

    factories = {fam: factory_for(fam, args.encoder) for fam in families}
    t0 = time.perf_counter()
    lc = learning_curve(factories, cohort, load, test_site=args.test_site, fractions=fractions, seeds=seeds,
                        n_bootstrap=args.bootstrap, progress=lambda line: print(line, flush=True))
    wall = time.perf_counter() - t0
    summary = lc.summary_frame()
    print("\n" + markdown_table(summary))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "folds.json").write_text(json.dumps([f.to_dict() for f in lc.folds]))
    lc.table().to_csv(args.out / "folds.csv", index=False)
    fig_path = args.out / "wp3_learning_curve.png"
    lc.figure().savefig(fig_path)
    delong_lines = []
    full = summary[summary["fraction"] == max(fractions)]
    contenders = full[full["family"] != "ts_rule"]
    if "ts_rule" in families and len(contenders):
        best = str(contenders.sort_values("auc_mean", ascending=False)["family"].iloc[0])
        for seed, res in zip(seeds, lc.delong(best, "ts_rule", fraction=max(fractions)), strict=True):
            lo, hi = res.conf_int()
            delong_lines.append(f"seed {seed}: {best} AUC {res.auc1:.3f} vs T/S max rule {res.auc2:.3f}, "
                                f"difference {res.difference:+.3f} [{lo:+.3f}, {hi:+.3f}], z {res.z:.2f}, "
                                f"p {res.p_value:.3g} (n={res.n_positive}+{res.n_negative})")
        print("\npaired DeLong, best family at the largest fraction vs the T/S max rule, external site:")
        print("\n".join(delong_lines))
    loso_lines, loso = [], {}
    for fam in [f for f in args.loso.split(",") if f]:
        factory = factory_for(fam, args.encoder)
        if fam in ("foundation", "probe") and args.loso_encoder:  # each fold's encoder never saw its test site
            factory = {site: factory_for(fam, args.loso_encoder.format(site=site)) for site in cohort.site_names}
        res = loso[fam] = leave_one_site_out(factory, cohort, load, family=fam, seed=seeds[0],
                                             n_bootstrap=args.bootstrap)
        m = res.pooled.metrics["auc"]
        per = ", ".join(f"{f.split.test_site} {f.report.metrics['auc'].estimate:.3f}" for f in res.folds)
        loso_lines.append(f"{fam}: pooled AUC {m.estimate:.3f} [{m.lower:.3f}, {m.upper:.3f}]; per site {per}")
        print("LOSO " + loso_lines[-1], flush=True)
    # every other family against the rule, and the foundation families against the scratch CNN, on the
    # same held-out cases (each site's cases compared only with each other)
    pairs = [(fam, "ts_rule") for fam in loso if fam != "ts_rule" and "ts_rule" in loso]
    pairs += [(fam, "cnn") for fam in loso if fam in ("foundation", "probe") and "cnn" in loso]
    names = {"ts_rule": "T/S max rule", "cnn": "the CNN"}
    for fam, other in pairs:
        d, per_site = loso[fam].delong(loso[other])
        lo, hi = d.conf_int()
        sites = ", ".join(f"{f.split.test_site} {r.difference:+.3f}" for f, r in zip(loso[fam].folds, per_site,
                                                                                    strict=True))
        loso_lines.append(f"paired DeLong, {fam} vs {names[other]}, site-stratified (each site's cases "
                          f"ranked by the models that did not see it): mean AUC {d.auc1:.3f} vs "
                          f"{d.auc2:.3f}, difference {d.difference:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                          f"p {d.p_value:.3g} (n={d.n_positive}+{d.n_negative}; by site {sites})")
        print("LOSO " + loso_lines[-1], flush=True)
    print(f"\nwall time {wall / 60:.1f} min (learning curve), torch threads {args.threads}; plot {fig_path}")
    if args.write_docs:
        write_docs(args, lc, summary, delong_lines, loso_lines, wall, cohort)
    return 0


def write_docs(args, lc, summary, delong_lines, loso_lines, wall, cohort) -> None:
    fig_rel = Path("figures") / "wp3_learning_curve.png"
    lc.figure().savefig(ROOT / "docs" / fig_rel)
    enc = args.encoder or "none: randomly initialised encoder (no WP1 checkpoint was available)"
    text = [
        "## WP3: progression vs treatment-related change",
        "",
        "Written by `bench/bench_classify.py --write-docs` (between the markers of this section; the "
        "conclusion below it by hand).",
        "",
        "### What was run",
        "",
        f"* data: `{args.stacks}` (4 mm channel stacks), {len(cohort.keys)} labelled suspected-recurrence exams "
        f"({int(cohort.y.sum())} progression), sites " + ", ".join(
            f"{s} {sum(x == s for x in cohort.sites)}" for s in cohort.site_names) + ";",
        f"* external test site: **{args.test_site}** (never in training, validation, tuning or calibration);",
        f"* label fractions {lc.config['fractions']}, seeds {lc.config['seeds']}, nested labelled subsets; "
        "validation = 20% of the labelled patients (early stopping, Platt calibration, Youden cut-off);",
        f"* deep models: crop {args.crop}^3 voxels centred on the lesion, {args.epochs} epochs max, batch "
        f"{args.batch_size}, at least {args.min_steps} steps, CNN `{args.arch}`; foundation encoder: {enc};",
        f"* radiomics: clinical PET parameters{'' if args.no_radiomics else ' + IBSI radiomics of the TBR'}, "
        "impute/standardise/SelectKBest/logistic regression with an inner CV grid; T/S max rule: Youden cut-off;",
        f"* {args.bootstrap} bootstrap resamples; wall time {wall / 60:.1f} min on the shared 2-core CPU "
        f"({args.threads} torch thread).",
        "",
        "### Learning curve on the external site",
        "",
        markdown_table(summary),
        "",
        f"![learning curve]({fig_rel.as_posix()})",
        "",
    ]
    if delong_lines:
        text += ["### Best family vs the T/S max rule (paired DeLong, same external cases)", "",
                 *[f"* {line}" for line in delong_lines], ""]
    if loso_lines:
        text += ["### Leave-one-site-out", "", *[f"* {line}" for line in loso_lines], ""]
    path = ROOT / "docs" / "results.md"
    path.write_text(replace_section(path.read_text(), "wp3-classification", "\n".join(text)))
    print(f"wrote the WP3 classification section of {path} (its conclusion is written by hand)")


def replace_section(document: str, name: str, body: str) -> str:
    """``document`` with the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in document or end not in document:
        raise SystemExit(f"docs/results.md has no {start} ... {end} markers")
    head, rest = document.split(start, 1)
    return f"{head}{start}\n{body.strip()}\n{end}{rest.split(end, 1)[1]}"


if __name__ == "__main__":
    raise SystemExit(main())
