"""SimpleITK adapters: RAS+ arrays and matrices <-> LPS SimpleITK images and transforms.

ITK's physical space is LPS; AminoPET's is RAS+ (NIfTI). ``F = diag(-1, -1, 1)`` maps one to the
other, so an image's direction is ``F @ R`` and a transform ``T_ras = F T_lps F``.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ml.registration.transform import Image

__all__ = ["to_sitk", "matrix_from_sitk", "sitk_affine"]

_F = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_sitk(image: Image, *, dtype=np.float32) -> sitk.Image:
    """A 3D SimpleITK image (LPS) of a RAS+ :class:`Image` (4D: the frame mean).

    Raises:
        ValueError: a sheared affine (SimpleITK directions are orthonormal).
    """
    array = image.array if image.array.ndim == 3 else image.array.mean(axis=3)
    lin = image.affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = lin / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("affine: sheared voxel axes cannot be registered (resample the image first)")
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0)), dtype=dtype))
    out.SetSpacing([float(v) for v in spacing])
    out.SetOrigin([float(v) for v in _F[:3, :3] @ image.affine[:3, 3]])
    out.SetDirection([float(v) for v in (_F[:3, :3] @ direction).ravel()])
    return out


def matrix_from_sitk(tx: sitk.Transform) -> np.ndarray:
    """4x4 RAS+ matrix of a SimpleITK matrix-offset transform (Euler, similarity, affine)."""
    m = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = m
    lps[:3, 3] = t + c - m @ c
    return _F @ lps @ _F


def sitk_affine(matrix: np.ndarray) -> sitk.AffineTransform:
    """A SimpleITK affine transform (LPS) of a 4x4 RAS+ matrix."""
    lps = _F @ np.asarray(matrix, dtype=np.float64) @ _F
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in lps[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in lps[:3, 3]])
    return tx
