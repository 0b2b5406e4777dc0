"""The MNI152 template the common grid is defined on (nilearn's ICBM152 2009 T1, shipped offline)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ml.registration.transform import Image

__all__ = ["mni_template", "mni_brain_mask", "mni_tissue_mask"]


@lru_cache(maxsize=2)
def mni_template(resolution: int = 2) -> Image:
    """The MNI152 2009 T1 template (skull-stripped, nilearn; no download), normalised to [0, 1]."""
    from nilearn import datasets  # heavy import kept local

    img = datasets.load_mni152_template(resolution=resolution)
    array = np.asarray(img.dataobj, dtype=np.float32)
    array = array / max(float(np.percentile(array, 99.5)), 1e-6)
    return Image(np.clip(array, 0, 1.5).astype(np.float32), np.asarray(img.affine, dtype=np.float64))


@lru_cache(maxsize=2)
def mni_brain_mask(resolution: int = 2) -> Image:
    """The template's brain mask (uint8) on the template grid."""
    from nilearn import datasets

    img = datasets.load_mni152_brain_mask(resolution=resolution)
    return Image((np.asarray(img.dataobj) > 0).astype(np.uint8), np.asarray(img.affine, dtype=np.float64))


@lru_cache(maxsize=2)
def mni_tissue_mask(resolution: int = 2, threshold: float = 0.5) -> Image:
    """Grey + white matter of the template (nilearn's ICBM152 2009 probability maps summed,
    ``>= threshold``; uint8): brain tissue without ventricles and sulcal CSF."""
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=resolution)
    wm = datasets.load_mni152_wm_template(resolution=resolution)
    tissue = np.asarray(gm.dataobj, dtype=np.float32) + np.asarray(wm.dataobj, dtype=np.float32)
    return Image((tissue >= threshold).astype(np.uint8), np.asarray(gm.affine, dtype=np.float64))
