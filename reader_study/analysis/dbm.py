"""Dorfman-Berbaum-Metz (DBM) MRMC analysis on jackknife pseudovalues.

Pseudovalues ``Y_trk = K theta_tr - (K-1) theta_tr(-k)`` (Dorfman, Berbaum & Metz 1992) are
analysed as a modality x reader x case ANOVA. With the Hillis (2005, 2008) updates used by
OR-DBM MRMC 2.51 and JAFROC 4.2.1:

* RRRC: ``F = MS(T) / [MS(TR) + max(MS(TC) - MS(TRC), 0)]``,
  ``ddf_H = [MS(TR) + max(MS(TC) - MS(TRC), 0)]^2 / {MS(TR)^2/[(T-1)(R-1)]}``;
  differences ``SE = sqrt(2/(R C) [MS(TR) + max(MS(TC) - MS(TRC), 0)])``; single modality
  ``[MS(R) + max(MS(C) - MS(RC), 0)]`` from that modality's reader x case ANOVA, df likewise.
* FRRC: ``F = MS(T)/MS(TC)`` on (T-1, (T-1)(C-1)); single modality ``SE = sqrt(MS_t(C)/(R C))``
  on C-1 df; single-reader differences from each reader's modality x case ANOVA,
  ``SE = sqrt(2 MS_r(TC)/C)`` on (T-1)(C-1) df.
* RRFC: ``F = MS(T)/MS(TR)`` on (T-1, (T-1)(R-1)); single modality ``sqrt(MS_t(R)/(R C))``, R-1 df.

Variance components (Dorfman et al. 1992; Hillis et al. 2008, Table 1):
Var(R) = [MS(R) - MS(TR) - MS(RC) + MS(TRC)]/(T C), Var(C) = [MS(C) - MS(TC) - MS(RC) + MS(TRC)]/(T R),
Var(TR) = [MS(TR) - MS(TRC)]/C, Var(TC) = [MS(TC) - MS(TRC)]/R, Var(RC) = [MS(RC) - MS(TRC)]/T,
Var(TRC) + Var(error) = MS(TRC).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .anova import three_way_ms
from .data import ReaderStudyData
from .fom import fom_components, jackknife_fom
from .results import Difference, Generalization, GlobalTest, ModalityCI, format_table, jsonable

__all__ = ["DBMResult", "DBMVarianceComponents", "dbm_analysis", "dbm_from_pseudovalues", "pseudovalues"]


@dataclass(frozen=True)
class DBMVarianceComponents:
    """DBM variance components of the pseudovalues (ANOVA estimates, can be negative).

    Attributes:
        var_r: reader, ``[MS(R) - MS(TR) - MS(RC) + MS(TRC)]/(T C)``.
        var_c: case, ``[MS(C) - MS(TC) - MS(RC) + MS(TRC)]/(T R)``.
        var_tr: modality x reader, ``[MS(TR) - MS(TRC)]/C``.
        var_tc: modality x case, ``[MS(TC) - MS(TRC)]/R``.
        var_rc: reader x case, ``[MS(RC) - MS(TRC)]/T``.
        var_trc_error: ``Var(TRC) + Var(error) = MS(TRC)``.
    """

    var_r: float
    var_c: float
    var_tr: float
    var_tc: float
    var_rc: float
    var_trc_error: float


@dataclass(frozen=True, eq=False)
class DBMResult:
    """Result of :func:`dbm_analysis`.

    Attributes:
        fom: figure of merit.
        modalities: modality labels.
        readers: reader labels.
        n_negative: non-diseased cases K0.
        n_positive: diseased cases K1.
        fom_values: FOM per modality and reader (T, R) (= mean pseudovalue).
        modality_means: reader-averaged FOM per modality.
        ss: sums of squares of the modality x reader x case ANOVA (keys T, R, C, TR, TC, RC, TRC).
        df: their degrees of freedom.
        ms: their mean squares.
        ms_by_modality: per modality, reader x case ANOVA mean squares (keys R, C, RC).
        ms_by_reader: per reader, modality x case ANOVA mean squares (keys T, C, TC).
        ss_by_reader: per reader, the corresponding sums of squares.
        components: DBM variance components.
        rrrc: random readers, random cases.
        frrc: fixed readers, random cases.
        rrfc: random readers, fixed cases.
        alpha: significance level.
    """

    fom: str
    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    n_negative: int
    n_positive: int
    fom_values: np.ndarray
    modality_means: tuple[float, ...]
    ss: dict[str, float]
    df: dict[str, float]
    ms: dict[str, float]
    ms_by_modality: tuple[dict[str, float], ...]
    ms_by_reader: tuple[dict[str, float], ...]
    ss_by_reader: tuple[dict[str, float], ...]
    components: DBMVarianceComponents
    rrrc: Generalization
    frrc: Generalization
    rrfc: Generalization
    alpha: float

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary of every number."""
        out = jsonable(self)
        out["method"] = "DBM"
        return out

    def summary(self) -> str:
        """Readable text report: estimates, the T x R x C ANOVA, components, three analyses."""
        lines = [
            "Dorfman-Berbaum-Metz MRMC analysis (jackknife pseudovalues, Hillis 2008 ddf)",
            f"FOM: {self.fom}   {len(self.modalities)} modalities, {len(self.readers)} readers, "
            f"{self.n_negative + self.n_positive} cases ({self.n_negative} non-diseased, "
            f"{self.n_positive} diseased)",
            "",
        ]
        rows = [[r, *self.fom_values[:, i]] for i, r in enumerate(self.readers)]
        rows.append(["mean", *self.modality_means])
        lines.append(format_table(["reader", *self.modalities], rows, title="FOM estimates"))
        rows = [[k, self.ss[k], int(self.df[k]), self.ms[k]] for k in ("T", "R", "C", "TR", "TC", "RC", "TRC")]
        lines.append(format_table(["source", "SS", "df", "MS"], rows,
                                  title="Modality x reader x case ANOVA of pseudovalues"))
        c = self.components
        lines.append(format_table(["component", "estimate"], [
            ["Var(R)", c.var_r], ["Var(C)", c.var_c], ["Var(T*R)", c.var_tr], ["Var(T*C)", c.var_tc],
            ["Var(R*C)", c.var_rc], ["Var(T*R*C)+Var(error)", c.var_trc_error]],
            title="DBM variance components"))
        for g in (self.rrrc, self.frrc, self.rrfc):
            lines.append(g.text(self.fom, self.alpha))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def pseudovalues(data: ReaderStudyData, *, fom: str = "auc", threshold: float | None = None) -> np.ndarray:
    """Jackknife pseudovalues ``K theta - (K-1) theta_(-k)``, shape (T, R, K)."""
    sc = fom_components(data, fom, threshold=threshold)
    k = data.n_cases
    return k * sc.theta[..., None] - (k - 1) * jackknife_fom(sc)


