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

__all__ = ["RESAMPLE_KINDS", "GridResampler", "resample", "trilinear_weights"]

RESAMPLE_KINDS = ("image", "mask", "fraction")


def trilinear_weights(mapping: np.ndarray, src_shape: tuple[int, ...], out_shape: tuple[int, ...], *,
                      order: str = "C") -> sparse.csr_matrix:
    """Sparse (N_out, N_src) matrix of trilinear weights: output voxel ``o`` reads the source at
    voxel coordinates ``mapping @ o``; outside the source's extent ``[0, n - 1]`` it reads zero
    (no interpolation beyond the edge, as ``ndimage.affine_transform(..., order=1,
    mode="constant", cval=0)``).

    Args:
        mapping: 4x4 output voxel -> source voxel.
        src_shape, out_shape: the grids (the first three axes are used).
        order: how rows and columns flatten the grids, ``"C"`` or ``"F"`` (Fortran: the first
            axis fastest, as NIfTI stores voxels and nibabel loads them; no copy of the frames).
    """
    if order not in ("C", "F"):
        raise ValueError(f"order: 'C' or 'F', got {order!r}")
    src_shape, out_shape = tuple(int(n) for n in src_shape[:3]), tuple(int(n) for n in out_shape[:3])
    n_out, n_src = int(np.prod(out_shape)), int(np.prod(src_shape))
    m = mapping.astype(np.float32)
    i, j, k = (np.arange(n, dtype=np.float32) for n in out_shape)
    # source coordinate along each axis: separable sums of per-axis terms (an affine map)
    src = [(m[a, 0] * i)[:, None, None] + (m[a, 1] * j)[None, :, None] + (m[a, 2] * k)[None, None, :] + m[a, 3]
           for a in range(3)]
    inside = np.ones(out_shape, dtype=bool)
    for a in range(3):
        inside &= (src[a] >= 0) & (src[a] <= src_shape[a] - 1)
    if order == "F":  # a transposed view iterates in Fortran order of the original
        src, inside = [x.T for x in src], inside.T
    rows = np.flatnonzero(inside)
    itype = np.int32 if n_src < 2**31 - 1 and n_out < 2**31 - 9 else np.int64
    strides = ((src_shape[1] * src_shape[2], src_shape[2], 1) if order == "C"
               else (1, src_shape[0], src_shape[0] * src_shape[1]))
    per_axis = []
    for a in range(3):
        x = src[a][inside]
        b = np.floor(x)
        f = x - b
        b = b.astype(itype)
        # (flat offset, weight) of the lower and upper neighbour; outside the source: weight 0
        lo = (np.clip(b, 0, src_shape[a] - 1) * itype(strides[a]), np.where(b >= 0, 1 - f, np.float32(0)))
        hi = (np.clip(b + 1, 0, src_shape[a] - 1) * itype(strides[a]),
              np.where(b + 1 < src_shape[a], f, np.float32(0)))
        per_axis.append((lo, hi))
    vals = np.empty((rows.size, 8), dtype=np.float32)
    cols = np.empty((rows.size, 8), dtype=itype)
    # corner c = (cx, cy, cz), z fastest: the x + y part of the 4 (cx, cy) pairs once, contiguous,
    # then one strided write per corner (the same sums and products, in the same order)
    for cxy, (cx, cy) in enumerate(np.ndindex(2, 2)):
        (ix, wx), (iy, wy) = per_axis[0][cx], per_axis[1][cy]
        ixy, wxy = ix + iy, wx * wy
        for cz in range(2):
            iz, wz = per_axis[2][cz]
            np.add(ixy, iz, out=cols[:, 2 * cxy + cz])
            np.multiply(wxy, wz, out=vals[:, 2 * cxy + cz])
    indptr = np.zeros(n_out + 1, dtype=itype)
    indptr[rows + 1] = 8
    np.cumsum(indptr, out=indptr)
    return sparse.csr_matrix((vals.ravel(), cols.ravel(), indptr), shape=(n_out, n_src))


class GridResampler:
    """Trilinear resampling of the images of one source geometry through one transform onto a
    grid: the sparse weights (:func:`trilinear_weights`, the expensive part) are built once, then
    each image or frame costs one sparse product. For an exam's MRI sequences (one grid) and its
    static and dynamic PET (one grid), which share their transform.

    The same values as :func:`resample` with ``kind="image"`` (tested); outputs are float32 in
    Fortran order, as NIfTI writes them.

    Args:
        src_shape: the source grid (X, Y, Z[, T]); src_affine: its voxel -> world (4x4).
        transform: fixed-to-moving map (grid world -> source world).
        grid: the output grid.
    """

    def __init__(self, src_shape: tuple[int, ...], src_affine: np.ndarray, transform: Transform, grid: Grid) -> None:
        self.src_shape = tuple(int(n) for n in src_shape[:3])
        self.grid = grid
        mapping = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ transform.matrix @ grid.affine
        self.weights = trilinear_weights(mapping, self.src_shape, grid.shape, order="F")

    def __call__(self, array: np.ndarray) -> np.ndarray:
        """Resample ``array`` (X, Y, Z) or (X, Y, Z, T) on the source grid.

        Raises:
            ValueError: the array is not on the source grid.
        """
        array = np.asarray(array)
        if array.shape[:3] != self.src_shape or array.ndim not in (3, 4):
            raise ValueError(f"GridResampler: array {array.shape} is not on the source grid {self.src_shape}")
        frames = array.shape[3] if array.ndim == 4 else 1
        src = np.asfortranarray(array, dtype=np.float32).reshape(-1, frames, order="F")
        out = np.empty((int(np.prod(self.grid.shape)), frames), dtype=np.float32, order="F")
        for t in range(frames):  # each frame is contiguous in Fortran order: no copy
            out[:, t] = self.weights @ src[:, t]
        shape = tuple(self.grid.shape) + ((frames,) if array.ndim == 4 else ())
        return out.reshape(shape, order="F")


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
    if array.ndim == 4 and order == 1 and cval == 0:
        # Frames share one geometry: the trilinear weights are computed once and applied to all
        # frames as a sparse matrix product (several times faster than one pass per frame).
        return GridResampler(array.shape, img.affine, transform, grid)(array)
    out = [ndimage.affine_transform(np.asarray(f, dtype=np.float32), mapping[:3, :3], offset=mapping[:3, 3],
                                    output_shape=grid.shape, order=order, mode="constant", cval=cval,
                                    prefilter=False) for f in frames]
    result = out[0] if array.ndim == 3 else np.stack(out, axis=-1)
    return result.astype(np.float32, copy=False)


def resample_image(image: Image, transform: Transform, grid: Grid) -> Image:
    """:func:`resample` of an image, returned with the grid's affine."""
    return Image(resample(image, transform, grid), grid.affine)
