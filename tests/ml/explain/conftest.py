"""A generated suspected-recurrence exam as a model input on the 4 mm common grid, cropped to 32^3."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from ml.foundation.data import stack_from_arrays
from ml.io.grid import common_grid, resample_to_grid
from ml.phantoms import make_exam


@dataclass(frozen=True)
class Case:
    """One case: ``image`` (C, 32, 32, 32) float32 and its masks (32, 32, 32) bool, affine of the crop."""

    image: np.ndarray
    brain: np.ndarray
    tumor: np.ndarray
    aggressive: np.ndarray
    affine: np.ndarray


@pytest.fixture(scope="session")
def case() -> Case:
    """Progression exam (seed 3, patient 3, nancy): a 275-voxel aggressive subregion at 2 mm.

    The phantom's world is MNI without head motion, so resampling is enough to reach the grid.
    """
    exam = make_exam(seed=3, patient_index=3, timepoint="suspected_recurrence")
    assert exam.diagnosis == "progression"
    grid = common_grid(4.0)

    def on_grid(vol, order: int = 1) -> np.ndarray:
        return resample_to_grid(vol.data, vol.affine, grid, order=order)

    masks = {k: resample_to_grid(exam.pet_masks[k].astype(np.float32), exam.pet_static.affine, grid,
                                 order=0) for k in ("tumor", "aggressive")}
    stack = stack_from_arrays(
        t1c=on_grid(exam.t1c), flair=on_grid(exam.flair),
        suv=on_grid(exam.pet_static) * exam.suv_factor, affine=grid.affine, masks=masks)
    centre = np.argwhere(stack.masks["tumor"] > 0).mean(0).round().astype(int)
    lo = np.clip(centre - 16, 0, np.array(grid.shape) - 32)
    sl = tuple(slice(int(a), int(a) + 32) for a in lo)
    affine = grid.affine.copy()
    affine[:3, 3] = grid.affine[:3, :3] @ lo + grid.affine[:3, 3]
    return Case(image=stack.image[(slice(None), *sl)].copy(), brain=stack.masks["brain"][sl] > 0,
                tumor=stack.masks["tumor"][sl] > 0, aggressive=stack.masks["aggressive"][sl] > 0,
                affine=affine)
