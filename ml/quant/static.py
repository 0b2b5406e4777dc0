"""Static amino-acid PET parameters of a tumour: SUVmax/mean, TBR and T/S ratios, MTV.

Definitions (Law et al., EANM/EANO/RANO guidelines, EJNMMI 2019; Ginet et al., EJNMMI 2020;
Zaragori et al., EJNMMI Res 2020), all on a body-weight SUV image:

* ``SUVmax = max_{v in T} SUV(v)``, ``SUVmean = mean_{v in T} SUV(v)`` over the tumour mask T.
* ``TBRmax = SUVmax / mean_B``, ``TBRmean = SUVmean / mean_B``, with ``mean_B`` the mean SUV of the
  healthy background reference region B (contralateral normal brain).
* ``T/S max = SUVmax / mean_S``, ``T/S mean = SUVmean / mean_S``, with S the striatum (the
  reference used for 18F-FDOPA, whose striatal uptake is physiological).
* ``MTV = N{v in T : SUV(v) >= k * mean_B} * V_voxel`` in mL, k = 1.6 by default (the usual
  amino-acid PET biological tumour volume threshold, Pauleit et al., Brain 2005). The tumour mask
  is the search region: give a generous VOI to measure the thresholded volume.

Ratios always use the reference region's MEAN. Inputs are SUV arrays (X, Y, Z); the caller
converts Bq/mL with :mod:`ml.quant.suv`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ml.quant._checks import check_affine, check_mask, check_volume, voxel_volume_ml

__all__ = ["StaticParameters", "region_mean", "static_parameters", "metabolic_tumor_volume_ml"]


@dataclass(frozen=True)
class StaticParameters:
    """Static parameters of one tumour (SUV units; ratios dimensionless; volume in mL).

    ``ts_max``/``ts_mean``/``striatum_mean`` are NaN when no striatum mask was given.
    """

    suv_max: float
    suv_mean: float
    tbr_max: float
    tbr_mean: float
    ts_max: float
    ts_mean: float
    mtv_ml: float
    background_mean: float
    striatum_mean: float
    tumor_volume_ml: float

    def to_dict(self) -> dict[str, float]:
        """All fields as plain floats (JSON-safe except NaN)."""
        return {k: float(v) for k, v in asdict(self).items()}


def region_mean(image: np.ndarray, mask: np.ndarray, *, name: str = "mask") -> float:
    """Mean of ``image`` over ``mask`` (validated: same shape, non-empty)."""
    m = check_mask(mask, name, np.shape(image))
    return float(np.mean(np.asarray(image, dtype=np.float64)[m]))


def metabolic_tumor_volume_ml(
    suv: np.ndarray,
    tumor_mask: np.ndarray,
    *,
    affine: np.ndarray,
    background_mean: float,
    threshold_tbr: float = 1.6,
) -> float:
    """MTV in mL: tumour-mask voxels with ``SUV >= threshold_tbr * background_mean``.

    Args:
        suv: SUV image (X, Y, Z).
        tumor_mask: search region (X, Y, Z).
        affine: voxel-to-world affine (only the voxel volume is used).
        background_mean: mean SUV of the background reference region (> 0).
        threshold_tbr: TBR threshold k (default 1.6).
    """
    arr = check_volume(suv, "suv")
    m = check_mask(tumor_mask, "tumor_mask", arr.shape)
    if not background_mean > 0:
        raise ValueError(f"background_mean: must be > 0, got {background_mean}")
    if not threshold_tbr > 0:
        raise ValueError(f"threshold_tbr: must be > 0, got {threshold_tbr}")
    n = int(np.count_nonzero(arr[m] >= threshold_tbr * background_mean))
    return n * voxel_volume_ml(affine)


def static_parameters(
    suv: np.ndarray,
    tumor_mask: np.ndarray,
    *,
    affine: np.ndarray,
    background_mask: np.ndarray,
    striatum_mask: np.ndarray | None = None,
    mtv_threshold_tbr: float = 1.6,
) -> StaticParameters:
    """Compute the static parameters of the tumour (formulas in the module docstring).

    Args:
        suv: static SUV image (X, Y, Z).
        tumor_mask: tumour VOI (X, Y, Z), non-empty.
        affine: 4x4 voxel-to-world affine (mm).
        background_mask: healthy background reference region (X, Y, Z), non-empty.
        striatum_mask: striatum reference region, or ``None`` (T/S become NaN).
        mtv_threshold_tbr: TBR threshold of the MTV.

    Raises:
        ValueError: bad shapes, NaNs, empty masks, or a non-positive reference mean.
    """
    arr = check_volume(suv, "suv")
    check_affine(affine)
    t = check_mask(tumor_mask, "tumor_mask", arr.shape)
    b = check_mask(background_mask, "background_mask", arr.shape)
    bg_mean = float(arr[b].mean())
    if not bg_mean > 0:
        raise ValueError(f"background_mask: mean SUV in the background is {bg_mean:g}, must be > 0")
    values = arr[t]
    suv_max, suv_mean = float(values.max()), float(values.mean())
    if striatum_mask is not None:
        s = check_mask(striatum_mask, "striatum_mask", arr.shape)
        str_mean = float(arr[s].mean())
        if not str_mean > 0:
            raise ValueError(f"striatum_mask: mean SUV in the striatum is {str_mean:g}, must be > 0")
        ts_max, ts_mean = suv_max / str_mean, suv_mean / str_mean
    else:
        str_mean = ts_max = ts_mean = float("nan")
    return StaticParameters(
        suv_max=suv_max,
        suv_mean=suv_mean,
        tbr_max=suv_max / bg_mean,
        tbr_mean=suv_mean / bg_mean,
        ts_max=ts_max,
        ts_mean=ts_mean,
        mtv_ml=metabolic_tumor_volume_ml(
            arr, t, affine=affine, background_mean=bg_mean, threshold_tbr=mtv_threshold_tbr
        ),
        background_mean=bg_mean,
        striatum_mean=str_mean,
        tumor_volume_ml=int(t.sum()) * voxel_volume_ml(affine),
    )
