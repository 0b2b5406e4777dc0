"""QC thumbnails: a PNG mosaic of axial slices, PET fused over MRI where both are given."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image


def _window(array: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.5) -> np.ndarray:
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return np.zeros_like(array, dtype=np.float32)
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _mosaic(volume: np.ndarray, n: int, cols: int) -> np.ndarray:
    """Tile ``n`` evenly spaced axial slices of an RAS-ordered (X, Y, Z[, C]) volume."""
    z_idx = np.linspace(volume.shape[2] * 0.2, volume.shape[2] * 0.85, n).astype(int)
    # axial slice shown radiologically: rows = anterior→posterior (flip Y), columns = X
    tiles = [np.flipud(np.swapaxes(volume[:, :, z], 0, 1)) for z in z_idx]
    rows = [np.concatenate(tiles[i : i + cols], axis=1) for i in range(0, n, cols)]
    return np.concatenate(rows, axis=0)


def render_mosaic(
    out_path: str | Path,
    mri: np.ndarray | None,
    pet: np.ndarray | None = None,
    *,
    n_slices: int = 12,
    cols: int = 6,
    pet_alpha: float = 0.55,
) -> Path:
    """Write a PNG mosaic of axial slices; RAS-ordered arrays on the same grid.

    MRI alone is grey; PET alone uses the ``hot`` colour map; both: PET blended over MRI where
    the PET is above 30 % of its window.
    """
    if mri is None and pet is None:
        raise ValueError("render_mosaic needs an MRI or a PET array")
    base = mri if mri is not None else pet
    if base.ndim == 4:
        base = base.mean(axis=3)
    rgb = np.repeat(_window(base)[..., None], 3, axis=-1)
    if pet is not None:
        pet3 = pet.mean(axis=3) if pet.ndim == 4 else pet
        p = _window(pet3, 0.0, 99.9)
        hot = colormaps["hot"](p)[..., :3]
        if mri is None:
            rgb = hot
        else:
            alpha = (pet_alpha * (p > 0.3))[..., None]
            rgb = rgb * (1 - alpha) + hot * alpha
    mosaic = _mosaic(rgb, n_slices, cols)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mosaic * 255).astype(np.uint8)).save(out_path, optimize=True)
    return out_path
