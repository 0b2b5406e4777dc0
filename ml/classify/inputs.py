"""Inputs of the WP3 classifiers: lesion-centred crops, augmentations and hand-crafted features.

Every deep family (3D CNN from scratch, fine-tuned / linear-probed foundation encoder) reads the same
input: a cube of ``crop`` voxels of the exam's channel stack (:class:`ml.foundation.data.ExamStack`,
channels ``t1c, flair, suv, suv_early, suv_late``) centred on the lesion, with the MNI mm of its first
voxel (the foundation encoder's position embedding). The centre is the tumour mask's centroid when a
mask is known (the site's VOI or the platform's automatic VOI), otherwise the hottest point of the
smoothed SUV/TBR channel inside the brain, away from the striatum. Voxels outside the grid are 0
(the value of the background in every normalised channel).

Augmentations (:class:`Augmenter`, the same for every deep family): left-right mirror (with the
origin mirrored across the midsagittal plane x = 0, so the position embedding stays true), a random
shift of the crop centre, per-channel intensity scale and offset, Gaussian noise. Seeded through a
``numpy.random.Generator``.

:func:`stack_features` gives the classical families (radiomics + logistic regression, the T/S max
rule) their table from the same stacks: the clinical parameters of ``manage.py quantify``
(:func:`ml.quant.static.static_parameters`, TTP, slope) and optionally IBSI radiomics features
(:func:`ml.radiomics.table.exam_features`) of the TBR in the tumour mask.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from ml.foundation.data import ExamStack

__all__ = [
    "Augmenter",
    "crop_centre",
    "crop_stack",
    "stack_crops",
    "stack_features",
    "CLINICAL_FEATURES",
]

#: Clinical parameters computed by :func:`stack_features` (the columns of ``manage.py quantify``).
CLINICAL_FEATURES: tuple[str, ...] = ("suv_max", "suv_mean", "tbr_max", "tbr_mean", "ts_max", "ts_mean",
                                      "mtv_ml", "ttp_min", "slope_suv_per_h")


def _check_stack(stack: Any) -> None:
    image = getattr(stack, "image", None)
    if image is None or np.ndim(image) != 4:
        raise ValueError(f"stack {getattr(stack, 'key', '?')!r}: image must be (C, X, Y, Z), "
                         f"got {None if image is None else np.shape(image)}")


def crop_centre(stack: ExamStack, *, smooth_mm: float = 8.0) -> np.ndarray:
    """Voxel index (3,) float of the lesion centre (module docstring).

    Args:
        stack: the exam stack.
        smooth_mm: Gaussian FWHM of the hotspot search when there is no tumour mask.
    """
    _check_stack(stack)
    tumour = stack.masks.get("tumor")
    if tumour is not None and np.any(tumour):
        return np.asarray(ndimage.center_of_mass(tumour > 0), dtype=np.float64)
    voxel = float(abs(stack.affine[0, 0]))
    sigma = smooth_mm / 2.3548 / voxel
    pet = ndimage.gaussian_filter(np.asarray(stack.image[2], dtype=np.float32), sigma)
    allowed = stack.masks.get("brain", np.ones(pet.shape, np.uint8)) > 0
    striatum = stack.masks.get("striatum")
    if striatum is not None and np.any(striatum):
        allowed &= ~ndimage.binary_dilation(striatum > 0, iterations=max(1, int(round(8.0 / voxel))))
    if not allowed.any():
        return (np.asarray(pet.shape, dtype=np.float64) - 1) / 2
    pet = np.where(allowed, pet, -np.inf)
    return np.asarray(np.unravel_index(int(np.argmax(pet)), pet.shape), dtype=np.float64)


def crop_stack(
    image: np.ndarray, affine: np.ndarray, centre_vox: Sequence[float], size: int, *, flip_x: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``^3 cube of ``image`` centred on ``centre_vox``, zero outside the grid.

    Args:
        image: (C, X, Y, Z).
        affine: (4, 4) voxel -> MNI mm (RAS-aligned common grid).
        centre_vox: (3,) voxel index of the centre.
        size: edge (voxels).
        flip_x: mirror the crop left-right; the origin is mirrored across x = 0 (MNI midline).

    Returns:
        ``(crop (C, size, size, size) float32, origin_mm (3,))``: origin = MNI mm of voxel (0, 0, 0)
        of the crop.
    """
    if size < 1:
        raise ValueError(f"size: must be >= 1, got {size}")
    c, *shape = image.shape
    start = np.round(np.asarray(centre_vox, dtype=np.float64) - (size - 1) / 2).astype(int)
    out = np.zeros((c, size, size, size), dtype=np.float32)
    src = [slice(max(0, s), min(n, s + size)) for s, n in zip(start, shape, strict=True)]
    dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True)]
    if all(sl.stop > sl.start for sl in src):
        out[(slice(None), *dst)] = image[(slice(None), *src)]
    origin = (np.asarray(affine, dtype=np.float64) @ np.append(start.astype(np.float64), 1.0))[:3]
    if flip_x:
        out = out[:, ::-1].copy()
        # voxel 0 of the mirrored crop is the former last voxel, at x0 + (size-1) v, mirrored: -(...)
        origin = origin.copy()
        origin[0] = -(origin[0] + (size - 1) * float(affine[0, 0]))
    return out, origin


