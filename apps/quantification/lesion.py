"""Where the viewer opens: the tumour's SUVmax voxel (numpy only, so the reading page's first request
does not import the quantification stack: scikit-learn, SimpleITK, pyradiomics)."""
from __future__ import annotations

import numpy as np

from apps.quantification.errors import QuantificationError


def lesion_position_mm(suv: np.ndarray, tumor: np.ndarray, affine: np.ndarray) -> list[float]:
    """World position (mm, RAS) of the tumour's SUVmax voxel: where the viewer opens.

    The first voxel in C order wins a tie, as ``np.argmax`` does, so the position is reproducible.

    Raises:
        QuantificationError: the tumour mask is empty or does not match the PET grid.
    """
    if tumor.shape != suv.shape[:3] or not tumor.any():
        raise QuantificationError(f"tumour mask {tumor.shape} is empty or not on the PET grid {suv.shape[:3]}")
    masked = np.where(tumor, suv, -np.inf)
    ijk = np.unravel_index(int(np.argmax(masked)), masked.shape)
    xyz = np.asarray(affine, dtype=np.float64) @ np.array([*ijk, 1.0])
    return [round(float(v), 3) for v in xyz[:3]]
