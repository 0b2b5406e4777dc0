"""Benchmark: whole OR + DBM analysis, 20 readers x 2 modalities x 1,000 cases, on one core.

Prints the time of ``or_analysis`` + ``dbm_analysis`` (closed-form jackknife from placement
values, vectorised) next to a plain loop implementation of the same analysis (recompute the AUC
for every reader, modality and left-out case, as RJafroc/MRMCaov do), checks that both give the
same F statistics, and prints the ratio. Target: under 50 ms for the library.

Run: ``.venv/bin/python bench/bench_mrmc.py [--readers 20] [--cases 1000] [--repeat 20]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, set before numpy loads its BLAS

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from reader_study.analysis import ReaderStudyData, dbm_analysis, or_analysis  # noqa: E402


def simulate(n_readers: int, n_cases: int, seed: int = 0) -> ReaderStudyData:
    """Roe-Metz-like study: binormal latent scores with reader and case effects, 5-point ratings."""
    rng = np.random.default_rng(seed)
    k1 = n_cases // 2
    truth = np.r_[np.zeros(n_cases - k1, int), np.ones(k1, int)]
    case = rng.normal(0, 0.7, n_cases)
    reader = rng.normal(0, 0.3, (1, n_readers, 1))
    shift = np.array([1.3, 1.6])[:, None, None] * truth[None, None, :]
    latent = shift + case[None, None, :] + reader + rng.normal(0, 0.7, (2, n_readers, n_cases))
    ratings = np.digitize(latent, [-0.5, 0.3, 1.0, 1.8]).astype(float) + 1.0
    return ReaderStudyData(ratings=ratings, truth=truth, modalities=("unaided", "aided"),
                           readers=tuple(f"R{i}" for i in range(n_readers)),
                           cases=tuple(f"C{i}" for i in range(n_cases)))


def auc_loop(neg: np.ndarray, pos: np.ndarray) -> float:
    """Mann-Whitney AUC by sorting (ties 1/2)."""
    both = np.concatenate([neg, pos])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size)
    sorted_vals = both[order]
    i = 0
    while i < both.size:  # midranks
        j = i
        while j + 1 < both.size and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r1 = ranks[neg.size:].sum()
    return (r1 - pos.size * (pos.size + 1) / 2) / (neg.size * pos.size)


def plain_loop_analysis(data: ReaderStudyData) -> tuple[float, float]:
    """OR (jackknife) and DBM RRRC F statistics with explicit loops; returns (F_OR, F_DBM)."""
    t, r, k = data.ratings.shape
    theta = np.empty((t, r))
    jk = np.empty((t, r, k))
    for ti in range(t):
        for ri in range(r):
            x = data.ratings[ti, ri]
            theta[ti, ri] = auc_loop(x[data.truth == 0], x[data.truth == 1])
            for kk in range(k):
                keep = np.arange(k) != kk
                jk[ti, ri, kk] = auc_loop(x[keep & (data.truth == 0)], x[keep & (data.truth == 1)])
    # OR: covariances averaged by loops
    sums = {"var": [], "cov1": [], "cov2": [], "cov3": []}
    for t1 in range(t):
        for r1 in range(r):
            for t2 in range(t):
                for r2 in range(r):
                    a = jk[t1, r1] - jk[t1, r1].mean()
                    b = jk[t2, r2] - jk[t2, r2].mean()
                    c = (k - 1) / k * float(a @ b)
                    key = ("var" if r1 == r2 else "cov2") if t1 == t2 else ("cov1" if r1 == r2 else "cov3")
                    sums[key].append(c)
    cov2, cov3 = np.mean(sums["cov2"]), np.mean(sums["cov3"])
    g = theta.mean()
    ms_t = r * sum((theta[i].mean() - g) ** 2 for i in range(t)) / (t - 1)
    ms_tr = sum((theta[i, j] - theta[i].mean() - theta[:, j].mean() + g) ** 2
                for i in range(t) for j in range(r)) / ((t - 1) * (r - 1))
    f_or = ms_t / (ms_tr + r * max(cov2 - cov3, 0.0))
    # DBM: pseudovalues and the three mean squares needed for RRRC
    y = k * theta[:, :, None] - (k - 1) * jk
    gy = y.mean()
    mt, mc = y.mean(axis=(1, 2)), y.mean(axis=(0, 1))
    mtr, mtc = y.mean(axis=2), y.mean(axis=1)
    ss_tc = sum(r * (mtc[i, c] - mt[i] - mc[c] + gy) ** 2 for i in range(t) for c in range(k))
    ss_trc = 0.0
    for i in range(t):
        for j in range(r):
            for c in range(k):
                ss_trc += (y[i, j, c] - mtr[i, j] - mtc[i, c] - y[:, j, c].mean() + mt[i]
                           + y[:, j, :].mean() + mc[c] - gy) ** 2
    ms_tc = ss_tc / ((t - 1) * (k - 1))
    ms_trc = ss_trc / ((t - 1) * (r - 1) * (k - 1))
    f_dbm = ms_t * k / (ms_tr * k + max(ms_tc - ms_trc, 0.0))
    return float(f_or), float(f_dbm)


def library_analysis(data: ReaderStudyData) -> tuple[float, float]:
    """The library path timed by the benchmark."""
    o = or_analysis(data)
    d = dbm_analysis(data)
    return o.rrrc.global_test.statistic, d.rrrc.global_test.statistic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=20)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    data = simulate(args.readers, args.cases)
    library_analysis(data)  # warm-up (imports, caches)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        f_lib = library_analysis(data)
        times.append(time.perf_counter() - t0)
    t_lib = float(np.median(times))
    t0 = time.perf_counter()
    f_loop = plain_loop_analysis(data)
    t_loop = time.perf_counter() - t0
    same = np.allclose(f_lib, f_loop, rtol=1e-9)
    print(f"design: {args.readers} readers x 2 modalities x {args.cases} cases, one core")
    print(f"library OR + DBM (median of {args.repeat}): {1000 * t_lib:8.1f} ms   (target < 50 ms)")
    print(f"plain loop implementation:           {1000 * t_loop:8.1f} ms")
    print(f"speed-up: {t_loop / t_lib:.0f}x   F(OR) {f_lib[0]:.6f} vs {f_loop[0]:.6f}, "
          f"F(DBM) {f_lib[1]:.6f} vs {f_loop[1]:.6f}: {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
