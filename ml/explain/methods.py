"""Names of the explanation methods and which one the platform shows: no torch, cheap to import.

The web pages (reader study, exam page) read these without loading torch or captum.
"""
from __future__ import annotations

from collections.abc import Iterable

__all__ = ["METHODS", "METHOD_PREFERENCE", "METHOD_WORDING", "preferred_method"]

METHODS = ("integrated_gradients", "occlusion", "gradcam", "lrp")
#: Methods by decreasing faithfulness measured by bench/bench_explain.py (docs/results.md):
#: the reader study's aided arm shows the first one a prediction has. Integrated gradients and LRP tied
#: (deletion and insertion gains +0.07, overlap AUC 0.93, within each other's CIs); integrated
#: gradients first because it runs on every model, LRP on none of the platform's (residual additions,
#: attention). Grad-CAM and occlusion deleted the model's evidence no faster than random voxels.
METHOD_PREFERENCE = ("integrated_gradients", "lrp", "gradcam", "occlusion")
#: What each method's map says, for the viewer's layer name and description.
METHOD_WORDING = {
    "integrated_gradients": ("AI map (integrated gradients)",
                             "voxels whose intensity pushed the model towards its answer (relative, 0-1)"),
    "occlusion": ("AI map (occlusion)", "how much the answer drops when a block of the image is hidden (relative, 0-1)"),
    "gradcam": ("AI map (Grad-CAM)", "regions the model's last layer attended to, coarse (relative, 0-1)"),
    "lrp": ("AI map (LRP)", "relevance propagated back from the answer to the voxels (relative, 0-1)"),
}


def preferred_method(methods: Iterable[str]) -> str | None:
    """The first of :data:`METHOD_PREFERENCE` among ``methods`` (e.g. the keys of a prediction's maps),
    else the first unknown name in sorted order, None when there is none."""
    names = list(methods)
    for m in METHOD_PREFERENCE:
        if m in names:
            return m
    return sorted(names)[0] if names else None
