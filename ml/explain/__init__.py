"""Explanations of the platform's models, asked in one place.

* Voxel maps of the 3D deep models (captum): :func:`attribution_map` (Integrated Gradients,
  occlusion, Grad-CAM, LRP), :func:`save_map_nifti` (``ml.explain.attributions``).
* Their faithfulness, measured: deletion / insertion curves against random attributions and the
  overlap with a true region (``ml.explain.faithfulness``).
* SHAP values of the radiomics + classical models (``ml.classical.explain``, re-exported here).
"""
from __future__ import annotations

from ml.classical.explain import ShapExplanation, shap_importance, shap_values
from ml.explain.attributions import (
    METHOD_PREFERENCE,
    METHOD_WORDING,
    METHODS,
    UnsupportedLayerError,
    attribution_map,
    available_methods,
    lrp_blockers,
    normalise_map,
    preferred_method,
    save_map_nifti,
)
from ml.explain.faithfulness import (
    FaithfulnessResult,
    MaskOverlap,
    PerturbationCurve,
    faithfulness,
    mask_overlap,
    perturbation_curve,
    random_curves,
)

__all__ = [
    "METHODS",
    "METHOD_PREFERENCE",
    "METHOD_WORDING",
    "preferred_method",
    "FaithfulnessResult",
    "MaskOverlap",
    "PerturbationCurve",
    "faithfulness",
    "mask_overlap",
    "perturbation_curve",
    "random_curves",
    "ShapExplanation",
    "UnsupportedLayerError",
    "attribution_map",
    "available_methods",
    "lrp_blockers",
    "normalise_map",
    "save_map_nifti",
    "shap_importance",
    "shap_values",
]
