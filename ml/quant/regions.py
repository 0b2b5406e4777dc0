"""Reference regions: automatic healthy background by mirroring the tumour across the midline.

TBR needs the mean uptake of normal brain. When no background mask is given, AminoPET builds one
the way the guidelines describe it (Law et al., EJNMMI 2019: "a crescent-shaped or mirrored VOI
in the contralateral hemisphere including grey and white matter"):

1. brain support ``S``: the brain mask if given, else ``PET > support_fraction * P99(PET)``
   with holes filled;
2. midsagittal plane ``x = x_mid`` in world (RAS+ mm) coordinates, ``x_mid`` the world x of the
   centroid of ``S`` (or given). Left and right are read from the affine, never from the array
   axes, so RAS, LPS or oblique storage give the same physical region;
3. mirrored tumour ``M = {v : T(A^-1 * R * A * v)}`` with ``R`` the reflection
   ``x -> 2 x_mid - x`` (pulled back with nearest-neighbour lookup, so no holes);
4. background ``B = (M grown by r mm) & S & not(T grown by margin_mm) & not(exclude)``, with
   ``r`` = 0 or increased in steps of one voxel until ``B`` reaches ``min_volume_ml``.

This is an approximation of the manual crescent: on a strongly asymmetric head position give
``midline_x_mm`` or a background mask.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ml.quant._checks import check_affine, check_mask, check_volume, voxel_volume_ml

__all__ = ["brain_support_mask", "mirror_mask", "mirrored_background_mask", "voxel_sizes_mm"]


def voxel_sizes_mm(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm): the norms of the affine's first three columns."""
    return np.linalg.norm(check_affine(affine)[:3, :3], axis=0)


def brain_support_mask(pet: np.ndarray, *, support_fraction: float = 0.2) -> np.ndarray:
    """Brain support from the PET alone: ``PET > support_fraction * P99(PET)``, holes filled.

    Args:
        pet: static PET (X, Y, Z), any units.
        support_fraction: fraction of the 99th percentile used as threshold.
    """
    arr = check_volume(pet, "pet_static")
    if not 0 < support_fraction < 1:
        raise ValueError(f"support_fraction: must be in (0, 1), got {support_fraction}")
    thr = support_fraction * float(np.percentile(arr, 99))
    mask = ndimage.binary_fill_holes(arr > thr)
    if not mask.any():
        raise ValueError("pet_static: no brain support found (image is zero or constant?)")
    return mask


def _world_x_centroid(mask: np.ndarray, affine: np.ndarray) -> float:
    centroid_vox = np.append(np.argwhere(mask).mean(axis=0), 1.0)
    return float((affine @ centroid_vox)[0])


def mirror_mask(mask: np.ndarray, affine: np.ndarray, *, midline_x_mm: float | None = None,
                reflection: np.ndarray | None = None) -> np.ndarray:
    """Reflect a mask across the world plane ``x = midline_x_mm`` (nearest neighbour).

    Args:
        mask: binary mask (X, Y, Z).
        affine: voxel-to-world affine (RAS+ mm).
        midline_x_mm: world x of the midsagittal plane.
        reflection: instead of ``midline_x_mm``, the 4x4 world reflection to use (an involution),
            e.g. the template's midsagittal reflection brought through the exam's registration
            ``P diag(-1, 1, 1) P^-1``, which follows a tilted head.

    Returns:
        Boolean mask on the same grid: voxel ``v`` is inside when its mirror image falls into
        ``mask``. Mirror images outside the grid are outside.
    """
    aff = check_affine(affine)
    m = np.asarray(mask) != 0
    shape = np.array(m.shape)
    out = np.zeros(m.shape, dtype=bool)
    if not m.any():
        return out
    if reflection is not None:
        reflect = np.asarray(reflection, dtype=np.float64)
    elif midline_x_mm is not None:
        reflect = np.diag([-1.0, 1.0, 1.0, 1.0])
        reflect[0, 3] = 2.0 * midline_x_mm
    else:
        raise ValueError("mirror_mask: give midline_x_mm or reflection")
    # The reflection is an involution, so voxel-space map = inv(A) R A both ways.
    vox_map = np.linalg.inv(aff) @ reflect @ aff
    # Bounding box of the forward image of the mask, padded, to limit the pull-back work.
    idx = np.argwhere(m)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    lo_m, hi_m = idx.min(axis=0), idx.max(axis=0)
    box = lo_m + corners * (hi_m - lo_m)
    fwd = (vox_map[:3, :3] @ box.T).T + vox_map[:3, 3]
    lo = np.clip(np.floor(fwd.min(axis=0)).astype(int) - 2, 0, shape - 1)
    hi = np.clip(np.ceil(fwd.max(axis=0)).astype(int) + 2, 0, shape - 1)
    if np.any(fwd.max(axis=0) < -0.5) or np.any(fwd.min(axis=0) > shape - 0.5):
        return out
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)], indexing="ij"), axis=-1
    ).reshape(-1, 3)
    src = np.rint((vox_map[:3, :3] @ grid.T).T + vox_map[:3, 3]).astype(int)
    inside = np.all((src >= 0) & (src < shape), axis=1)
    hit = np.zeros(len(grid), dtype=bool)
    hit[inside] = m[tuple(src[inside].T)]
    out[tuple(grid[hit].T)] = True
    return out


