"""Arbitrary designs (split-plot, per-reader case subsets) and the AI-alone comparison.

:func:`ustat_analysis` is the U-statistic MRMC analysis of iMRMC (Gallas 2006; Gallas et al.
2009; Gallas & Brown 2008 for arbitrary designs). With design indicators d_r(i) for the cases a
reader read, every product of two AUCs is split into biased moment sums by shared cases, mapped to
unbiased sums (the B matrices of iMRMC's ``doAUCmrmcCov``), and the variance of the
reader-averaged AUC is ``sum_i c_i M_i`` over the eight BDG moments (Gallas et al. 2009, eq. 13):
M1..M4 for the same reader and M5..M8 over all reader pairs, each by (same non-diseased case,
same diseased case). Degrees of freedom follow iMRMC's ``dfBDG`` (a Satterthwaite-type
approximation on the BCK components, with Gaylor's lower bound), and its t intervals use
``floor(df)`` and switch to the normal for df > 50, as iMRMC does.

:func:`standalone_vs_readers` compares a fixed algorithm (the AI alone) with the readers:
``d_r = theta_AI - theta_r`` per reader, analysed as a single-modality OR problem (Hillis 2007
single-treatment df), which equals the OR analysis of a two-modality study in which every
reader's "second modality" is the AI output.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .covariance import case_covariance, kernel_gram, kernel_matrices
from .data import ReaderStudyData
from .fom import StructuralComponents, fom_components
from .results import ModalityCI, format_table, jsonable

__all__ = [
    "StandaloneResult",
    "UStatModality",
    "UStatDifference",
    "UStatResult",
    "standalone_vs_readers",
    "ustat_analysis",
]

_B8 = np.array([
    [1, 0, 0, 0, 0, 0, 0, 0],
    [-1, 1, 0, 0, 0, 0, 0, 0],
    [-1, 0, 1, 0, 0, 0, 0, 0],
    [1, -1, -1, 1, 0, 0, 0, 0],
    [-1, 0, 0, 0, 1, 0, 0, 0],
    [1, -1, 0, 0, -1, 1, 0, 0],
    [1, 0, -1, 0, -1, 0, 1, 0],
    [-1, 1, 1, -1, 1, -1, -1, 1],
], dtype=float)
_B4 = _B8[:4, :4]
# BDG moments -> BCK components (Gallas et al. 2009, eq. 19): N, D, ND, R, NR, DR, RND
_B_ALPHA = np.array([
    [0, 0, 0, 0, 0, 0, 1, -1],
    [0, 0, 0, 0, 0, 1, 0, -1],
    [0, 0, 0, 0, 1, -1, -1, 1],
    [0, 0, 0, 1, 0, 0, 0, -1],
    [0, 0, 1, -1, 0, 0, -1, 1],
    [0, 1, 0, -1, 0, -1, 0, 1],
    [1, -1, -1, 1, -1, 1, 1, -1],
], dtype=float)
_B_BDG2BCK = np.array([
    [1, 0, 1, 0, 1, 0, 1, 0],
    [1, 1, 0, 0, 1, 1, 0, 0],
    [1, 0, 0, 0, 1, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 0],
    [1, 0, 1, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 0, 0, 0],
], dtype=float)


@dataclass(frozen=True)
class UStatModality:
    """Reader-averaged AUC of one modality with its U-statistic variance.

    Attributes:
        modality: label.
        auc: reader-averaged AUC (pooled over the case pairs each reader read).
        var: unbiased U-statistic variance (readers and cases random).
        df: iMRMC's dfBDG.
        ci_low, ci_high: t interval on floor(df) (normal when df > 50).
        p_value: test of AUC = 0.5 with that reference.
        ci_low_normal, ci_high_normal, p_value_normal: normal-approximation versions.
        moments: the eight BDG moments M1..M8.
        coefficients: their coefficients c1..c8.
    """

    modality: str
    auc: float
    var: float
    df: float
    ci_low: float
    ci_high: float
    p_value: float
    ci_low_normal: float
    ci_high_normal: float
    p_value_normal: float
    moments: tuple[float, ...]
    coefficients: tuple[float, ...]


@dataclass(frozen=True)
class UStatDifference:
    """Difference of reader-averaged AUCs (a - b) with U-statistic variance.

    Attributes:
        modality_a, modality_b: labels.
        estimate: AUC(a) - AUC(b).
        var: its variance ``var_a + var_b - 2 cov_ab``.
        df: dfBDG of the difference.
        ci_low, ci_high, p_value: t version (floor(df); normal when df > 50).
        ci_low_normal, ci_high_normal, p_value_normal: normal version.
    """

    modality_a: str
    modality_b: str
    estimate: float
    var: float
    df: float
    ci_low: float
    ci_high: float
    p_value: float
    ci_low_normal: float
    ci_high_normal: float
    p_value_normal: float


@dataclass(frozen=True, eq=False)
class UStatResult:
    """Result of :func:`ustat_analysis`.

    Attributes:
        modalities: labels.
        readers: labels.
        reader_auc: per-reader AUC (T, R); NaN where a reader did not read the modality.
        reader_var: per-reader unbiased AUC variance (T, R).
        reader_diff_var: per-reader variance of AUC(a) - AUC(b) for each modality pair
            ``{"a - b": (R,)}``.
        modality: per-modality results.
        differences: pairwise differences.
        alpha: significance level.
    """

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    reader_auc: np.ndarray
    reader_var: np.ndarray
    reader_diff_var: dict[str, np.ndarray]
    modality: tuple[UStatModality, ...]
    differences: tuple[UStatDifference, ...]
    alpha: float

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary."""
        out = jsonable(self)
        out["method"] = "U-statistic (iMRMC)"
        return out

    def summary(self) -> str:
        """Text report in the layout of iMRMC's output."""
        conf = int(round(100 * (1 - self.alpha)))
        rows = []
        for ti, m in enumerate(self.modalities):
            for ri, r in enumerate(self.readers):
                rows.append([r, m, self.reader_auc[ti, ri], self.reader_var[ti, ri]])
        out = ["U-statistic MRMC analysis (Gallas 2006/2009; iMRMC)", ""]
        out.append(format_table(["reader", "modality", "AUC", "var"], rows, title="Per reader"))
        rows = [[m.modality, m.auc, m.var, m.df, m.ci_low, m.ci_high, m.p_value] for m in self.modality]
        out.append(format_table(["modality", "AUC", "var", "dfBDG", f"[{conf}% low", "high]", "p (AUC=0.5)"],
                                rows, title="Reader-averaged AUC"))
        rows = [[f"{d.modality_a} - {d.modality_b}", d.estimate, d.var, d.df, d.ci_low, d.ci_high,
                 d.p_value, d.p_value_normal] for d in self.differences]
        if rows:
            out.append(format_table(["comparison", "estimate", "var", "dfBDG", f"[{conf}% low", "high]",
                                     "p (t)", "p (normal)"], rows, title="Differences"))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()


