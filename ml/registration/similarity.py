"""Similarity figures of two images on one grid, for registration QC.

* Normalised mutual information (Studholme, Hill & Hawkes, Pattern Recognit. 1999, 32:71):
  ``NMI = (H(A) + H(B)) / H(A, B)`` from a joint histogram; 1 for independent images, 2 for
  identical ones. Unlike MI it does not grow with the overlap, so exams with different fields of
  view compare.
* Edge maps: the gradient magnitude of a smoothed image (the QC overlay draws them).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["normalized_mutual_information", "edge_map"]


def normalized_mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None,
                                  *, bins: int = 32) -> float:
    """NMI of ``a`` and ``b`` (same shape) over ``mask`` (default: where either is non-zero).

    Intensities are binned between their 1st and 99th percentiles inside the mask (outliers in
    the end bins), so the figure does not depend on units or a few hot voxels.

    Raises:
        ValueError: shapes differ or fewer than 100 voxels to compare.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    m = (a != 0) | (b != 0) if mask is None else np.asarray(mask, dtype=bool)
    x, y = a[m], b[m]
    if x.size < 100:
        raise ValueError("fewer than 100 voxels to compare")

    def binned(v: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(v, [1, 99])
        if hi <= lo:
            hi = lo + 1.0
        return np.clip(((v - lo) / (hi - lo) * bins).astype(int), 0, bins - 1)

    joint = np.bincount(binned(x) * bins + binned(y), minlength=bins * bins).astype(np.float64)
    p = joint / joint.sum()
    pa, pb = p.reshape(bins, bins).sum(axis=1), p.reshape(bins, bins).sum(axis=0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_joint = entropy(p)
    return (entropy(pa) + entropy(pb)) / h_joint if h_joint > 0 else 1.0


def edge_map(volume: np.ndarray, *, sigma_vox: float = 1.0) -> np.ndarray:
    """Gradient magnitude of the Gaussian-smoothed volume, scaled to [0, 1] by its 99.5th percentile."""
    g = ndimage.gaussian_gradient_magnitude(np.asarray(volume, dtype=np.float32), sigma_vox)
    top = float(np.percentile(g, 99.5)) or 1.0
    return np.clip(g / top, 0, 1).astype(np.float32)