def mirrored_background_mask(
    tumor_mask: np.ndarray,
    affine: np.ndarray,
    *,
    pet: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
    exclude_mask: np.ndarray | None = None,
    midline_x_mm: float | None = None,
    margin_mm: float = 5.0,
    min_volume_ml: float = 1.0,
    support_fraction: float = 0.2,
    reflection: np.ndarray | None = None,
) -> np.ndarray:
    """Healthy background: the tumour mirrored to the contralateral hemisphere (module docstring).

    Args:
        tumor_mask: tumour mask (X, Y, Z), non-empty.
        affine: voxel-to-world affine (RAS+ mm); left/right come from it.
        pet: static PET (X, Y, Z); used for the support when ``brain_mask`` is None.
        brain_mask: brain support (X, Y, Z); preferred over the PET threshold.
        exclude_mask: voxels never part of the background (e.g. the striatum).
        midline_x_mm: world x of the midsagittal plane; default: support centroid.
        margin_mm: distance to the tumour below which voxels are excluded.
        min_volume_ml: grow the mirrored region until the background reaches this volume.
        support_fraction: PET support threshold (fraction of P99), see
            :func:`brain_support_mask`.
        reflection: a 4x4 world reflection replacing the plane ``x = midline_x_mm`` (see
            :func:`mirror_mask`); from the exam's registration to the template.

    Returns:
        Boolean background mask (X, Y, Z).

    Raises:
        ValueError: no PET nor brain mask, bad shapes, or no background voxel left.
    """
    aff = check_affine(affine)
    if brain_mask is not None:
        shape = np.shape(brain_mask)
        support = check_mask(brain_mask, "brain_mask", shape)
    elif pet is not None:
        support = brain_support_mask(pet, support_fraction=support_fraction)
        shape = support.shape
    else:
        raise ValueError("mirrored_background_mask: give pet or brain_mask for the brain support")
    t = check_mask(tumor_mask, "tumor_mask", shape)
    excluded = ndimage.distance_transform_edt(~t, sampling=voxel_sizes_mm(aff)) <= margin_mm
    if exclude_mask is not None:
        excluded |= check_mask(exclude_mask, "exclude_mask", shape)
    x_mid = _world_x_centroid(support, aff) if midline_x_mm is None else float(midline_x_mm)
    mirrored = mirror_mask(t, aff, midline_x_mm=x_mid, reflection=reflection)
    allowed = support & ~excluded
    background = mirrored & allowed
    voxel_ml = voxel_volume_ml(aff)
    if background.sum() * voxel_ml < min_volume_ml:
        step = float(voxel_sizes_mm(aff).min())
        dist = ndimage.distance_transform_edt(~mirrored, sampling=voxel_sizes_mm(aff))
        max_r = float(dist[allowed].max()) if allowed.any() else 0.0
        r = step
        while background.sum() * voxel_ml < min_volume_ml and r <= max_r + step:
            background = (dist <= r) & allowed
            r += step
    if not background.any():
        raise ValueError(
            "mirrored_background_mask: no healthy contralateral voxel found; "
            "give a background_mask or check the tumour mask and brain support"
        )
    return background
