"""Radiomic features (IBSI, via pyradiomics) of a mask on SUV PET, TBR, TTP/slope maps or MRI.

Parameters (bin width, resampling, feature classes) come from ONE file, ``params.yaml`` next to
this module; ``config`` only overrides it for an experiment and is returned with the features'
provenance by :func:`load_params`. Arrays follow the AminoPET convention: numpy (X, Y, Z) with a
NIfTI voxel-to-world affine (RAS+ mm). They are converted to SimpleITK images in LPS
(``direction``/``origin`` = diag(-1,-1,1) times the affine), so the features do not depend on how
the array is stored (RAS, LPS, transposed).

Feature names are pyradiomics' (``original_firstorder_Mean``, ``original_shape_VoxelVolume``...),
definitions in the IBSI reference manual (Zwanenburg et al., arXiv:1612.07003) and van Griethuysen
et al., Cancer Res 2017. First-order features use the raw (resampled) intensities, texture
features the fixed-bin-width discretisation ``bin = floor(x / w) - floor(min / w) + 1``.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import radiomics
import SimpleITK as sitk
import yaml
from radiomics.featureextractor import RadiomicsFeatureExtractor
from scipy import ndimage

# pyradiomics sets its logger to DEBUG at import and logs every step at INFO: keep errors only,
# both on its own stderr handler and for records propagated to the application's handlers.
radiomics.setVerbosity(logging.ERROR)
logging.getLogger("radiomics").setLevel(logging.ERROR)

__all__ = ["PARAMS_FILE", "IMAGE_TYPES", "load_params", "to_sitk", "extract_features"]

PARAMS_FILE = Path(__file__).with_name("params.yaml")


@lru_cache(maxsize=1)
def _file_params() -> dict[str, Any]:
    with PARAMS_FILE.open() as fh:
        return yaml.safe_load(fh)


IMAGE_TYPES: tuple[str, ...] = tuple(_file_params()["image_types"])


def load_params(image_type: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Settings for one image type: ``common.setting`` + ``image_types[image_type]`` + ``config``.

    Args:
        image_type: one of :data:`IMAGE_TYPES` (``pet_suv``, ``tbr``, ``ttp``, ``slope``, ``mri``).
        config: pyradiomics setting overrides, e.g. ``{"binWidth": 0.5}`` or
            ``{"resampledPixelSpacing": None}``; the key ``featureClass`` (list) replaces the
            enabled feature classes.

    Returns:
        ``{"setting": {...}, "featureClass": [...]}`` (a deep copy, safe to store as provenance).
    """
    params = _file_params()
    if image_type not in params["image_types"]:
        raise ValueError(f"image_type: one of {IMAGE_TYPES}, got {image_type!r}")
    setting = copy.deepcopy(params["common"]["setting"])
    setting.update(copy.deepcopy(params["image_types"][image_type]))
    classes = list(params["common"]["featureClass"])
    for key, value in (config or {}).items():
        if key == "featureClass":
            classes = list(value)
        else:
            setting[key] = value
    return {"setting": setting, "featureClass": classes}


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """numpy (X, Y, Z) + NIfTI RAS affine -> SimpleITK image with LPS geometry."""
    aff = np.asarray(affine, dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0]) @ aff[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in lps[:, 3]])
    img.SetDirection([float(v) for v in (lps[:, :3] / spacing).ravel()])
    return img


def _fill_nonfinite(arr: np.ndarray) -> np.ndarray:
    """Replace NaN/inf (outside the mask) by the nearest finite value.

    Parametric maps are NaN outside the region they were computed in; filling with the nearest
    value (not 0) keeps the resampling interpolation at the mask border unbiased.
    """
    finite = np.isfinite(arr)
    if finite.all():
        return arr
    idx = ndimage.distance_transform_edt(~finite, return_distances=False, return_indices=True)
    return arr[tuple(idx)]


def extract_features(
    image: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    image_type: str,
    config: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """IBSI features of ``mask`` on ``image`` (same grid), settings from ``params.yaml``.

    Args:
        image: values (X, Y, Z) in the units of ``image_type`` (SUV, TBR, min, SUV/h, MRI a.u.);
            non-finite values are allowed outside the mask only (replaced by the nearest
            finite value, so resampling does not blend NaN or 0 into the border).
        mask: binary mask (X, Y, Z), non-empty.
        affine: 4x4 voxel-to-world affine (RAS+ mm) of both arrays.
        image_type: one of :data:`IMAGE_TYPES`; selects bin width and normalisation.
        config: overrides of the YAML settings (see :func:`load_params`).

    Returns:
        ``{feature_name: value}``, floats, diagnostics left out.

    Raises:
        ValueError: mismatched shapes, empty mask, non-finite values inside the mask.
    """
    arr = np.asarray(image, dtype=np.float64)
    m = np.asarray(mask) != 0
    if arr.ndim != 3:
        raise ValueError(f"image: expected a 3-D array, got shape {arr.shape}")
    if m.shape != arr.shape:
        raise ValueError(f"mask: shape {m.shape} does not match image shape {arr.shape}")
    if not m.any():
        raise ValueError("mask: the mask is empty (no voxel inside)")
    if not np.all(np.isfinite(arr[m])):
        raise ValueError(f"image ({image_type}): NaN or infinite values inside the mask")
    if np.asarray(affine).shape != (4, 4):
        raise ValueError(f"affine: expected a 4x4 matrix, got shape {np.shape(affine)}")
    arr = _fill_nonfinite(arr)
    params = load_params(image_type, config)
    extractor = RadiomicsFeatureExtractor(**params["setting"])
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(**{name: [] for name in params["featureClass"]})
    extractor.enableImageTypes(Original={})
    result = extractor.execute(to_sitk(arr, affine), to_sitk(m.astype(np.uint8), affine))
    return {
        key: float(value)
        for key, value in result.items()
        if not key.startswith("diagnostics_")
    }
