"""Dynamic PET: time-activity curves (TAC), time-to-peak, late slope, curve class, voxel maps.

Frame timing follows BIDS-PET (``FrameTimesStart`` and ``FrameDuration`` in seconds from
injection). Each frame is represented by its mid-time ``t_i = start_i + duration_i / 2``.

* TAC of a mask: ``TAC_i = mean_{v in mask} SUV_i(v)`` (SUV units).
* TTP (min): ``t_{argmax_i TAC_i} / 60``, the mid-time of the first frame reaching the maximum
  (Ginet et al., EJNMMI 2020; Zaragori et al., EJNMMI Res 2020; for FET Pöpperl et al., EJNMMI
  2006).
* Late slope (SUV/h): ordinary least-squares slope of ``TAC_i`` against ``t_i`` in hours over
  the frames whose mid-time lies in the window ``[w0, w1]`` minutes (default 10-30 min for
  FDOPA, Ginet 2020):  ``slope = sum (t_i - t̄)(y_i - ȳ) / sum (t_i - t̄)^2``.
* Curve class from the relative change over the window
  ``delta = slope * (t_last - t_first) / ȳ``: ``increasing`` if ``delta > tol``,
  ``decreasing`` if ``delta < -tol``, else ``plateau`` (tolerance ``tol`` = 0.05, i.e. a change
  of less than 5 % of the mean over the window counts as a plateau). This mirrors the
  visual classes of Pöpperl et al. 2006 (I increasing, II plateau, III decreasing).

The same formulas are applied voxel by voxel for the TTP and slope parametric maps.
Arrays are (X, Y, Z, T); inputs are in SUV.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ml.quant._checks import check_affine, check_mask, check_volume

__all__ = [
    "CURVE_CLASSES",
    "TimeActivityCurve",
    "frame_mid_times_s",
    "time_activity_curve",
    "time_to_peak_min",
    "late_slope_suv_per_h",
    "curve_class",
    "ttp_map_min",
    "slope_map_suv_per_h",
    "save_parametric_map",
]

CURVE_CLASSES = ("increasing", "plateau", "decreasing")


def frame_mid_times_s(
    frame_start_s: Sequence[float], frame_duration_s: Sequence[float], *, n_frames: int | None = None
) -> np.ndarray:
    """Frame mid-times ``start + duration / 2`` in seconds.

    Args:
        frame_start_s: BIDS ``FrameTimesStart`` (s), increasing.
        frame_duration_s: BIDS ``FrameDuration`` (s), positive, same length.
        n_frames: expected number of frames (the 4th dimension of the image), checked if given.

    Raises:
        ValueError: mismatched lengths, non-positive durations, non-increasing starts, NaNs.
    """
    start = np.asarray(frame_start_s, dtype=np.float64).ravel()
    dur = np.asarray(frame_duration_s, dtype=np.float64).ravel()
    if start.size == 0 or start.shape != dur.shape:
        raise ValueError(
            f"frame_start_s/frame_duration_s: need equal non-zero lengths, got {start.size} and {dur.size}"
        )
    if n_frames is not None and start.size != n_frames:
        raise ValueError(
            f"frame_start_s: {start.size} frames given but pet_dynamic has {n_frames} frames"
        )
    if not (np.all(np.isfinite(start)) and np.all(np.isfinite(dur))):
        raise ValueError("frame_start_s/frame_duration_s: contain NaN or infinite values")
    if np.any(dur <= 0):
        raise ValueError("frame_duration_s: all durations must be > 0")
    if np.any(np.diff(start) <= 0):
        raise ValueError("frame_start_s: start times must be strictly increasing")
    return start + dur / 2.0


@dataclass(frozen=True)
class TimeActivityCurve:
    """A TAC: mean SUV per frame with the frame mid-times (s)."""

    mid_times_s: np.ndarray
    values: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-safe lists: ``{"mid_times_s": [...], "values": [...]}``."""
        return {"mid_times_s": self.mid_times_s.tolist(), "values": self.values.tolist()}


def time_activity_curve(
    pet_dynamic: np.ndarray, mask: np.ndarray, mid_times_s: np.ndarray, *, name: str = "mask"
) -> TimeActivityCurve:
    """Mean SUV of ``mask`` in every frame of ``pet_dynamic`` (X, Y, Z, T)."""
    arr = check_volume(pet_dynamic, "pet_dynamic", ndim=4)
    m = check_mask(mask, name, arr.shape[:3])
    t = np.asarray(mid_times_s, dtype=np.float64)
    if t.shape != (arr.shape[3],):
        raise ValueError(f"mid_times_s: {t.size} times for {arr.shape[3]} frames")
    return TimeActivityCurve(mid_times_s=t.copy(), values=arr[m].mean(axis=0))


