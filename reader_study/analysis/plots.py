"""Figures for the results page and reports (matplotlib; each returns the Figure).

* :func:`plot_roc`: empirical ROC per reader (thin) and the reader-averaged curve per arm (thick,
  vertical average), one panel per arm or all arms overlaid.
* :func:`plot_forest`: per-reader FOM differences between two arms with their CIs (FRRC
  single-reader intervals of the OR analysis) and the reader-averaged RRRC difference.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas directly (no pyplot state,
no GUI backend), so they render in any thread or worker: ``fig.savefig("roc.png")``.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data import ReaderStudyData
from .fom import roc_curves
from .or_ import ORResult

__all__ = ["plot_forest", "plot_roc"]


def plot_roc(
    data: ReaderStudyData,
    *,
    modalities: list[str] | None = None,
    readers: bool = True,
    ai_ratings: np.ndarray | None = None,
    title: str = "ROC curves",
) -> Figure:
    """Empirical ROC curves per reader and the reader-averaged curve per arm.

    Args:
        data: ratings (any design: each reader's curve uses the cases they read).
        modalities: arms to draw (default all), overlaid on one axes.
        readers: draw the individual reader curves as thin lines.
        ai_ratings: AI output per case (``data.cases`` order), drawn as a dashed curve.
        title: axes title.
    """
    fig = Figure(figsize=(5.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    mods = modalities or list(data.modalities)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    curves = roc_curves(data, ai_ratings=ai_ratings)
    for n, m in enumerate(mods):
        color = colors[n % len(colors)]
        if readers:
            for rc in curves[m]["readers"].values():
                ax.plot(rc["fpf"], rc["tpf"], color=color, alpha=0.35, lw=0.8)
        avg = curves[m]["average"]
        ax.plot(avg["fpf"], avg["tpf"], color=color, lw=2.2, label=f"{m} (mean AUC {avg['mean_auc']:.3f})")
    if ai_ratings is not None:
        ai = curves["AI"]
        ax.plot(ai["fpf"], ai["tpf"], color="black", lw=1.5, ls="--", label=f"AI (AUC {ai['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="False positive fraction (1 - specificity)",
           ylabel="True positive fraction (sensitivity)", title=title, aspect="equal")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def plot_forest(result: ORResult, *, a: str | None = None, b: str | None = None,
                title: str | None = None) -> Figure:
    """Forest plot of per-reader FOM differences ``b - a`` with CIs, and the RRRC average.

    Args:
        result: an OR analysis (its FRRC single-reader intervals are used per reader).
        a: reference arm (default: first modality).
        b: comparison arm (default: second modality).
        title: axes title.
    """
    a = a or result.modalities[0]
    b = b or result.modalities[1]
    rows = []
    for rd in result.readers:
        try:
            d = result.frrc.difference(b, a, reader=rd)
            rows.append((rd, d.estimate, d.ci_low, d.ci_high))
        except KeyError:
            d = result.frrc.difference(a, b, reader=rd)
            rows.append((rd, -d.estimate, -d.ci_high, -d.ci_low))
    try:
        d = result.rrrc.difference(b, a)
        overall = (d.estimate, d.ci_low, d.ci_high)
    except KeyError:
        d = result.rrrc.difference(a, b)
        overall = (-d.estimate, -d.ci_high, -d.ci_low)
    n = len(rows)
    fig = Figure(figsize=(6.0, 1.2 + 0.35 * (n + 2)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (_, est, lo, hi) in enumerate(rows):
        y = n + 1 - i
        ax.plot([lo, hi], [y, y], color="black", lw=1)
        ax.plot([est], [y], "s", color="black", ms=5)
    est, lo, hi = overall
    ax.fill([lo, est, hi, est], [0, 0.3, 0, -0.3], color="tab:blue")
    ax.axvline(0.0, color="grey", ls=":", lw=1)
    ax.set_yticks([n + 1 - i for i in range(n)] + [0])
    ax.set_yticklabels([r[0] for r in rows] + ["mean (RRRC)"])
    ax.set_xlabel(f"{result.fom.upper()} difference, {b} - {a}")
    ax.set_title(title or f"Per-reader {result.fom.upper()} differences")
    fig.tight_layout()
    return fig
