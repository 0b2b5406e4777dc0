"""Resampling onto the common analysis grid shared by the models and the viewer.

The common grid is 2 mm isotropic, RAS-aligned, 96 x 112 x 96 voxels centred on the MNI152 brain
(world x -95..95, y -131..91, z -77..113 mm). Exams are assumed to be in MNI-aligned world space, which
holds for the synthetic cohort; real data needs a registration step first (docs/architecture.md).
The shape is divisible by 16 so vision-transformer patches tile it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)


def common_grid(voxel_mm: float = 2.0) -> Grid:
    """The default common grid (see module docstring); ``voxel_mm`` scales it (1 mm: 192x224x192)."""
    scale = 2.0 / voxel_mm
    shape = tuple(int(round(n * scale)) for n in (96, 112, 96))
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = (-95.0 + voxel_mm / 2, -131.0 + voxel_mm / 2, -77.0 + voxel_mm / 2)
    return Grid(shape=shape, affine=affine)


def resample_to_grid(
    array: np.ndarray, affine: np.ndarray, grid: Grid, *, order: int = 1, cval: float = 0.0
) -> np.ndarray:
    """Resample a 3D (X, Y, Z) or 4D (X, Y, Z, T) array given on ``affine`` onto ``grid``.

    Args:
        order: spline order; 1 (trilinear) for images, 0 (nearest) for masks and labels.
        cval: value outside the source field of view.

    Returns:
        float32 array of shape ``grid.shape`` (+ T for 4D); masks (order 0) keep their values.
    """
    if array.ndim not in (3, 4):
        raise ValueError(f"expected a 3D or 4D array, got shape {array.shape}")
    # voxel index in the source for each grid voxel: inv(A_src) @ A_grid
    mapping = np.linalg.inv(affine) @ grid.affine
    matrix, offset = mapping[:3, :3], mapping[:3, 3]
    frames = [array] if array.ndim == 3 else [array[..., t] for t in range(array.shape[3])]
    out = [
        ndimage.affine_transform(
            np.asarray(f, dtype=np.float32), matrix, offset=offset, output_shape=grid.shape,
            order=order, mode="constant", cval=cval, prefilter=False,
        )
        for f in frames
    ]
    return out[0] if array.ndim == 3 else np.stack(out, axis=-1)