def dbm_analysis(
    data: ReaderStudyData, *, fom: str = "auc", threshold: float | None = None, alpha: float = 0.05
) -> DBMResult:
    """DBM analysis of a fully crossed MRMC study (RRRC, FRRC, RRFC).

    Args:
        data: the ratings, fully crossed.
        fom: ``"auc"``, ``"sensitivity"`` or ``"specificity"``.
        threshold: decision threshold for the binary FOMs.
        alpha: 1 - confidence level.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if data.n_readers < 2:
        raise ValueError(f"{data.source}: DBM analysis needs at least 2 readers")
    y = pseudovalues(data, fom=fom, threshold=threshold)
    return dbm_from_pseudovalues(y, modalities=data.modalities, readers=data.readers,
                                 n_negative=data.n_negative, n_positive=data.n_positive,
                                 fom=fom, alpha=alpha)


def dbm_from_pseudovalues(
    y: np.ndarray,
    *,
    modalities: tuple[str, ...],
    readers: tuple[str, ...],
    n_negative: int,
    n_positive: int,
    fom: str = "auc",
    alpha: float = 0.05,
) -> DBMResult:
    """DBM analysis from pseudovalues (T, R, C)."""
    t, r, c = y.shape
    ss, df, ms = three_way_ms(y)
    theta = y.mean(axis=2)
    means = theta.mean(axis=1)
    by_mod = []
    for i in range(t):
        _, _, m = three_way_ms(y[i][None])
        by_mod.append({"R": m["R"], "C": m["C"], "RC": m["RC"]})
    by_reader, ss_reader = [], []
    for j in range(r):
        s, _, m = three_way_ms(y[:, j][:, None, :])
        by_reader.append({"T": m["T"], "C": m["C"], "TC": m["TC"]})
        ss_reader.append({"T": s["T"], "C": s["C"], "TC": s["TC"]})
    comps = DBMVarianceComponents(
        var_r=(ms["R"] - ms["TR"] - ms["RC"] + ms["TRC"]) / (t * c) if t > 1 else
        (ms["R"] - ms["RC"]) / c,
        var_c=(ms["C"] - ms["TC"] - ms["RC"] + ms["TRC"]) / (t * r) if t > 1 else
        (ms["C"] - ms["RC"]) / r,
        var_tr=(ms["TR"] - ms["TRC"]) / c,
        var_tc=(ms["TC"] - ms["TRC"]) / r,
        var_rc=(ms["RC"] - ms["TRC"]) / t,
        var_trc_error=ms["TRC"],
    )
    pairs = list(itertools.combinations(range(t), 2))
    diff = {p: means[p[0]] - means[p[1]] for p in pairs}

    def diffs(se: float, ddf: float) -> tuple[Difference, ...]:
        return tuple(Difference.build(modalities[a], modalities[b], diff[(a, b)], se, ddf, alpha)
                     for a, b in pairs)

    # RRRC
    err = ms["TR"] + max(ms["TC"] - ms["TRC"], 0.0) if t > 1 else float("nan")
    ddf = err**2 / (ms["TR"] ** 2 / df["TR"]) if t > 1 and ms["TR"] > 0 else float("inf")
    rrrc_cis = []
    for i, m in enumerate(by_mod):
        e1 = m["R"] + max(m["C"] - m["RC"], 0.0)
        df1 = e1**2 / (m["R"] ** 2 / (r - 1)) if m["R"] > 0 else float("inf")
        rrrc_cis.append(ModalityCI.build(modalities[i], means[i], np.sqrt(e1 / (r * c)), df1, alpha))
    rrrc = Generalization("RRRC", GlobalTest.f_test(ms["T"], err, df["T"], ddf),
                          diffs(np.sqrt(2 / (r * c) * err), ddf), tuple(rrrc_cis))
    # FRRC
    reader_diffs = []
    for j in range(r):
        se_r = np.sqrt(2 * by_reader[j]["TC"] / c)
        for a, b in pairs:
            reader_diffs.append(Difference.build(modalities[a], modalities[b],
                                                 theta[a, j] - theta[b, j], se_r, df["TC"], alpha,
                                                 reader=readers[j]))
    frrc = Generalization(
        "FRRC", GlobalTest.f_test(ms["T"], ms["TC"], df["T"], df["TC"]),
        diffs(np.sqrt(2 / (r * c) * ms["TC"]), df["TC"]),
        tuple(ModalityCI.build(modalities[i], means[i], np.sqrt(m["C"] / (r * c)), c - 1, alpha)
              for i, m in enumerate(by_mod)),
        tuple(reader_diffs),
    )
    # RRFC
    rrfc = Generalization(
        "RRFC", GlobalTest.f_test(ms["T"], ms["TR"], df["T"], df["TR"]),
        diffs(np.sqrt(2 / (r * c) * ms["TR"]), df["TR"]),
        tuple(ModalityCI.build(modalities[i], means[i], np.sqrt(m["R"] / (r * c)), r - 1, alpha)
              for i, m in enumerate(by_mod)),
    )
    return DBMResult(
        fom=fom, modalities=tuple(modalities), readers=tuple(readers), n_negative=n_negative,
        n_positive=n_positive, fom_values=theta, modality_means=tuple(float(m) for m in means),
        ss=ss, df=df, ms=ms, ms_by_modality=tuple(by_mod), ms_by_reader=tuple(by_reader),
        ss_by_reader=tuple(ss_reader), components=comps, rrrc=rrrc, frrc=frrc, rrfc=rrfc,
        alpha=alpha,
    )