def _kernels(data: ReaderStudyData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 x success matrices (A, K0, K1) int8 (0 where unread), design vectors dn (A, K0), dp (A, K1)."""
    t, r = data.n_modalities, data.n_readers
    neg = data.negatives().reshape(t * r, -1)
    pos = data.positives().reshape(t * r, -1)
    return kernel_matrices(neg, pos), (~np.isnan(neg)).astype(float), (~np.isnan(pos)).astype(float)


def _pair_sums(s2: np.ndarray, dn: np.ndarray, dp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Biased moment numerators and denominators for all pairs: (4, A, A) each, plus totals."""
    col = s2.sum(axis=1, dtype=float) / 2  # per diseased case j: sum over non-diseased i
    row = s2.sum(axis=2, dtype=float) / 2  # per non-diseased case i
    tot = row.sum(axis=1)
    numer = np.stack([kernel_gram(s2), col @ col.T, row @ row.T, np.outer(tot, tot)])
    nn, npos = dn.sum(axis=1), dp.sum(axis=1)
    dd_n, dd_p = dn @ dn.T, dp @ dp.T
    denom = np.stack([dd_n * dd_p, np.outer(nn, nn) * dd_p, np.outer(npos, npos) * dd_n,
                      np.outer(nn * npos, nn * npos)])
    return numer, denom, tot, nn * npos


def _test(m: float, s2: float, df: float, alpha: float, null: float) -> tuple[float, float, float, float, float, float]:
    """iMRMC hypothesisTest_t and _Normal: (lo_t, hi_t, p_t, lo_n, hi_n, p_n)."""
    nan = float("nan")
    if not s2 >= 0:
        return (nan,) * 6
    se = np.sqrt(s2)
    z = stats.norm.ppf(1 - alpha / 2)
    stat = (m - null) / se if se > 0 else nan
    p_n = 2 * stats.norm.sf(abs(stat))
    lo_n, hi_n = m - z * se, m + z * se
    if not np.isfinite(df) or df > 50:
        return lo_n, hi_n, p_n, lo_n, hi_n, p_n
    dfl = np.floor(df)
    q = stats.t.ppf(1 - alpha / 2, dfl)
    return m - q * se, m + q * se, 2 * stats.t.sf(abs(stat), dfl), lo_n, hi_n, p_n


def ustat_analysis(data: ReaderStudyData, *, alpha: float = 0.05) -> UStatResult:
    """iMRMC U-statistic MRMC analysis of the empirical AUC; any design (split-plot too).

    Args:
        data: ratings; NaN marks unread cases.
        alpha: 1 - confidence level.
    """
    t, r = data.n_modalities, data.n_readers
    s, dn, dp = _kernels(data)
    numer, denom, tot, dtot = _pair_sums(s, dn, dp)
    idx = np.arange(t * r).reshape(t, r)
    read = (dn.sum(1) > 0) & (dp.sum(1) > 0)

    with np.errstate(invalid="ignore", divide="ignore"):
        reader_auc = (tot / dtot).reshape(t, r)
        # per reader-modality variance: the 4-moment estimator of iMRMC's doAUC
        diag = np.arange(t * r)
        per_var = _cov4(numer[:, diag, diag], denom[:, diag, diag])
    reader_var = per_var.reshape(t, r)
    reader_var[~read.reshape(t, r)] = np.nan

    def block(t1: int, t2: int) -> dict:
        ia, ib = idx[t1], idx[t2]
        n_all = numer[:, ia][:, :, ib].sum(axis=(1, 2))
        d_all = denom[:, ia][:, :, ib].sum(axis=(1, 2))
        n_same = numer[:, ia, ib].sum(axis=1)
        d_same = denom[:, ia, ib].sum(axis=1)
        num8 = np.r_[n_same, n_all]
        den8 = np.r_[d_same, d_all]
        with np.errstate(invalid="ignore", divide="ignore"):
            m_b = num8 / den8
            num_u, den_u = _B8 @ num8, _B8 @ den8
            m = num_u / den_u
        m = np.nan_to_num(m)  # a moment with no contributing pairs has zero weight
        coeff = den_u / den8[7]
        coeff[7] -= 1
        cov = float(coeff @ m)
        bck_b = _B_ALPHA @ np.nan_to_num(m_b)
        bck_coeff = _B_BDG2BCK @ coeff
        with np.errstate(divide="ignore"):
            dfs = np.round(1 / bck_coeff[[0, 1, 3]] - 1)
        auc1 = tot[ia].sum() / dtot[ia].sum()
        return {"cov": cov, "m": m, "coeff": coeff, "bck_b": bck_b, "dfs": dfs, "auc": auc1}

    mods = []
    single = {}
    for ti in range(t):
        b = block(ti, ti)
        single[ti] = b
        sb = b["bck_b"][[0, 1, 3]] ** 2 / b["dfs"] ** 3
        df = _df_bdg(b["cov"], sb, b["dfs"].min())
        lo, hi, p, lo_n, hi_n, p_n = _test(b["auc"], b["cov"], df, alpha, 0.5)
        mods.append(UStatModality(data.modalities[ti], float(b["auc"]), b["cov"], df, lo, hi, p,
                                  lo_n, hi_n, p_n, tuple(map(float, b["m"])), tuple(map(float, b["coeff"]))))
    diffs = []
    reader_diff_var = {}
    for t1, t2 in itertools.combinations(range(t), 2):
        b = block(t1, t2)
        b1, b2 = single[t1], single[t2]
        var = b1["cov"] + b2["cov"] - 2 * b["cov"]
        dfs = np.minimum(b1["dfs"], b2["dfs"])
        sb = (b1["bck_b"][[0, 1, 3]] + b2["bck_b"][[0, 1, 3]] - 2 * b["bck_b"][[0, 1, 3]]) ** 2 / dfs**3
        df = _df_bdg(var, sb, dfs.min())
        est = b1["auc"] - b2["auc"]
        lo, hi, p, lo_n, hi_n, p_n = _test(est, var, df, alpha, 0.0)
        diffs.append(UStatDifference(data.modalities[t1], data.modalities[t2], float(est), float(var),
                                     df, lo, hi, p, lo_n, hi_n, p_n))
        ia, ib = idx[t1], idx[t2]
        with np.errstate(invalid="ignore", divide="ignore"):
            cov_same = _cov4(numer[:, ia, ib], denom[:, ia, ib])
        reader_diff_var[f"{data.modalities[t1]} - {data.modalities[t2]}"] = (
            per_var[ia] + per_var[ib] - 2 * cov_same)
    return UStatResult(data.modalities, data.readers, reader_auc, reader_var, reader_diff_var,
                       tuple(mods), tuple(diffs), alpha)


def _cov4(numer: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """iMRMC doAUC: covariance of two AUCs from the four biased sums (4, ...)."""
    num_u = np.tensordot(_B4, numer, axes=1)
    den_u = np.tensordot(_B4, denom, axes=1)
    m = np.nan_to_num(num_u / den_u)
    coeff = den_u / denom[3]
    coeff[3] -= 1
    return (coeff * m).sum(axis=0)


def _df_bdg(var: float, sb: np.ndarray, df_min: float) -> float:
    """dfBDG = var^2 / sum(BCK_b^2 / df^3), at least min(df) (Gaylor 1969); NaN if var < 0."""
    if not var >= 0:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        df = var**2 / sb.sum()
    if not np.isfinite(df):  # no sampling variability in any component (degenerate data)
        return float(df_min)
    return float(max(df, df_min))


@dataclass(frozen=True, eq=False)
class StandaloneResult:
    """AI alone versus the readers in one modality.

    Attributes:
        modality: the readers' modality compared with the AI.
        fom: figure of merit.
        cov_method: case covariance estimator.
        ai_fom: the AI's FOM.
        reader_fom: each reader's FOM (R,).
        reader_mean: mean reader FOM.
        difference: ``ai_fom - reader_mean``.
        ms_r: variance of the per-reader differences d_r = theta_AI - theta_r.
        var: mean case-sampling variance of d_r.
        cov2: mean case-sampling covariance of d_r, d_r' (r != r').
        rrrc: CI for the difference, readers and cases random (Hillis single-treatment df).
        frrc: CI for the difference, readers fixed (normal).
        p_value_rrrc: two-sided p-value of H0: no difference (RRRC).
        p_value_frrc: two-sided p-value (FRRC).
        alpha: significance level.
    """

    modality: str
    fom: str
    cov_method: str
    ai_fom: float
    reader_fom: np.ndarray
    reader_mean: float
    difference: float
    ms_r: float
    var: float
    cov2: float
    rrrc: ModalityCI
    frrc: ModalityCI
    p_value_rrrc: float
    p_value_frrc: float
    alpha: float

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary."""
        return jsonable(self)

    def summary(self) -> str:
        """Text report."""
        conf = int(round(100 * (1 - self.alpha)))
        rows = [[g, c.estimate, c.se, c.df, c.ci_low, c.ci_high, p]
                for g, c, p in (("RRRC", self.rrrc, self.p_value_rrrc), ("FRRC", self.frrc, self.p_value_frrc))]
        return (f"AI standalone vs readers ({self.modality}, {self.fom}, {self.cov_method})\n"
                f"AI {self.fom}: {self.ai_fom:.6f}   mean reader {self.fom}: {self.reader_mean:.6f}\n"
                + format_table(["analysis", "AI - readers", "std err", "df", f"[{conf}% low", "high]", "p"], rows))


def standalone_vs_readers(
    data: ReaderStudyData,
    ai_ratings: np.ndarray,
    *,
    modality: str | None = None,
    fom: str = "auc",
    cov: str = "jackknife",
    threshold: float | None = None,
    alpha: float = 0.05,
) -> StandaloneResult:
    """Compare the AI alone (a fixed "reader") with the readers of one modality.

    Args:
        data: fully crossed reader ratings.
        ai_ratings: the AI output per case, in ``data.cases`` order (K,).
        modality: the readers' modality (default: the first, e.g. ``unaided``).
        fom: figure of merit.
        cov: case covariance estimator.
        threshold: decision threshold (binary FOMs; applied to readers and AI alike).
        alpha: 1 - confidence level.
    """
    ai = np.asarray(ai_ratings, dtype=float)
    if ai.shape != (data.n_cases,):
        raise ValueError(f"ai_ratings has shape {ai.shape}, expected ({data.n_cases},) in case order")
    if np.isnan(ai).any():
        raise ValueError("ai_ratings contain NaN; the AI must rate every case")
    mod = modality if modality is not None else data.modalities[0]
    sub = data.select(modalities=[mod])
    r = sub.n_readers
    if r < 2:
        raise ValueError("standalone_vs_readers needs at least 2 readers")
    both = ReaderStudyData(
        ratings=np.concatenate([sub.ratings, np.broadcast_to(ai, (1, r, ai.size))], axis=0),
        truth=sub.truth, modalities=(f"{mod}", "AI"), readers=sub.readers, cases=sub.cases,
        source=sub.source)
    sc = fom_components(both, fom, threshold=threshold)
    # d_r = theta_AI - theta_r is linear in the components
    dsc = StructuralComponents(sc.fom, (sc.theta[1] - sc.theta[0])[None], (sc.v10[1] - sc.v10[0])[None],
                               (sc.v01[1] - sc.v01[0])[None], sc.truth)
    covm = case_covariance(both, dsc, cov) if cov != "unbiased" else _unbiased_diff_cov(both, r)
    d = dsc.theta[0]
    ms_r = float(np.var(d, ddof=1))
    var = float(np.diag(covm).mean())
    cov2 = float(covm[~np.eye(r, dtype=bool)].mean())
    est = float(d.mean())
    e1 = ms_r + r * max(cov2, 0.0)
    df1 = e1**2 / (ms_r**2 / (r - 1)) if ms_r > 0 else float("inf")
    rr = ModalityCI.build(mod, est, np.sqrt(e1 / r), df1, alpha)
    fr = ModalityCI.build(mod, est, np.sqrt((var + (r - 1) * max(cov2, 0.0)) / r), float("inf"), alpha)
    p_rr = float(2 * stats.t.sf(abs(est / rr.se), df1)) if np.isfinite(df1) else float(2 * stats.norm.sf(abs(est / rr.se)))
    p_fr = float(2 * stats.norm.sf(abs(est / fr.se)))
    return StandaloneResult(mod, fom, cov, float(sc.theta[1, 0]), sc.theta[0].copy(),
                            float(sc.theta[0].mean()), est, ms_r, var, cov2, rr, fr, p_rr, p_fr, alpha)


def _unbiased_diff_cov(both: ReaderStudyData, r: int) -> np.ndarray:
    """Covariance of d_r = AUC_AI - AUC_r from the unbiased (T*R) AUC covariance."""
    from .covariance import unbiased_covariance

    c = unbiased_covariance(both).reshape(2, r, 2, r)
    return c[1, :, 1, :] - c[1, :, 0, :] - c[0, :, 1, :] + c[0, :, 0, :]
