"""Reading time: linear mixed model on log time with crossed reader and case random effects.

``log(time_rca) = b0 + b_arm + u_r + v_c + e`` with ``u_r ~ N(0, s2_reader)``,
``v_c ~ N(0, s2_case)``, ``e ~ N(0, s2)``. statsmodels' ``MixedLM`` handles crossed random
effects as variance components inside one all-encompassing group (statsmodels documentation,
"Variance components"; Pinheiro & Bates 2000). ``exp(b_arm)`` is the ratio of geometric-mean
reading times, arm versus the reference arm; REML estimates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .results import format_table, jsonable

__all__ = ["ReadingTimeResult", "ArmEffect", "reading_time_model"]


@dataclass(frozen=True)
class ArmEffect:
    """Effect of one arm on log reading time, relative to the reference arm.

    Attributes:
        arm: label.
        log_ratio: coefficient b_arm.
        se: its standard error.
        p_value: Wald test of b_arm = 0.
        ratio: ``exp(b_arm)``, geometric-mean time ratio.
        ratio_ci_low: ``exp(b_arm - z se)``.
        ratio_ci_high: ``exp(b_arm + z se)``.
    """

    arm: str
    log_ratio: float
    se: float
    p_value: float
    ratio: float
    ratio_ci_low: float
    ratio_ci_high: float


@dataclass(frozen=True)
class ReadingTimeResult:
    """Result of :func:`reading_time_model`.

    Attributes:
        reference_arm: arm absorbed in the intercept.
        effects: one :class:`ArmEffect` per other arm.
        geometric_mean: model-based geometric mean time per arm (``exp`` of the fixed effects).
        var_reader: reader variance component (log scale).
        var_case: case variance component (log scale).
        var_residual: residual variance (log scale).
        n_readings: number of readings used.
        converged: whether the optimiser converged.
        alpha: significance level.
    """

    reference_arm: str
    effects: tuple[ArmEffect, ...]
    geometric_mean: dict[str, float]
    var_reader: float
    var_case: float
    var_residual: float
    n_readings: int
    converged: bool
    alpha: float

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary."""
        return jsonable(self)

    def summary(self) -> str:
        """Text tables."""
        conf = int(round(100 * (1 - self.alpha)))
        rows = [[e.arm, self.reference_arm, e.ratio, e.ratio_ci_low, e.ratio_ci_high, e.log_ratio, e.se,
                 e.p_value] for e in self.effects]
        out = [format_table(["arm", "vs", "time ratio", f"[{conf}% low", "high]", "log ratio", "se", "p"],
                            rows, title="Reading time, mixed model on log time (reader, case random)")]
        out.append(format_table(["arm", "geometric mean"], list(self.geometric_mean.items())))
        out.append(format_table(["component", "variance (log scale)"], [
            ["reader", self.var_reader], ["case", self.var_case], ["residual", self.var_residual]]))
        return "\n".join(out)


def reading_time_model(
    frame: pd.DataFrame,
    *,
    time: str = "time",
    arm: str = "arm",
    reader: str = "reader",
    case: str = "case",
    reference_arm: str | None = None,
    alpha: float = 0.05,
) -> ReadingTimeResult:
    """Fit the crossed-random-effects mixed model on log reading time.

    Args:
        frame: one row per reading with time (seconds, > 0), arm, reader and case columns.
        time: name of the time column.
        arm: name of the arm column (``modality`` in rating files).
        reader: name of the reader column.
        case: name of the case column.
        reference_arm: arm in the intercept (default: first in the data, e.g. ``unaided``).
        alpha: 1 - confidence level.
    """
    import statsmodels.formula.api as smf

    missing = [c for c in (time, arm, reader, case) if c not in frame.columns]
    if missing:
        raise ValueError(f"reading_time_model: missing column(s) {missing}")
    df = frame[[time, arm, reader, case]].copy()
    df.columns = ["time", "arm", "reader", "case"]
    t = pd.to_numeric(df["time"], errors="coerce")
    if t.isna().any() or (t <= 0).any():
        raise ValueError("reading_time_model: times must be positive numbers (no NaN)")
    df["log_time"] = np.log(t.astype(float))
    for c in ("arm", "reader", "case"):
        df[c] = df[c].astype(str)
    arms = list(pd.unique(df["arm"]))
    ref = str(reference_arm) if reference_arm is not None else arms[0]
    if ref not in arms or len(arms) < 2:
        raise ValueError(f"reading_time_model: need >= 2 arms including {ref!r}, have {arms}")
    df["arm"] = pd.Categorical(df["arm"], categories=[ref] + [a for a in arms if a != ref])
    df["all"] = 1
    model = smf.mixedlm(
        "log_time ~ C(arm)", df, groups="all", re_formula="0",
        vc_formula={"reader": "0 + C(reader)", "case": "0 + C(case)"}, use_sparse=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(reml=True, method=["lbfgs", "powell"])
    z = stats.norm.ppf(1 - alpha / 2)
    effects = []
    gm = {ref: float(np.exp(fit.fe_params["Intercept"]))}
    for a in df["arm"].cat.categories[1:]:
        name = f"C(arm)[T.{a}]"
        b, se = float(fit.fe_params[name]), float(fit.bse_fe[name])
        effects.append(ArmEffect(str(a), b, se, float(2 * stats.norm.sf(abs(b / se))), float(np.exp(b)),
                                 float(np.exp(b - z * se)), float(np.exp(b + z * se))))
        gm[str(a)] = float(np.exp(fit.fe_params["Intercept"] + b))
    vc = dict(zip(model.exog_vc.names, np.atleast_1d(fit.vcomp)))
    return ReadingTimeResult(ref, tuple(effects), gm, float(vc["reader"]), float(vc["case"]),
                             float(fit.scale), int(len(df)), bool(fit.converged), alpha)
