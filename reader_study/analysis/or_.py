"""Obuchowski-Rockette (OR) MRMC analysis with Hillis denominator degrees of freedom.

Model (Obuchowski & Rockette 1995; Hillis et al. 2005): the FOM of reader r in modality t is
``theta_tr = mu + tau_t + R_r + (tau R)_tr + e_tr`` with random reader effects and case-sampling
errors e whose covariance is summarised by Var, Cov1, Cov2, Cov3 (see :mod:`.covariance`).
Tests and intervals follow OR-DBM MRMC 2.51 (Hillis 2007; Hillis, Berbaum & Metz 2008):

* RRRC: ``F = MS(T) / [MS(TR) + R max(Cov2 - Cov3, 0)]`` with
  ``ddf_H = [MS(TR) + R max(Cov2 - Cov3, 0)]^2 / {MS(TR)^2 / [(T-1)(R-1)]}`` (Hillis 2007, eq. 5);
  differences ``SE = sqrt(2/R [MS(TR) + R max(Cov2 - Cov3, 0)])``; single modality
  ``SE = sqrt([MS_t(R) + R max(Cov2_t, 0)]/R)``, ``df = [...]^2 / {MS_t(R)^2/(R-1)}``.
* FRRC: ``X2 = (T-1) MS(T) / [Var - Cov1 + (R-1) max(Cov2 - Cov3, 0)]`` on T-1 df; z intervals;
  single-reader differences ``SE = sqrt(2 (Var_r - Cov1_r))``.
* RRFC: ``F = MS(T) / MS(TR)`` on (T-1, (T-1)(R-1)) df (conventional repeated measures).

Variance components: ``Var(TR) = MS(TR) - Var + Cov1 + Cov2 - Cov3`` and
``Var(R) = [MS(R) - MS(TR)]/T - Cov1 + Cov3`` (Hillis et al. 2005, Table III), without any
truncation, as Iowa prints them (RJafroc puts max(Cov2 - Cov3, 0) inside Var(TR)).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .anova import one_way_reader_ms, two_way_ms
from .covariance import ORCovariances, case_covariance, or_covariances
from .data import ReaderStudyData
from .fom import fom_components
from .results import Difference, Generalization, GlobalTest, ModalityCI, format_table, jsonable

__all__ = ["ORResult", "ORVarianceComponents", "or_analysis", "or_from_fom_covariance"]


@dataclass(frozen=True)
class ORVarianceComponents:
    """OR variance components and error covariances (can be negative: ANOVA estimates).

    Attributes:
        var_r: reader variance ``[MS(R) - MS(TR)]/T - Cov1 + Cov3``.
        var_tr: modality x reader variance ``MS(TR) - Var + Cov1 + Cov2 - Cov3``.
        cov1: error covariance, same reader, different modality.
        cov2: error covariance, same modality, different readers.
        cov3: error covariance, different reader and modality.
        var_error: error variance Var.
        n_cases: number of cases K the covariances refer to (they scale as 1/K).
    """

    var_r: float
    var_tr: float
    cov1: float
    cov2: float
    cov3: float
    var_error: float
    n_cases: int

    @property
    def rho1(self) -> float:
        """Cov1 / Var."""
        return self.cov1 / self.var_error

    @property
    def rho2(self) -> float:
        """Cov2 / Var."""
        return self.cov2 / self.var_error

    @property
    def rho3(self) -> float:
        """Cov3 / Var."""
        return self.cov3 / self.var_error

    def dbm(self) -> dict[str, float]:
        """The equivalent DBM components (Hillis et al. 2005, eq. 12): Var(C) = K Cov3,
        Var(TC) = K (Cov2 - Cov3), Var(RC) = K (Cov1 - Cov3),
        Var(TRC) + Var(error) = K (Var - Cov1 - Cov2 + Cov3); Var(R), Var(TR) unchanged."""
        k = self.n_cases
        return {
            "var_r": self.var_r,
            "var_c": k * self.cov3,
            "var_tr": self.var_tr,
            "var_tc": k * (self.cov2 - self.cov3),
            "var_rc": k * (self.cov1 - self.cov3),
            "var_trc_error": k * (self.var_error - self.cov1 - self.cov2 + self.cov3),
        }


@dataclass(frozen=True, eq=False)
class ORResult:
    """Result of :func:`or_analysis`.

    Attributes:
        fom: figure of merit analysed.
        cov_method: case-covariance estimator (jackknife, delong, unbiased).
        modalities: modality labels (T).
        readers: reader labels (R).
        n_negative: non-diseased cases K0.
        n_positive: diseased cases K1.
        fom_values: FOM per modality and reader, array (T, R).
        modality_means: reader-averaged FOM per modality.
        ms_t: MS(T) of the modality x reader ANOVA of FOMs.
        ms_r: MS(R).
        ms_tr: MS(T*R).
        ms_r_by_modality: MS(R) of each modality's reader ANOVA.
        covariances: the averaged error covariances (also per modality and reader).
        components: OR variance components.
        rrrc: random readers, random cases.
        frrc: fixed readers, random cases.
        rrfc: random readers, fixed cases.
        alpha: significance level of the intervals.
        fom_covariance: (T*R, T*R) case-sampling covariance of the FOMs.
    """

    fom: str
    cov_method: str
    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    n_negative: int
    n_positive: int
    fom_values: np.ndarray
    modality_means: tuple[float, ...]
    ms_t: float
    ms_r: float
    ms_tr: float
    ms_r_by_modality: tuple[float, ...]
    covariances: ORCovariances
    components: ORVarianceComponents
    rrrc: Generalization
    frrc: Generalization
    rrfc: Generalization
    alpha: float
    fom_covariance: np.ndarray

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary of every number (arrays as nested lists)."""
        out = jsonable(self)
        out["method"] = "OR"
        out["components"]["dbm"] = jsonable(self.components.dbm())
        return out

    def summary(self) -> str:
        """Readable text report (estimates, ANOVA, variance components, three analyses)."""
        t = len(self.modalities)
        lines = [
            "Obuchowski-Rockette MRMC analysis (Hillis 2007 ddf)",
            f"FOM: {self.fom}   covariance: {self.cov_method}   "
            f"{t} modalities, {len(self.readers)} readers, {self.n_negative + self.n_positive} cases "
            f"({self.n_negative} non-diseased, {self.n_positive} diseased)",
            "",
        ]
        rows = [[r, *self.fom_values[:, i]] for i, r in enumerate(self.readers)]
        rows.append(["mean", *self.modality_means])
        lines.append(format_table(["reader", *self.modalities], rows, title="FOM estimates"))
        lines.append(format_table(["source", "MS", "df"], [
            ["T", self.ms_t, t - 1], ["R", self.ms_r, len(self.readers) - 1],
            ["T*R", self.ms_tr, (t - 1) * (len(self.readers) - 1)]],
            title="Modality x reader ANOVA of FOMs"))
        c = self.components
        lines.append(format_table(["component", "estimate", "correlation"], [
            ["Var(R)", c.var_r, ""], ["Var(T*R)", c.var_tr, ""], ["Cov1", c.cov1, c.rho1],
            ["Cov2", c.cov2, c.rho2], ["Cov3", c.cov3, c.rho3], ["Var(error)", c.var_error, ""]],
            title="OR variance components"))
        for g in (self.rrrc, self.frrc, self.rrfc):
            lines.append(g.text(self.fom, self.alpha))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def or_analysis(
    data: ReaderStudyData,
    *,
    fom: str = "auc",
    cov: str = "jackknife",
    threshold: float | None = None,
    alpha: float = 0.05,
) -> ORResult:
    """Obuchowski-Rockette analysis of a fully crossed MRMC study.

    Args:
        data: the ratings (fully crossed; see :func:`ustat_analysis` for other designs).
        fom: ``"auc"`` (empirical, trapezoidal), ``"sensitivity"`` or ``"specificity"``.
        cov: case covariance estimator: ``"jackknife"``, ``"delong"`` or ``"unbiased"``.
        threshold: decision threshold for sensitivity/specificity (``rating >= threshold`` is
            positive); not needed for binary 0/1 ratings.
        alpha: 1 - confidence level; also the test level.

    Returns:
        The :class:`ORResult`.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if data.n_readers < 2:
        raise ValueError(f"{data.source}: OR analysis needs at least 2 readers")
    sc = fom_components(data, fom, threshold=threshold)
    covm = case_covariance(data, sc, cov)
    return or_from_fom_covariance(
        sc.theta, covm, modalities=data.modalities, readers=data.readers,
        n_negative=data.n_negative, n_positive=data.n_positive, fom=fom, cov_method=cov,
        alpha=alpha,
    )


def or_from_fom_covariance(
    theta: np.ndarray,
    cov: np.ndarray,
    *,
    modalities: tuple[str, ...],
    readers: tuple[str, ...],
    n_negative: int,
    n_positive: int,
    fom: str = "auc",
    cov_method: str = "jackknife",
    alpha: float = 0.05,
) -> ORResult:
    """OR analysis from the FOM matrix (T, R) and its case covariance (T*R, T*R)."""
    t, r = theta.shape
    oc = or_covariances(cov, t, r)
    ms = two_way_ms(theta)
    ms_t, ms_r, ms_tr = ms["T"], ms["R"], ms["TR"]
    ms_r_t = tuple(one_way_reader_ms(theta[i]) for i in range(t))
    means = theta.mean(axis=1)
    comps = ORVarianceComponents(
        var_r=float((ms_r - ms_tr) / t - oc.cov1 + oc.cov3 if t > 1 else ms_r - oc.var + oc.cov2),
        var_tr=float(ms_tr - oc.var + oc.cov1 + oc.cov2 - oc.cov3) if t > 1 else float("nan"),
        cov1=oc.cov1, cov2=oc.cov2, cov3=oc.cov3, var_error=oc.var,
        n_cases=n_negative + n_positive,
    )
    pairs = list(itertools.combinations(range(t), 2))
    diff = {p: means[p[0]] - means[p[1]] for p in pairs}
    pos23 = max(oc.cov2 - oc.cov3, 0.0) if t > 1 else 0.0

    # RRRC (Hillis 2007)
    err = ms_tr + r * pos23
    ddf = err**2 / (ms_tr**2 / ((t - 1) * (r - 1))) if t > 1 and ms_tr > 0 else float("inf")
    se = np.sqrt(2 / r * err) if t > 1 else float("nan")
    rrrc_cis = []
    for i in range(t):
        e1 = ms_r_t[i] + r * max(oc.cov2_by_modality[i], 0.0)
        df1 = e1**2 / (ms_r_t[i] ** 2 / (r - 1)) if ms_r_t[i] > 0 else float("inf")
        rrrc_cis.append(ModalityCI.build(modalities[i], means[i], np.sqrt(e1 / r), df1, alpha))
    rrrc = Generalization(
        "RRRC",
        GlobalTest.f_test(ms_t, err, t - 1, ddf) if t > 1 else _no_test(),
        tuple(Difference.build(modalities[a], modalities[b], diff[(a, b)], se, ddf, alpha)
              for a, b in pairs),
        tuple(rrrc_cis),
    )

    # FRRC (Obuchowski & Rockette 1995 with Hillis' max())
    err_f = oc.var - oc.cov1 + (r - 1) * pos23
    se_f = np.sqrt(2 / r * err_f) if t > 1 else float("nan")
    frrc_cis = [
        ModalityCI.build(modalities[i], means[i],
                         np.sqrt((oc.var_by_modality[i] + (r - 1) * max(oc.cov2_by_modality[i], 0.0)) / r),
                         float("inf"), alpha)
        for i in range(t)
    ]
    reader_diffs = []
    for j in range(r):
        se_r = np.sqrt(2 * (oc.var_by_reader[j] - oc.cov1_by_reader[j])) if t > 1 else float("nan")
        for a, b in pairs:
            reader_diffs.append(Difference.build(modalities[a], modalities[b],
                                                 theta[a, j] - theta[b, j], se_r, float("inf"),
                                                 alpha, reader=readers[j]))
    frrc = Generalization(
        "FRRC",
        GlobalTest.chi2_test(ms_t, err_f, t - 1) if t > 1 else _no_test(),
        tuple(Difference.build(modalities[a], modalities[b], diff[(a, b)], se_f, float("inf"), alpha)
              for a, b in pairs),
        tuple(frrc_cis),
        tuple(reader_diffs),
    )

    # RRFC: conventional modality x reader repeated-measures ANOVA
    df_tr = (t - 1) * (r - 1)
    rrfc = Generalization(
        "RRFC",
        GlobalTest.f_test(ms_t, ms_tr, t - 1, df_tr) if t > 1 else _no_test(),
        tuple(Difference.build(modalities[a], modalities[b], diff[(a, b)],
                               np.sqrt(2 / r * ms_tr), df_tr, alpha) for a, b in pairs),
        tuple(ModalityCI.build(modalities[i], means[i], np.sqrt(ms_r_t[i] / r), r - 1, alpha)
              for i in range(t)),
    )
    return ORResult(
        fom=fom, cov_method=cov_method, modalities=tuple(modalities), readers=tuple(readers),
        n_negative=n_negative, n_positive=n_positive, fom_values=theta,
        modality_means=tuple(float(m) for m in means), ms_t=ms_t, ms_r=ms_r, ms_tr=ms_tr,
        ms_r_by_modality=ms_r_t, covariances=oc, components=comps, rrrc=rrrc, frrc=frrc,
        rrfc=rrfc, alpha=alpha, fom_covariance=cov,
    )


def _no_test() -> GlobalTest:
    nan = float("nan")
    return GlobalTest(nan, 0.0, nan, nan, nan)
