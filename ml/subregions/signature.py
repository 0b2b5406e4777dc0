"""Patient habitat signature and its association with the molecular markers.

:func:`habitat_signature` summarises one exam's habitat labels: volume fraction of each habitat
(they sum to 1 over the tumour), SUVmean, SUVmax and mean voxel TTP per habitat (NaN for a habitat
absent from the exam). :func:`marker_association` tests every signature feature against each
marker, coded as a binary outcome (1 = the more aggressive class):

* ``idh``: wildtype = 1, mutant = 0;
* ``codeletion_1p19q``: codeleted = 1, intact = 0 (IDH-wildtype tumours, ``n/a``, are left out:
  1p/19q is only tested in IDH-mutant gliomas);
* ``who_grade``: grade 4 = 1, grades 2-3 = 0.

Per (marker, feature), on the exams where both are known:

* univariable logistic regression on the standardised feature (statsmodels ``Logit``): odds
  ratio per SD ``exp(b)`` with its Wald CI ``exp(b +- z se)`` and Wald p;
* Mann-Whitney U (two-sided, scipy) with the rank-biserial correlation ``r = 2 U1 / (n1 n0) - 1``
  (equal to Cliff's delta; positive: higher in the marker-positive group) and a percentile
  bootstrap CI (resampling within each group);
* Fisher's exact test on the feature dichotomised at its cohort median (> median) with the
  sample odds ratio;

then Benjamini-Hochberg false-discovery-rate q-values (statsmodels ``multipletests``,
``fdr_bh``) across all features and markers, separately for each test family.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

__all__ = [
    "MARKERS",
    "AssociationResults",
    "encode_marker",
    "habitat_signature",
    "marker_association",
    "rank_biserial",
]

#: Markers and their positive class (module docstring).
MARKERS = ("idh", "codeletion_1p19q", "who_grade")


def habitat_signature(
    habitats: np.ndarray,
    n_habitats: int,
    *,
    suv: np.ndarray,
    ttp_min: np.ndarray | None = None,
) -> dict[str, float]:
    """Signature of one exam from its habitat label volume.

    Args:
        habitats: (X, Y, Z) int, 0 outside the tumour, ``h + 1`` for habitat h
            (:func:`ml.subregions.habitats.habitat_volume`).
        n_habitats: number of habitats k of the model.
        suv: (X, Y, Z) static SUV.
        ttp_min: (X, Y, Z) voxel TTP (min), or None.

    Returns:
        ``frac_h{h}``, ``suvmean_h{h}``, ``suvmax_h{h}`` (and ``ttp_h{h}``) for h in 0..k-1.

    Raises:
        ValueError: shapes differ, labels outside 0..k, or no tumour voxel.
    """
    lab = np.asarray(habitats)
    s = np.asarray(suv, dtype=np.float64)
    if lab.shape != s.shape or (ttp_min is not None and np.shape(ttp_min) != s.shape):
        raise ValueError(f"habitats {lab.shape}, suv {s.shape} and ttp_min must have the same shape")
    if lab.min() < 0 or lab.max() > n_habitats:
        raise ValueError(f"habitat labels must be in 0..{n_habitats}, got {lab.min()}..{lab.max()}")
    total = int((lab > 0).sum())
    if total == 0:
        raise ValueError("habitat_signature: no tumour voxel (all labels 0)")
    out: dict[str, float] = {}
    for h in range(n_habitats):
        sel = lab == h + 1
        n = int(sel.sum())
        out[f"frac_h{h}"] = n / total
        out[f"suvmean_h{h}"] = float(s[sel].mean()) if n else float("nan")
        out[f"suvmax_h{h}"] = float(s[sel].max()) if n else float("nan")
        if ttp_min is not None:
            t = np.asarray(ttp_min, dtype=np.float64)[sel]
            t = t[np.isfinite(t)]
            out[f"ttp_h{h}"] = float(t.mean()) if len(t) else float("nan")
    return out


def encode_marker(marker: str, values: Sequence[object]) -> np.ndarray:
    """Binary coding of a marker (module docstring): 1, 0 or NaN (unknown / not tested).

    Raises:
        ValueError: unknown marker or a value outside its vocabulary.
    """
    vocab: dict[str, Mapping[str, float]] = {
        "idh": {"wildtype": 1.0, "mutant": 0.0},
        "codeletion_1p19q": {"codeleted": 1.0, "intact": 0.0},
        "who_grade": {"4": 1.0, "3": 0.0, "2": 0.0},
    }
    if marker not in vocab:
        raise ValueError(f"marker: one of {MARKERS}, got {marker!r}")
    out = np.empty(len(values))
    for i, v in enumerate(values):
        s = str(v).strip().lower()
        if s.endswith(".0"):
            s = s[:-2]
        if s in ("n/a", "nan", "none", "", "unknown"):
            out[i] = np.nan
        elif s in vocab[marker]:
            out[i] = vocab[marker][s]
        else:
            raise ValueError(f"{marker}: value {v!r} at row {i} is not one of {sorted(vocab[marker])} or n/a")
    return out


def rank_biserial(x1: np.ndarray, x0: np.ndarray) -> float:
    """Rank-biserial correlation ``2 U1 / (n1 n0) - 1`` = Cliff's delta
    ``P(X1 > X0) - P(X1 < X0)`` (Kerby 2014)."""
    x1, x0 = np.asarray(x1, float), np.asarray(x0, float)
    gt = (x1[:, None] > x0[None, :]).sum()
    lt = (x1[:, None] < x0[None, :]).sum()
    return float((gt - lt) / (len(x1) * len(x0)))


@dataclass(frozen=True)
class AssociationResults:
    """Signature features against markers.

    Attributes:
        table: one row per (marker, feature): ``n``, ``n_pos``, ``or_per_sd`` [``or_lo``,
            ``or_hi``], ``p_logit``, ``q_logit``, ``rank_biserial`` [``rb_lo``, ``rb_hi``],
            ``p_mwu``, ``q_mwu``, ``fisher_or``, ``p_fisher``, ``q_fisher`` (module docstring).
        alpha: 1 - confidence level of the CIs; the BH q-values are adjusted p-values.
        n_boot: bootstrap resamples of the rank-biserial CI.
    """

    table: pd.DataFrame
    alpha: float
    n_boot: int

    def summary_frame(self) -> pd.DataFrame:
        """The table sorted by MWU q-value (most significant first), rounded for publication."""
        return self.table.sort_values(["q_mwu", "p_mwu"]).round(4)

    def significant(self, q: float = 0.05, test: str = "mwu") -> pd.DataFrame:
        """Rows whose BH q-value of ``test`` (``mwu``, ``logit``, ``fisher``) is below ``q``."""
        return self.table[self.table[f"q_{test}"] < q]

    def to_csv(self, path: str | Path) -> Path:
        """Write the full table (unrounded) to ``path`` and return it."""
        p = Path(path)
        self.table.to_csv(p)
        return p


def _logit_or(x: np.ndarray, y: np.ndarray, z: float) -> tuple[float, float, float, float]:
    sd = float(x.std(ddof=1))
    if sd <= 0 or len(np.unique(y)) < 2:
        return (float("nan"),) * 4
    xs = (x - x.mean()) / sd
    try:
        fit = sm.Logit(y, sm.add_constant(xs)).fit(disp=0, maxiter=100)
        b, se, p = float(fit.params[1]), float(fit.bse[1]), float(fit.pvalues[1])
    except (np.linalg.LinAlgError, sm.tools.sm_exceptions.PerfectSeparationError):
        return (float("nan"),) * 4
    if not np.isfinite(se):
        return (float("nan"),) * 4
    return float(np.exp(b)), float(np.exp(b - z * se)), float(np.exp(b + z * se)), p


def marker_association(
    signatures: pd.DataFrame,
    markers: pd.DataFrame,
    *,
    marker_names: Sequence[str] = MARKERS,
    alpha: float = 0.05,
    n_boot: int = 1000,
    min_group: int = 3,
    random_state: int | None = 0,
) -> AssociationResults:
    """Test each signature feature against each marker (module docstring).

    Args:
        signatures: one row per exam (index: exam key), numeric feature columns.
        markers: same index, columns among :data:`MARKERS` with the raw values
            (``wildtype``/``mutant``, ``codeleted``/``intact``/``n/a``, 2/3/4).
        marker_names: markers to test.
        alpha: 1 - confidence level.
        n_boot: bootstrap resamples for the rank-biserial CI.
        min_group: a (marker, feature) pair is tested only with at least this many exams in
            each class (otherwise its row holds NaN).
        random_state: seed of the bootstrap.

    Raises:
        ValueError: indexes differ, a marker column is missing, or no numeric feature.
    """
    if not signatures.index.equals(markers.index):
        raise ValueError("signatures and markers must have the same index (exam keys, same order)")
    missing = [m for m in marker_names if m not in markers.columns]
    if missing:
        raise ValueError(f"markers lacks the column(s) {missing}")
    feats = signatures.select_dtypes(include=[np.number])
    if feats.shape[1] == 0:
        raise ValueError("signatures has no numeric feature column")
    z = float(stats.norm.ppf(1 - alpha / 2))
    rng = np.random.default_rng(random_state)
    rows = []
    for marker in marker_names:
        y_all = encode_marker(marker, markers[marker].tolist())
        for feat in feats.columns:
            x_all = feats[feat].to_numpy(dtype=np.float64)
            ok = np.isfinite(y_all) & np.isfinite(x_all)
            x, y = x_all[ok], y_all[ok]
            x1, x0 = x[y == 1], x[y == 0]
            row = {"marker": marker, "feature": feat, "n": int(ok.sum()), "n_pos": int((y == 1).sum())}
            if len(x1) < min_group or len(x0) < min_group or np.ptp(x) == 0:
                rows.append(row)
                continue
            row["or_per_sd"], row["or_lo"], row["or_hi"], row["p_logit"] = _logit_or(x, y, z)
            row["rank_biserial"] = rank_biserial(x1, x0)
            boots = np.array([
                rank_biserial(x1[rng.integers(0, len(x1), len(x1))], x0[rng.integers(0, len(x0), len(x0))])
                for _ in range(n_boot)
            ])
            row["rb_lo"], row["rb_hi"] = float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))
            row["p_mwu"] = float(stats.mannwhitneyu(x1, x0, alternative="two-sided").pvalue)
            high = x > np.median(x)
            table = [[int((high & (y == 1)).sum()), int((~high & (y == 1)).sum())],
                     [int((high & (y == 0)).sum()), int((~high & (y == 0)).sum())]]
            res = stats.fisher_exact(table)
            row["fisher_or"], row["p_fisher"] = float(res.statistic), float(res.pvalue)
            rows.append(row)
    cols = ["marker", "feature", "n", "n_pos", "or_per_sd", "or_lo", "or_hi", "p_logit", "rank_biserial",
            "rb_lo", "rb_hi", "p_mwu", "fisher_or", "p_fisher"]
    table = pd.DataFrame(rows).reindex(columns=cols)
    for test in ("logit", "mwu", "fisher"):
        p = table[f"p_{test}"].to_numpy(dtype=np.float64)
        q = np.full(len(p), np.nan)
        ok = np.isfinite(p)
        if ok.any():
            q[ok] = multipletests(p[ok], method="fdr_bh")[1]
        table[f"q_{test}"] = q
    order = ["marker", "feature", "n", "n_pos", "or_per_sd", "or_lo", "or_hi", "p_logit", "q_logit",
             "rank_biserial", "rb_lo", "rb_hi", "p_mwu", "q_mwu", "fisher_or", "p_fisher", "q_fisher"]
    table = table[order].set_index(["marker", "feature"])
    return AssociationResults(table=table, alpha=alpha, n_boot=n_boot)
