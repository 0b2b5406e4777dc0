"""Input validation shared by the quantification modules (shapes, NaNs, empty masks, affines).

Every check raises :class:`ValueError` naming the argument and the reason, so that a job log
says exactly which input of which exam was wrong.
"""
from __future__ import annotations

import numpy as np

__all__ = ["check_volume", "check_mask", "check_affine", "voxel_volume_ml"]


def check_volume(array: np.ndarray, name: str, *, ndim: int = 3) -> np.ndarray:
    """Return ``array`` as float64 after checking its dimensionality and finiteness.

    Args:
        array: image values, shape (X, Y, Z) or (X, Y, Z, T).
        name: argument name used in error messages.
        ndim: required number of dimensions (3 or 4).

    Raises:
        ValueError: wrong dimensionality, empty array, or NaN/inf values.
    """
    arr = np.asarray(array)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: the array is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise ValueError(f"{name}: expected numeric values, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: contains {n_bad} NaN or infinite values")
    return arr


def check_mask(mask: np.ndarray | None, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``mask`` as a boolean array after checking its shape and that it is not empty.

    Args:
        mask: binary mask (any dtype; non-zero means inside), shape (X, Y, Z).
        name: argument name used in error messages.
        shape: the spatial shape of the image the mask belongs to.

    Raises:
        ValueError: mask missing, of another shape, with NaNs, or without any voxel.
    """
    if mask is None:
        raise ValueError(f"{name}: a mask is required")
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: shape {arr.shape} does not match the image shape {tuple(shape)}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    out = arr != 0
    if not out.any():
        raise ValueError(f"{name}: the mask is empty (no voxel inside)")
    return out


def check_affine(affine: np.ndarray) -> np.ndarray:
    """Return a valid 4x4 voxel-to-world (RAS+ mm, NIfTI convention) affine as float64.

    Raises:
        ValueError: wrong shape, non-finite entries or a singular 3x3 part.
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine: expected a 4x4 matrix, got shape {aff.shape}")
    if not np.all(np.isfinite(aff)):
        raise ValueError("affine: contains NaN or infinite values")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError("affine: the 3x3 part is singular (zero voxel size?)")
    return aff


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL: ``|det(A[:3, :3])| / 1000`` (mm^3 to mL)."""
    return float(abs(np.linalg.det(check_affine(affine)[:3, :3])) / 1000.0)
