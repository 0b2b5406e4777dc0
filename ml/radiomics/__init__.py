"""Radiomics (no Django): IBSI features with pyradiomics, settings from ``params.yaml``.

:func:`extract_features` for one image and mask; :func:`exam_features` and
:func:`feature_table` for per-exam rows and the cohort table.
"""
from ml.radiomics.extract import IMAGE_TYPES, PARAMS_FILE, extract_features, load_params
from ml.radiomics.table import (
    exam_features,
    feature_table,
    load_feature_table,
    save_feature_table,
)

__all__ = [
    "IMAGE_TYPES",
    "PARAMS_FILE",
    "extract_features",
    "load_params",
    "exam_features",
    "feature_table",
    "load_feature_table",
    "save_feature_table",
]
