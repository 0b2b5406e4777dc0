"""Resample an image through a transform onto a grid, once, with the interpolation its kind needs.

* ``image``: trilinear. PET is an intensive quantity (SUV, Bq/mL): a linear interpolation is a
  convex combination of neighbouring voxel values, so it never creates activity and keeps the
  mean over a region up to partial-volume effects at its edge (tested: the mean SUV of a VOI).
* ``mask``: nearest neighbour (labels stay labels).
* ``fraction``: trilinear interpolation of the binary mask, i.e. the fraction of each grid voxel
  the structure covers (partial volume); ``>= 0.5`` gives a binary mask of nearly the same volume.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse

from ml.io.grid import Grid
from ml.registration.transform import Image, Transform, as_image

__all__ = ["RESAMPLE_KINDS", "resample", "trilinear_weights"]

RESAMPLE_KINDS = ("image", "mask", "fraction")


def trilinear_weights(mapping: np.ndarray, src_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> sparse.csr_matrix:
    """Sparse (N_out, N_src) matrix of trilinear weights: output voxel ``o`` reads the source at
    voxel coordinates ``mapping @ o``; neighbours outside the source count as zero."""
    n_out = int(np.prod(out_shape))
    m = mapping.astype(np.float32)
    i, j, k = (np.arange(n, dtype=np.float32) for n in out_shape[:3])
    # source coordinate along each axis: separable sums of per-axis terms (an affine map)
    src = [(m[a, 0] * i)[:, None, None] + (m[a, 1] * j)[None, :, None] + (m[a, 2] * k)[None, None, :] + m[a, 3]
           for a in range(3)]
    inside = np.ones(out_shape[:3], dtype=bool)
    for a in range(3):
        inside &= (src[a] > -1) & (src[a] < src_shape[a])
    rows = np.flatnonzero(inside)
    per_axis = []
    for a in range(3):
        x = src[a].ravel()[rows]
        b = np.floor(x).astype(np.int64)
        f = x - b
        # (index, weight) of the lower and upper neighbour; outside the source: weight 0
        lo_ok, hi_ok = b >= 0, b + 1 < src_shape[a]
        per_axis.append(((np.clip(b, 0, src_shape[a] - 1), (1 - f) * lo_ok),
                         (np.clip(b + 1, 0, src_shape[a] - 1), f * hi_ok)))
    strides = (src_shape[1] * src_shape[2], src_shape[2], 1)
    cols, vals = [], []
    for cx, cy, cz in np.ndindex(2, 2, 2):
        (ix, wx), (iy, wy), (iz, wz) = per_axis[0][cx], per_axis[1][cy], per_axis[2][cz]
        cols.append(ix * strides[0] + iy * strides[1] + iz)
        vals.append((wx * wy * wz).astype(np.float32))
    indptr = np.zeros(n_out + 1, dtype=np.int64)
    indptr[rows + 1] = 8
    return sparse.csr_matrix((np.stack(vals, axis=1).ravel(), np.stack(cols, axis=1).ravel(), np.cumsum(indptr)),
                             shape=(n_out, int(np.prod(src_shape[:3]))))


def _resample_box(mask: np.ndarray, mapping: np.ndarray, out_shape: tuple[int, ...], order: int) -> np.ndarray:
    """A mask is zero outside a small box: interpolate only the output voxels that can see it
    (the same values as the whole-grid interpolation, at a fraction of the cost)."""
    out = np.zeros(out_shape, dtype=np.float32)
    nz = np.argwhere(mask != 0)
    if nz.size == 0:
        return out
    lo, hi = nz.min(axis=0) - 1, nz.max(axis=0) + 1
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    inv = np.linalg.inv(mapping)
    where = (inv @ corners.T)[:3]
    o_lo = np.clip(np.floor(where.min(axis=1)).astype(int) - 1, 0, np.asarray(out_shape) - 1)
    o_hi = np.clip(np.ceil(where.max(axis=1)).astype(int) + 2, 0, np.asarray(out_shape))
    if np.any(o_hi <= o_lo):
        return out
    # output voxel o_lo + k reads the source at mapping @ (o_lo + k)
    offset = mapping[:3, :3] @ o_lo + mapping[:3, 3]
    out[o_lo[0]:o_hi[0], o_lo[1]:o_hi[1], o_lo[2]:o_hi[2]] = ndimage.affine_transform(
        mask, mapping[:3, :3], offset=offset, output_shape=tuple(int(v) for v in o_hi - o_lo), order=order,
        mode="constant", cval=0.0, prefilter=False)
    return out


def resample(image, transform: Transform, grid: Grid, *, kind: str = "image", cval: float = 0.0) -> np.ndarray:
    """Bring ``image`` (moving space) onto ``grid`` (fixed space) through ``transform``.

    Args:
        image: an :class:`~ml.registration.transform.Image` or anything :func:`as_image` reads;
            3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, T)``.
        transform: fixed-to-moving map (``pet_from_template`` to put a PET on the common grid).
        grid: the output grid (``ml.io.grid.common_grid()``).
        kind: ``image``, ``mask`` or ``fraction`` (module docstring).
        cval: value outside the image's field of view.

    Returns:
        float32 array of shape ``grid.shape`` (+ T): ``mask`` keeps the label values, ``fraction``
        is in [0, 1].
    """
    if kind not in RESAMPLE_KINDS:
        raise ValueError(f"kind: one of {RESAMPLE_KINDS}, got {kind!r}")
    img = as_image(image)
    array = img.array
    if kind == "fraction":
        if array.ndim != 3:
            raise ValueError("fraction: a 3D mask is expected")
        array = (array > 0).astype(np.float32)
    order = 0 if kind == "mask" else 1
    frames = [array] if array.ndim == 3 else [array[..., t] for t in range(array.shape[3])]
    # grid voxel -> fixed world -> moving world -> moving voxel: one affine map, one interpolation
    mapping = np.linalg.inv(img.affine) @ transform.matrix @ grid.affine
    if kind != "image" and cval == 0:
        return _resample_box(np.asarray(array, dtype=np.float32), mapping, grid.shape, order)
    if array.ndim == 4 and order == 1:
        # Frames share one geometry: the trilinear weights are computed once and applied to all
        # frames as a sparse matrix product (several times faster than one pass per frame).
        weights = trilinear_weights(mapping, array.shape[:3], grid.shape)
        flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1, array.shape[3])
        return (weights @ flat).astype(np.float32).reshape(*grid.shape, array.shape[3])
    out = [ndimage.affine_transform(np.asarray(f, dtype=np.float32), mapping[:3, :3], offset=mapping[:3, 3],
                                    output_shape=grid.shape, order=order, mode="constant", cval=cval,
                                    prefilter=False) for f in frames]
    result = out[0] if array.ndim == 3 else np.stack(out, axis=-1)
    return result.astype(np.float32, copy=False)


def resample_image(image: Image, transform: Transform, grid: Grid) -> Image:
    """:func:`resample` of an image, returned with the grid's affine."""
    return Image(resample(image, transform, grid), grid.affine)
