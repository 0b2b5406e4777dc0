"""Mean squares of the balanced factorial ANOVAs used by the OR and DBM analyses.

Two-way (modality x reader, one observation per cell) for OR on the FOMs, three-way
(modality x reader x case) for DBM on pseudovalues; sums of squares in the usual textbook form
(e.g. Hillis et al. 2005, Table I; Dorfman et al. 1992, Table 1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["two_way_ms", "three_way_ms", "one_way_reader_ms"]


def two_way_ms(y: np.ndarray) -> dict[str, float]:
    """MS(T), MS(R), MS(T*R) of a T x R table without replication.

    ``MS(T) = R/(T-1) sum_t (ybar_t. - ybar)^2``, ``MS(R) = T/(R-1) sum_r (ybar_.r - ybar)^2``,
    ``MS(TR) = sum (y_tr - ybar_t. - ybar_.r + ybar)^2 / ((T-1)(R-1))``.
    NaN where a degree of freedom is zero.
    """
    t, r = y.shape
    g = y.mean()
    mt = y.mean(axis=1)
    mr = y.mean(axis=0)
    ss_t = r * ((mt - g) ** 2).sum()
    ss_r = t * ((mr - g) ** 2).sum()
    ss_tr = ((y - mt[:, None] - mr[None, :] + g) ** 2).sum()
    return {
        "T": ss_t / (t - 1) if t > 1 else float("nan"),
        "R": ss_r / (r - 1) if r > 1 else float("nan"),
        "TR": ss_tr / ((t - 1) * (r - 1)) if t > 1 and r > 1 else float("nan"),
        "SS_T": ss_t, "SS_R": ss_r, "SS_TR": ss_tr,
    }


def one_way_reader_ms(y: np.ndarray) -> float:
    """MS(R) of the readers' FOMs in one modality: sample variance of the R values."""
    return float(np.var(y, ddof=1)) if y.size > 1 else float("nan")


def three_way_ms(y: np.ndarray) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Sums of squares, degrees of freedom and mean squares of a T x R x C table.

    Returns:
        ``(ss, df, ms)`` dictionaries keyed by ``T, R, C, TR, TC, RC, TRC``.
    """
    t, r, c = y.shape
    g = y.mean()
    m_t = y.mean(axis=(1, 2))
    m_r = y.mean(axis=(0, 2))
    m_c = y.mean(axis=(0, 1))
    m_tr = y.mean(axis=2)
    m_tc = y.mean(axis=1)
    m_rc = y.mean(axis=0)
    ss = {
        "T": r * c * ((m_t - g) ** 2).sum(),
        "R": t * c * ((m_r - g) ** 2).sum(),
        "C": t * r * ((m_c - g) ** 2).sum(),
        "TR": c * ((m_tr - m_t[:, None] - m_r[None, :] + g) ** 2).sum(),
        "TC": r * ((m_tc - m_t[:, None] - m_c[None, :] + g) ** 2).sum(),
        "RC": t * ((m_rc - m_r[:, None] - m_c[None, :] + g) ** 2).sum(),
    }
    resid = (y - m_tr[:, :, None] - m_tc[:, None, :] - m_rc[None, :, :]
             + m_t[:, None, None] + m_r[None, :, None] + m_c[None, None, :] - g)
    ss["TRC"] = (resid ** 2).sum()
    df = {"T": t - 1, "R": r - 1, "C": c - 1, "TR": (t - 1) * (r - 1), "TC": (t - 1) * (c - 1),
          "RC": (r - 1) * (c - 1), "TRC": (t - 1) * (r - 1) * (c - 1)}
    ms = {k: (float(ss[k]) / df[k] if df[k] > 0 else float("nan")) for k in ss}
    return {k: float(v) for k, v in ss.items()}, {k: float(v) for k, v in df.items()}, ms