@dataclass(frozen=True)
class Augmenter:
    """Random augmentations of a crop (module docstring); the same for every deep family.

    Args:
        flip_prob: probability of the left-right mirror.
        shift_vox: maximal shift of the crop centre per axis (voxels, uniform integer).
        intensity_scale: SD of the per-channel multiplicative factor (around 1).
        intensity_shift: SD of the per-channel additive offset (normalised units).
        noise_std: SD of the additive Gaussian noise (normalised units).
    """

    flip_prob: float = 0.5
    shift_vox: int = 3
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"Augmenter.flip_prob: must be in [0, 1], got {self.flip_prob}")
        if min(self.shift_vox, self.intensity_scale, self.intensity_shift, self.noise_std) < 0:
            raise ValueError("Augmenter: shift_vox, intensity_scale, intensity_shift, noise_std must be >= 0")

    def crop(self, image: np.ndarray, affine: np.ndarray, centre_vox: np.ndarray, size: int,
             rng: np.random.Generator, *, intensity_channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """An augmented crop ``(C, size, size, size)`` and its origin (3,) MNI mm.

        ``intensity_channels``: the intensity changes and noise touch only the first this many
        channels (the others, e.g. a mask riding along, are only shifted and mirrored); negative:
        all but the last that many, as a slice end; None: all.
        """
        shift = rng.integers(-self.shift_vox, self.shift_vox + 1, size=3) if self.shift_vox else 0
        flip = bool(rng.random() < self.flip_prob)
        crop, origin = crop_stack(image, affine, np.asarray(centre_vox) + shift, size, flip_x=flip)
        c = len(range(crop.shape[0])[:intensity_channels])
        scale = 1.0 + self.intensity_scale * rng.standard_normal(c).astype(np.float32)
        offset = self.intensity_shift * rng.standard_normal(c).astype(np.float32)
        crop[:c] = crop[:c] * scale[:, None, None, None] + offset[:, None, None, None]
        if self.noise_std:
            crop[:c] = crop[:c] + self.noise_std * rng.standard_normal(crop[:c].shape).astype(np.float32)
        return crop.astype(np.float32), origin


def stack_crops(stacks: Sequence[ExamStack], size: int, *,
                image_of: Callable[[ExamStack], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Un-augmented lesion-centred crops of several stacks.

    ``image_of(stack)``: the (C', X, Y, Z) array to crop (default the stack's image).

    Returns:
        ``(crops (N, C, size, size, size) float32, origins (N, 3) MNI mm)``.
    """
    crops, origins = [], []
    for s in stacks:
        image = np.asarray(s.image) if image_of is None else image_of(s)
        crop, origin = crop_stack(image, s.affine, crop_centre(s), size)
        crops.append(crop)
        origins.append(origin)
    return np.stack(crops), np.stack(origins)


def _tumour_mask(stack: ExamStack) -> np.ndarray:
    """Tumour mask, or (no mask known) TBR >= 1.6 connected to the hotspot, inside the brain."""
    tumour = stack.masks.get("tumor")
    if tumour is not None and np.any(tumour):
        return tumour > 0
    tbr = np.asarray(stack.image[2])
    centre = tuple(int(round(v)) for v in crop_centre(stack))
    labels, _ = ndimage.label((tbr >= 1.6) & (stack.masks["brain"] > 0))
    if labels[centre] == 0:
        ball = np.zeros(tbr.shape, bool)
        ball[centre] = True
        return ndimage.binary_dilation(ball, iterations=2)
    return labels == labels[centre]


def stack_features(stack: ExamStack, *, radiomics: bool = False) -> dict[str, float]:
    """Clinical PET parameters (and optionally radiomics) of one stack's tumour.

    Background: the healthy brain (brain mask minus tumour and striatum, as the stack's TBR
    normalisation). Static parameters by :func:`ml.quant.static.static_parameters`; TTP and slope
    are medians of the stack's voxel maps over the tumour (NaN without dynamic PET).

    Args:
        stack: the exam stack.
        radiomics: add IBSI features of the TBR image in the tumour mask (prefix ``tbr__``).

    Returns:
        ``{feature: value}`` with :data:`CLINICAL_FEATURES` (+ radiomics).
    """
    from ml.quant.static import static_parameters

    _check_stack(stack)
    tumour = _tumour_mask(stack)
    brain = stack.masks["brain"] > 0
    healthy = brain & ~tumour
    striatum = stack.masks.get("striatum")
    if striatum is not None and np.any(striatum):
        healthy &= striatum == 0
    else:
        striatum = None
    suv = np.asarray(stack.suv, dtype=np.float64)
    params = static_parameters(suv, tumour, affine=stack.affine, background_mask=healthy,
                               striatum_mask=striatum).to_dict()
    row = {k: params[k] for k in CLINICAL_FEATURES[:7]}
    row["ttp_min"] = (float(np.nanmedian(stack.ttp_min[tumour])) if stack.ttp_min is not None
                      and np.isfinite(stack.ttp_min[tumour]).any() else float("nan"))
    row["slope_suv_per_h"] = (float(np.nanmedian(stack.slope_suv_per_h[tumour])) if stack.slope_suv_per_h
                              is not None and np.isfinite(stack.slope_suv_per_h[tumour]).any()
                              else float("nan"))
    if radiomics:
        from ml.radiomics.table import exam_features
        tbr = suv / params["background_mean"]
        row.update(exam_features({"tbr": tbr}, tumour.astype(np.uint8), stack.affine))
    return row
