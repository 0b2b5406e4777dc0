"""QC thumbnails: a PNG mosaic of axial slices, PET fused over MRI where both are given, and the
registration overlay (edges of one image drawn over another)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image
from scipy import ndimage

#: Window limits are percentiles of every 2nd voxel along each axis of a volume larger than this
#: (an eighth of the voxels: the same percentiles to display precision, several times faster).
LIMITS_FULL_VOXELS = 200_000


def _limits(array: np.ndarray, low_pct: float, high_pct: float) -> tuple[float, float]:
    if array.ndim >= 3 and array.size > LIMITS_FULL_VOXELS:
        array = array[::2, ::2, ::2]
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _window(array: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.5,
            limits: tuple[float, float] | None = None) -> np.ndarray:
    """Scale to [0, 1] between two percentiles of ``array`` (or given ``limits``)."""
    if limits is None:
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            return np.zeros_like(array, dtype=np.float32)
        limits = _limits(array, low_pct, high_pct)
    lo, hi = limits
    return np.nan_to_num(np.clip((array - lo) / (hi - lo), 0.0, 1.0), nan=0.0).astype(np.float32)


def _slice_index(depth: int, n: int) -> np.ndarray:
    return np.linspace(depth * 0.2, depth * 0.85, n).astype(int)


def _slices(volume: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` evenly spaced axial slices a mosaic shows, as a thin (X, Y, n[, ...]) volume:
    colouring only these is what keeps a thumbnail fast."""
    return volume[:, :, _slice_index(volume.shape[2], n)]


def _tile(thin: np.ndarray, cols: int) -> np.ndarray:
    """Tile the slices of a thin (X, Y, n[, C]) volume, ``cols`` per row."""
    # axial slice shown radiologically: rows = anterior→posterior (flip Y), columns = X
    tiles = [np.flipud(np.swapaxes(thin[:, :, z], 0, 1)) for z in range(thin.shape[2])]
    rows = [np.concatenate(tiles[i : i + cols], axis=1) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, axis=0)


def _mosaic(volume: np.ndarray, n: int, cols: int) -> np.ndarray:
    """Tile ``n`` evenly spaced axial slices of an RAS-ordered (X, Y, Z[, C]) volume."""
    return _tile(_slices(volume, n), cols)


#: PNG zlib level: the pixels are the same at any level; level 1 is several times faster than
#: ``optimize=True`` for files about 20 % larger.
PNG_LEVEL = 1


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
    # window limits from the whole volume, colours only for the slices shown
    rgb = np.repeat(_window(_slices(base, n_slices), limits=_limits(base, 1.0, 99.5))[..., None], 3, axis=-1)
    if pet is not None:
        pet3 = pet.mean(axis=3) if pet.ndim == 4 else pet
        p = _window(_slices(pet3, n_slices), limits=_limits(pet3, 0.0, 99.9))
        hot = colormaps["hot"](p)[..., :3]
        if mri is None:
            rgb = hot
        else:
            alpha = (pet_alpha * (p > 0.3))[..., None]
            rgb = rgb * (1 - alpha) + hot * alpha
    mosaic = _tile(rgb, cols)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mosaic * 255).astype(np.uint8)).save(out_path, compress_level=PNG_LEVEL)
    return out_path


def render_edge_overlay(
    out_path: str | Path,
    base: np.ndarray,
    edges_of: np.ndarray,
    *,
    n_slices: int = 12,
    cols: int = 6,
    colour: tuple[float, float, float] = (0.1, 1.0, 0.3),
    levels: tuple[float, ...] = (0.3, 0.75),
) -> Path:
    """Registration QC: ``base`` in grey (e.g. the MNI template) with the edges of ``edges_of``
    (e.g. the registered T1c) drawn in ``colour``; RAS-ordered arrays on the same grid.

    The edges are contour lines of ``edges_of`` (smoothed by one voxel in-plane) at ``levels``
    times its 99th percentile: on a T1 the outline of the brain and of the ventricles and the
    grey/white boundary, which lie on the template's when the registration is right.
    """
    if base.shape[:3] != edges_of.shape[:3]:
        raise ValueError(f"render_edge_overlay: grids differ {base.shape[:3]} vs {edges_of.shape[:3]}")
    b3 = base.mean(axis=3) if base.ndim == 4 else base
    e3 = edges_of.mean(axis=3) if edges_of.ndim == 4 else edges_of
    grey = _window(_slices(b3, n_slices), limits=_limits(b3, 1.0, 99.5))
    thin = np.nan_to_num(_slices(e3, n_slices).astype(np.float32))
    # contours of the smoothed image at fractions of its 99th percentile (T1: the brain's outline,
    # the ventricles, the grey/white boundary); noise and bias fields do not draw lines
    smooth = ndimage.gaussian_filter(thin, sigma=(1.0, 1.0, 0.0))
    top = float(np.percentile(smooth, 99)) or 1.0
    plane = np.zeros((3, 3, 3), bool)
    plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    edge = np.zeros(thin.shape, bool)
    for level in levels:
        above = smooth > level * top
        edge |= above & ~ndimage.binary_erosion(above, structure=plane)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[edge] = np.asarray(colour, dtype=np.float32)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((_tile(rgb, cols) * 255).astype(np.uint8)).save(out_path, compress_level=PNG_LEVEL)
    return out_path
