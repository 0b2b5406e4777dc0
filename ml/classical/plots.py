"""ROC curve with its bootstrap CI band and calibration plot (matplotlib, no pyplot state).

Figures are built with :class:`matplotlib.figure.Figure` directly, so they work headless (Agg)
in Celery workers and never leak global pyplot figures; ``fig.savefig(path)`` writes PNG.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["roc_figure", "calibration_figure", "save_figure"]


def roc_figure(
    band: Mapping[str, Sequence[float]], *, auc: Mapping[str, float] | None = None, title: str = ""
) -> Figure:
    """ROC with CI band from :func:`ml.classical.metrics.roc_band`; ``auc`` = MetricCI dict."""
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    label = "ROC"
    if auc and auc.get("estimate") is not None:
        label = f"AUC {auc['estimate']:.2f}"
        if auc.get("lower") is not None:
            label += f" (95% CI {auc['lower']:.2f}-{auc['upper']:.2f})"
    ax.fill_between(band["fpr"], band["tpr_lower"], band["tpr_upper"], alpha=0.25,
                    label="95% bootstrap band")
    ax.plot(band["fpr"], band["tpr"], lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="Sensitivity",
           title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def calibration_figure(
    curve: Mapping[str, Sequence[float]], *, brier: float | None = None, title: str = ""
) -> Figure:
    """Observed frequency vs mean predicted probability, from :func:`ml.classical.metrics.calibration`."""
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    label = "model" if brier is None else f"model (Brier {brier:.3f})"
    ax.plot(curve["prob_pred"], curve["prob_true"], marker="o", label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Mean predicted probability",
           ylabel="Observed frequency", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