def _curves(values: np.ndarray, mid_times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.atleast_2d(np.asarray(values, dtype=np.float64))
    t = np.asarray(mid_times_s, dtype=np.float64)
    if y.shape[-1] != t.size:
        raise ValueError(f"values: {y.shape[-1]} frames but {t.size} mid-times")
    return y, t


def time_to_peak_min(values: np.ndarray, mid_times_s: np.ndarray) -> np.ndarray | float:
    """TTP in minutes of one curve (T,) or many curves (N, T): mid-time of the first maximum."""
    y, t = _curves(values, mid_times_s)
    ttp = t[np.argmax(y, axis=-1)] / 60.0
    return float(ttp[0]) if np.ndim(values) == 1 else ttp


def _window(t: np.ndarray, window_min: tuple[float, float]) -> np.ndarray:
    w0, w1 = window_min
    if not w1 > w0:
        raise ValueError(f"slope_window_min: end must be after start, got {window_min}")
    sel = (t >= w0 * 60.0 - 1e-9) & (t <= w1 * 60.0 + 1e-9)
    if sel.sum() < 2:
        raise ValueError(
            f"slope_window_min {window_min}: fewer than 2 frame mid-times inside "
            f"(mid-times {np.round(t / 60.0, 2).tolist()} min)"
        )
    return sel


def late_slope_suv_per_h(
    values: np.ndarray, mid_times_s: np.ndarray, *, window_min: tuple[float, float] = (10.0, 30.0)
) -> np.ndarray | float:
    """OLS slope (SUV/h) over the frames whose mid-time is in ``window_min`` (module docstring).

    Args:
        values: one curve (T,) or many (N, T), SUV.
        mid_times_s: frame mid-times (T,), seconds.
        window_min: ``(start, end)`` of the late window in minutes, inclusive.
    """
    y, t = _curves(values, mid_times_s)
    sel = _window(t, window_min)
    th = t[sel] / 3600.0
    yw = y[:, sel]
    tc = th - th.mean()
    slope = (yw - yw.mean(axis=1, keepdims=True)) @ tc / float(tc @ tc)
    return float(slope[0]) if np.ndim(values) == 1 else slope


def curve_class(
    values: np.ndarray,
    mid_times_s: np.ndarray,
    *,
    window_min: tuple[float, float] = (10.0, 30.0),
    tolerance: float = 0.05,
) -> str:
    """``"increasing"``, ``"plateau"`` or ``"decreasing"`` from the relative change over the window.

    ``delta = slope * (t_last - t_first) / mean`` over the window frames; plateau if
    ``|delta| <= tolerance``.
    """
    y, t = _curves(values, mid_times_s)
    if y.shape[0] != 1:
        raise ValueError("curve_class: expects a single curve (T,)")
    sel = _window(t, window_min)
    slope_h = late_slope_suv_per_h(y[0], t, window_min=window_min)
    span_h = (t[sel].max() - t[sel].min()) / 3600.0
    mean = float(y[0, sel].mean())
    if mean <= 0:
        raise ValueError("curve_class: the mean of the curve over the window is not positive")
    delta = slope_h * span_h / mean
    if delta > tolerance:
        return "increasing"
    if delta < -tolerance:
        return "decreasing"
    return "plateau"


def _voxel_map(
    pet_dynamic: np.ndarray, mask: np.ndarray | None, fn, mid_times_s: np.ndarray, **kw
) -> np.ndarray:
    arr = check_volume(pet_dynamic, "pet_dynamic", ndim=4)
    m = np.ones(arr.shape[:3], dtype=bool) if mask is None else check_mask(mask, "mask", arr.shape[:3])
    out = np.full(arr.shape[:3], np.nan, dtype=np.float64)
    out[m] = fn(arr[m], mid_times_s, **kw)
    return out


def ttp_map_min(
    pet_dynamic: np.ndarray, mid_times_s: np.ndarray, *, mask: np.ndarray | None = None
) -> np.ndarray:
    """Voxel-wise TTP (min), shape (X, Y, Z); NaN outside ``mask`` (whole image if None)."""
    return _voxel_map(pet_dynamic, mask, time_to_peak_min, mid_times_s)


def slope_map_suv_per_h(
    pet_dynamic: np.ndarray,
    mid_times_s: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    window_min: tuple[float, float] = (10.0, 30.0),
) -> np.ndarray:
    """Voxel-wise late slope (SUV/h), shape (X, Y, Z); NaN outside ``mask``."""
    return _voxel_map(pet_dynamic, mask, late_slope_suv_per_h, mid_times_s, window_min=window_min)


def save_parametric_map(
    array: np.ndarray, affine: np.ndarray, path: str | Path, *, description: str = ""
) -> Path:
    """Write a parametric map as float32 NIfTI (NaN kept: viewers show it as transparent).

    Args:
        array: map (X, Y, Z).
        affine: the PET affine (the map is on the PET grid).
        path: output ``.nii`` / ``.nii.gz`` file.
        description: stored in the header ``descrip`` field (80 chars max), e.g. ``"TTP min"``.
    """
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"array: expected a 3-D map, got shape {arr.shape}")
    img = nib.Nifti1Image(arr, check_affine(affine))
    img.header["descrip"] = description[:79].encode()
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, out)
    return out
