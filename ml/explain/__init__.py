"""Explanations of the platform's models, asked in one place.

* Voxel maps of the 3D deep models (captum): :func:`attribution_map` (Integrated Gradients,
  occlusion, Grad-CAM, LRP), :func:`save_map_nifti` (``ml.explain.attributions``).
* Their faithfulness, measured: deletion / insertion curves against random attributions and the
  overlap with a true region (``ml.explain.faithfulness``).
* SHAP values of the radiomics + classical models (``ml.classical.explain``, re-exported here).
* Method names and the one the platform shows (``ml.explain.methods``, no torch).

Names are imported on first use (PEP 562), so ``ml.explain.methods`` stays cheap for web pages.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "METHODS": "ml.explain.methods",
    "METHOD_PREFERENCE": "ml.explain.methods",
    "METHOD_WORDING": "ml.explain.methods",
    "preferred_method": "ml.explain.methods",
    "UnsupportedLayerError": "ml.explain.attributions",
    "attribution_map": "ml.explain.attributions",
    "available_methods": "ml.explain.attributions",
    "lrp_blockers": "ml.explain.attributions",
    "normalise_map": "ml.explain.attributions",
    "save_map_nifti": "ml.explain.attributions",
    "FaithfulnessResult": "ml.explain.faithfulness",
    "MaskOverlap": "ml.explain.faithfulness",
    "PerturbationCurve": "ml.explain.faithfulness",
    "faithfulness": "ml.explain.faithfulness",
    "mask_overlap": "ml.explain.faithfulness",
    "perturbation_curve": "ml.explain.faithfulness",
    "random_curves": "ml.explain.faithfulness",
    "ShapExplanation": "ml.classical.explain",
    "shap_importance": "ml.classical.explain",
    "shap_values": "ml.classical.explain",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ml.explain' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return __all__
