"""Result building blocks shared by the analyses: tests, differences, intervals, text tables.

Results are frozen dataclasses whose fields are the published numbers (statsmodels style);
``to_dict()`` gives plain JSON types (numpy arrays become lists, infinities and NaN become
``None``) and ``summary()`` a fixed-width text report.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "Difference",
    "Generalization",
    "GlobalTest",
    "ModalityCI",
    "format_table",
    "jsonable",
    "t_interval",
]


def jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy values and tuples to JSON-serialisable Python objects."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        val = float(obj)
        return val if math.isfinite(val) else None
    return obj


def t_interval(
    estimate: float, se: float, df: float, alpha: float = 0.05, null: float = 0.0
) -> tuple[float, float, float, float]:
    """Two-sided t test and CI: ``(t, p, low, high)``; df = inf gives the normal (z) version."""
    if not se > 0:
        return (float("nan"), float("nan"), float("nan"), float("nan"))
    stat = (estimate - null) / se
    if math.isfinite(df):  # not stats.t(df): freezing a scipy distribution is slow
        p = 2 * stats.t.sf(abs(stat), df)
        q = stats.t.ppf(1 - alpha / 2, df)
    else:
        p = 2 * stats.norm.sf(abs(stat))
        q = stats.norm.ppf(1 - alpha / 2)
    return float(stat), float(p), float(estimate - q * se), float(estimate + q * se)


@dataclass(frozen=True)
class GlobalTest:
    """Test of H0: all modalities have the same FOM.

    Attributes:
        statistic: F value, or the chi-square X2 when ``distribution == "chi2"``.
        df_num: numerator degrees of freedom (T - 1).
        df_den: denominator degrees of freedom (``inf`` for chi-square).
        p_value: upper-tail probability of the statistic.
        error_term: the denominator of F (a linear combination of mean squares).
        distribution: ``"F"`` or ``"chi2"``.
    """

    statistic: float
    df_num: float
    df_den: float
    p_value: float
    error_term: float
    distribution: str = "F"

    @classmethod
    def f_test(cls, ms_t: float, error_term: float, df_num: float, df_den: float) -> GlobalTest:
        """F = MS(T) / error_term on (df_num, df_den) degrees of freedom."""
        f = ms_t / error_term if error_term > 0 else float("nan")
        p = float(stats.f.sf(f, df_num, df_den)) if math.isfinite(df_den) else float(
            stats.chi2.sf(f * df_num, df_num))
        return cls(float(f), float(df_num), float(df_den), p, float(error_term), "F")

    @classmethod
    def chi2_test(cls, ms_t: float, error_term: float, df_num: float) -> GlobalTest:
        """X2 = (T - 1) MS(T) / error_term on T - 1 degrees of freedom."""
        x2 = df_num * ms_t / error_term if error_term > 0 else float("nan")
        return cls(float(x2), float(df_num), float("inf"), float(stats.chi2.sf(x2, df_num)),
                   float(error_term), "chi2")


@dataclass(frozen=True)
class Difference:
    """A difference of FOMs between two modalities (``a - b``), with test and CI.

    Attributes:
        modality_a: first modality.
        modality_b: second modality.
        estimate: FOM(a) - FOM(b), reader-averaged unless ``reader`` is set.
        se: standard error of the difference.
        df: degrees of freedom of the t reference (``inf``: normal/z).
        statistic: estimate / se.
        p_value: two-sided p-value.
        ci_low: lower confidence limit.
        ci_high: upper confidence limit.
        reader: the reader for single-reader comparisons, else None.
    """

    modality_a: str
    modality_b: str
    estimate: float
    se: float
    df: float
    statistic: float
    p_value: float
    ci_low: float
    ci_high: float
    reader: str | None = None

    @classmethod
    def build(cls, a: str, b: str, estimate: float, se: float, df: float, alpha: float,
              reader: str | None = None) -> Difference:
        """Compute statistic, p and CI from estimate, se and df."""
        stat, p, lo, hi = t_interval(estimate, se, df, alpha)
        return cls(a, b, float(estimate), float(se), float(df), stat, p, lo, hi, reader)


@dataclass(frozen=True)
class ModalityCI:
    """Confidence interval for the reader-averaged FOM of one modality.

    Attributes:
        modality: modality label.
        estimate: reader-averaged FOM.
        se: standard error.
        df: degrees of freedom (``inf``: normal).
        ci_low: lower limit.
        ci_high: upper limit.
    """

    modality: str
    estimate: float
    se: float
    df: float
    ci_low: float
    ci_high: float

    @classmethod
    def build(cls, modality: str, estimate: float, se: float, df: float, alpha: float) -> ModalityCI:
        """CI ``estimate +- t(1 - alpha/2; df) se``."""
        _, _, lo, hi = t_interval(estimate, se, df, alpha)
        return cls(modality, float(estimate), float(se), float(df), lo, hi)


@dataclass(frozen=True)
class Generalization:
    """One generalisation of an MRMC analysis (RRRC, FRRC or RRFC).

    Attributes:
        name: ``"RRRC"`` (random readers, random cases), ``"FRRC"`` (fixed readers) or
            ``"RRFC"`` (fixed cases).
        global_test: test of equal FOMs across all modalities.
        differences: every pairwise modality difference.
        modality_cis: single-modality confidence intervals.
        reader_differences: single-reader differences (FRRC only).
    """

    name: str
    global_test: GlobalTest
    differences: tuple[Difference, ...]
    modality_cis: tuple[ModalityCI, ...]
    reader_differences: tuple[Difference, ...] = ()

    def difference(self, a: str, b: str, reader: str | None = None) -> Difference:
        """The difference ``a - b`` (overall, or for one reader)."""
        pool = self.reader_differences if reader is not None else self.differences
        for d in pool:
            if d.modality_a == str(a) and d.modality_b == str(b) and d.reader == reader:
                return d
        raise KeyError(f"no difference {a} - {b}" + (f" for reader {reader}" if reader else ""))

    def text(self, fom: str, alpha: float) -> str:
        """Text tables of this generalisation."""
        g = self.global_test
        conf = int(round(100 * (1 - alpha)))
        lines = [f"{self.name}: " + {
            "RRRC": "random readers, random cases",
            "FRRC": "fixed readers, random cases",
            "RRFC": "random readers, fixed cases",
        }.get(self.name, "")]
        if g.df_num == 0:
            lines.append("  global test: not applicable (one modality)")
        elif g.distribution == "chi2":
            lines.append(f"  global test: X2({g.df_num:g}) = {g.statistic:.5f}, p = {g.p_value:.4f}"
                         f"  (error term {g.error_term:.8f})")
        else:
            lines.append(f"  global test: F({g.df_num:g}, {g.df_den:.2f}) = {g.statistic:.4f}, "
                         f"p = {g.p_value:.4f}  (error term {g.error_term:.8f})")
        rows = [[f"{d.modality_a} - {d.modality_b}", d.estimate, d.se, d.df, d.statistic,
                 d.p_value, d.ci_low, d.ci_high] for d in self.differences]
        if rows:
            lines.append(format_table(["comparison", "estimate", "std err", "df", "t/z", "p",
                                       f"[{conf}% low", "high]"], rows))
        rows = [[c.modality, c.estimate, c.se, c.df, c.ci_low, c.ci_high] for c in self.modality_cis]
        lines.append(format_table(["modality", fom, "std err", "df", f"[{conf}% low", "high]"], rows))
        if self.reader_differences:
            rows = [[d.reader, f"{d.modality_a} - {d.modality_b}", d.estimate, d.se, d.statistic,
                     d.p_value, d.ci_low, d.ci_high] for d in self.reader_differences]
            lines.append(format_table(["reader", "comparison", "estimate", "std err", "t/z", "p",
                                       f"[{conf}% low", "high]"], rows))
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isinf(v):
            return "inf"
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) < 1e-4 or abs(v) >= 1e6):
            return f"{v:.4e}"
        return f"{v:.6f}" if abs(v) < 10 else f"{v:.3f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> str:
    """Fixed-width text table with a rule under the header (statsmodels ``SimpleTable`` look)."""
    body = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out.append("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    out.append(line)
    out.extend("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body)
    return "\n".join(out) + "\n"
