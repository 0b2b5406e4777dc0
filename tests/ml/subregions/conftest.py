"""Small synthetic exams on the 4 mm common grid for the ml.subregions tests.

A spherical tumour with a hot, early-peaking aggressive blob on one side, the rest of the
tumour rising slowly: what the generator's initial-diagnosis gliomas look like, reduced to
shapes whose truth is known analytically. Built with ``ml.foundation.data.stack_from_arrays``
so the stacks are the real model input (TBR channels, voxel TTP and slope maps).
"""
from __future__ import annotations

import numpy as np
import pytest

from ml.foundation.data import stack_from_arrays
from ml.io.grid import common_grid

FRAME_START_S = np.array([0, 60, 120, 180, 300, 420, 600, 900, 1200, 1800], float)
FRAME_DURATION_S = np.array([60, 60, 60, 120, 120, 180, 300, 300, 600, 600], float)


def _tac(t_min: np.ndarray, kind: str) -> np.ndarray:
    if kind == "early":  # peak about 3 min then washout
        return 9.0 * (1 - np.exp(-t_min / 1.2)) * np.exp(-t_min / 30.0)
    if kind == "rising":
        return 2.0 * (1 - np.exp(-t_min / 12.0)) * 1.1
    return 1.0 * (1 - np.exp(-t_min / 1.5)) * np.exp(-t_min / 200.0) * 1.01  # healthy


def make_stack(
    *,
    seed: int = 0,
    centre_mm: tuple[float, float, float] = (30.0, -10.0, 20.0),
    radius_mm: float = 18.0,
    hot_offset_mm: tuple[float, float, float] = (8.0, 0.0, 0.0),
    hot_radius_mm: float = 8.0,
    hot_gain: float = 1.0,
    noise: float = 0.08,
    key: str = "sub-T/ses-01",
    meta: dict | None = None,
):
    """A stack with a spherical tumour and an aggressive sphere inside (gain scales its
    excess uptake; 0 gives a tumour without a hot subregion)."""
    grid = common_grid(4.0)
    a = grid.affine
    ijk = np.indices(grid.shape, dtype=float).reshape(3, -1)
    world = ((a[:3, :3] @ ijk).T + a[:3, 3]).reshape(*grid.shape, 3)
    tumour = np.linalg.norm(world - np.asarray(centre_mm), axis=-1) <= radius_mm
    hot_c = np.asarray(centre_mm) + np.asarray(hot_offset_mm)
    hot = (np.linalg.norm(world - hot_c, axis=-1) <= hot_radius_mm) & tumour
    rng = np.random.default_rng(seed)
    mid_min = (FRAME_START_S + FRAME_DURATION_S / 2) / 60.0
    healthy, rising, early = (_tac(mid_min, k) for k in ("healthy", "rising", "early"))
    w_t = (tumour & ~hot).astype(float)[..., None]
    w_h = hot.astype(float)[..., None]
    dyn = healthy * (1 - w_t - w_h) + rising * w_t + (rising + hot_gain * (early - rising)) * w_h
    dyn = dyn * (1 + noise * rng.standard_normal(dyn.shape))
    dyn = np.clip(dyn, 0.01, None).astype(np.float32)
    late = (mid_min >= 20) & (mid_min <= 40)
    wts = FRAME_DURATION_S[late] / FRAME_DURATION_S[late].sum()
    suv = np.tensordot(dyn[..., late], wts, axes=([3], [0])).astype(np.float32)
    t1c = (1.0 + 0.1 * rng.standard_normal(grid.shape) + 0.5 * tumour).astype(np.float32)
    flair = (1.0 + 0.1 * rng.standard_normal(grid.shape) + 0.8 * tumour).astype(np.float32)
    return stack_from_arrays(
        t1c=t1c, flair=flair, suv=suv, affine=a, suv_dynamic=dyn, frame_start_s=FRAME_START_S,
        frame_duration_s=FRAME_DURATION_S, masks={"tumor": tumour, "aggressive": hot}, key=key,
        meta=meta or {"who_grade": "4", "idh": "wildtype"},
    )


@pytest.fixture(scope="session")
def stack():
    return make_stack()
