"""Analytic box phantoms of known SUV and known TACs, for exactness tests and benchmarks.

Layout (RAS+ mm): brain |x|<40, |y|<32, |z|<20 at SUV 1; tumour x in [-32,-16], y in [0,16],
z in [-8,8] at SUV 3.2 with a hot core x in [-28,-20], y in [4,12], z in [-4,4] at SUV 4;
striatum x in +-[4,12], y in [-16,-8], z in [-4,4] at SUV 2. Boundaries fall on voxel edges for
voxel sizes dividing 4 mm, so every parameter has an exact value.
"""
from __future__ import annotations

import numpy as np

EXTENT = np.array([48.0, 40.0, 24.0])  # grid covers [-E, E] per axis
TUMOR_BOX = ((-32, -16), (0, 16), (-8, 8))
CORE_BOX = ((-28, -20), (4, 12), (-4, 4))
STRIATUM_BOXES = (((4, 12), (-16, -8), (-4, 4)), ((-12, -4), (-16, -8), (-4, 4)))
BRAIN_BOX = ((-40, 40), (-32, 32), (-20, 20))
SUV_BRAIN, SUV_TUMOR, SUV_CORE, SUV_STRIATUM = 1.0, 3.2, 4.0, 2.0
TUMOR_VOLUME_ML = 16 * 16 * 16 / 1000.0
CORE_VOLUME_ML = 8 * 8 * 8 / 1000.0


def ras_grid(voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates of voxel centres (X, Y, Z, 3) and the RAS affine."""
    n = (2 * EXTENT / voxel_mm).astype(int)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -EXTENT + voxel_mm / 2
    idx = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), axis=-1)
    return idx * voxel_mm + affine[:3, 3], affine


def in_box(xyz: np.ndarray, box) -> np.ndarray:
    out = np.ones(xyz.shape[:3], dtype=bool)
    for axis, (lo, hi) in enumerate(box):
        out &= (xyz[..., axis] > lo) & (xyz[..., axis] < hi)
    return out


def static_phantom(voxel_mm: float = 2.0) -> dict[str, np.ndarray]:
    """SUV image and masks in RAS storage."""
    xyz, affine = ras_grid(voxel_mm)
    brain = in_box(xyz, BRAIN_BOX)
    tumor = in_box(xyz, TUMOR_BOX)
    core = in_box(xyz, CORE_BOX)
    striatum = in_box(xyz, STRIATUM_BOXES[0]) | in_box(xyz, STRIATUM_BOXES[1])
    suv = np.where(brain, SUV_BRAIN, 0.0)
    suv[striatum] = SUV_STRIATUM
    suv[tumor] = SUV_TUMOR
    suv[core] = SUV_CORE
    return {"suv": suv, "tumor": tumor, "core": core, "striatum": striatum, "brain": brain,
            "affine": affine}


def to_lps(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same physical object stored with the first two axes reversed (LPS-like storage)."""
    out = {}
    shape = arrays["suv"].shape
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1
    flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
    for key, arr in arrays.items():
        out[key] = arrays["affine"] @ flip if key == "affine" else arr[::-1, ::-1].copy()
    return out


def to_transposed(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same object stored with array axes (z, y, x): the affine's columns permuted."""
    perm = np.eye(4)[:, [2, 1, 0, 3]]
    out = {}
    for key, arr in arrays.items():
        if key == "affine":
            out[key] = arr @ perm
        else:
            out[key] = np.ascontiguousarray(np.swapaxes(arr, 0, 2))
    return out


# Dynamic: 15 frames of 2 min, mid-times 1, 3, ..., 29 min.
FRAME_START_S = np.arange(15) * 120.0
FRAME_DURATION_S = np.full(15, 120.0)
MID_MIN = (FRAME_START_S + 60.0) / 60.0


def tumor_tac(t_min: np.ndarray) -> np.ndarray:
    """Early peak at 7 min then linear decrease of 0.05 SUV/min (= -3 SUV/h)."""
    return np.where(t_min <= 7, 4.0 * t_min / 7.0, 4.0 - 0.05 * (t_min - 7.0))


def increasing_tac(t_min: np.ndarray) -> np.ndarray:
    """Monotonic increase of 0.04 SUV/min (= 2.4 SUV/h); peak at the last frame."""
    return 1.0 + 0.04 * t_min


def dynamic_phantom(static: dict[str, np.ndarray]) -> np.ndarray:
    """(X, Y, Z, T) SUV: tumour core follows ``tumor_tac``, rest of tumour ``increasing_tac``,
    everything else constant at its static SUV."""
    dyn = np.repeat(static["suv"][..., None], len(MID_MIN), axis=-1)
    dyn[static["tumor"]] = increasing_tac(MID_MIN)
    dyn[static["core"]] = tumor_tac(MID_MIN)
    return dyn
