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


# --- TTP and late slope from a fitted curve (frame-schedule independent) ---------------------------
#
# Frame-bound TTP can only take the frame mid-times of the site's schedule (an external site with
# long late frames gives a handful of values), so a cut-off learned at one site does not transfer.
# Instead a smooth uptake-washout curve is fitted to the frame values, taking each frame for what it
# measures, the mean of the activity over its interval, and TTP and slope are read off the curve:
#
#     C(t) = A * (1 - exp(-t / tau)) * exp(-lam * t)            (t in min after injection)
#
# the "empirical mathematical model" of Fan et al. (Magn Reson Med 2004;51:487-94, eq. 1 with q = 1)
# for uptake-washout curves, with an analytic peak
#     TTP = tau * ln(1 + 1 / (lam * tau))  for lam > 0  (no peak for lam <= 0),
# capped at a common horizon (``horizon_min``, default 40 min, the usual end of a dynamic FET/FDOPA
# acquisition) so that a curve still rising at the end gets the same TTP whatever the site's last
# frame; the late slope is the least-squares slope of C(t) over the window (121 points), in SUV/h.
# Frame i's model value is the mean of C over [s_i, s_i + d_i] (4-point Gauss-Legendre, exact for cubic pieces). The fit
# minimises sum_i d_i (mean_i - y_i)^2: weights proportional to the frame duration, since a frame's
# variance falls with its counts. It starts from the best point of a (tau, lam) grid (A solved
# linearly at each point) and is refined by Levenberg-Marquardt on (A, log tau, lam), batched over
# curves with numpy so that the voxel maps (10^5 curves) get the same fit as the tumour TAC;
# scipy.optimize.least_squares does the same for one curve but cannot batch.

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(4)
_TAU_GRID_MIN = np.geomspace(0.2, 120.0, 40)
_LAM_GRID_PER_MIN = np.concatenate([np.linspace(-0.02, 0.0, 4)[:-1], np.geomspace(5e-4, 0.5, 20)])
_TAU_BOUNDS_MIN = (0.05, 500.0)
_LAM_BOUNDS_PER_MIN = (-0.05, 2.0)
_SLOPE_POINTS = 121
TTP_HORIZON_MIN = 40.0


def _uptake_washout(t_min: np.ndarray, amplitude, tau_min, lam_per_min) -> np.ndarray:
    t = np.asarray(t_min, dtype=np.float64)
    return amplitude * -np.expm1(-t / tau_min) * np.exp(-lam_per_min * t)


def _frame_nodes_min(frame_start_s: np.ndarray, frame_duration_s: np.ndarray) -> np.ndarray:
    """Gauss-Legendre nodes of every frame, (T, 4), minutes."""
    s = np.asarray(frame_start_s, dtype=np.float64)[:, None] / 60.0
    d = np.asarray(frame_duration_s, dtype=np.float64)[:, None] / 60.0
    return s + d * (_GL_NODES[None, :] + 1.0) / 2.0


def _frame_means(nodes_min: np.ndarray, amplitude, tau_min, lam_per_min) -> np.ndarray:
    """Mean of the model over each frame: (..., T) for parameters of shape (...)."""
    a, tau, lam = (np.asarray(v, dtype=np.float64)[..., None, None] for v in (amplitude, tau_min, lam_per_min))
    return (_uptake_washout(nodes_min, a, tau, lam) * _GL_WEIGHTS).sum(axis=-1) / 2.0


def _ttp_from_params(tau: np.ndarray, lam: np.ndarray, horizon_min: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        peak = tau * np.log1p(1.0 / (np.maximum(lam, 1e-300) * tau))
    return np.where(lam > 0, np.minimum(peak, horizon_min), horizon_min)


def _curve_slope(a: np.ndarray, tau: np.ndarray, lam: np.ndarray, window_min: tuple[float, float]) -> np.ndarray:
    w0, w1 = window_min
    if not w1 > w0:
        raise ValueError(f"slope_window_min: end must be after start, got {window_min}")
    t = np.linspace(w0, w1, _SLOPE_POINTS)
    y = _uptake_washout(t[None, :], a[:, None], tau[:, None], lam[:, None])
    th = t / 60.0
    tc = th - th.mean()
    return (y - y.mean(axis=1, keepdims=True)) @ tc / float(tc @ tc)


@dataclass(frozen=True)
class TacFit:
    """Fitted uptake-washout curves ``C(t) = A (1 - e^{-t/tau}) e^{-lam t}`` (t in minutes), (N,) each.

    Attributes:
        amplitude: ``A`` (SUV), (N,).
        tau_min: uptake time constant (min), (N,).
        lam_per_min: washout rate (1/min), (N,); <= 0 means rising without a peak.
        horizon_min: TTP cap (min).
        rmse: duration-weighted root mean square of the frame residuals (SUV), (N,).
        ok: False where the curve had no positive uptake or NaNs (its parameters are NaN).
    """

    amplitude: np.ndarray
    tau_min: np.ndarray
    lam_per_min: np.ndarray
    horizon_min: float
    rmse: np.ndarray
    ok: np.ndarray

    def __call__(self, t_min: np.ndarray) -> np.ndarray:
        """The curves at ``t_min`` (minutes): (N, len(t_min)) SUV."""
        t = np.asarray(t_min, dtype=np.float64)[None, :]
        return _uptake_washout(t, self.amplitude[:, None], self.tau_min[:, None], self.lam_per_min[:, None])

    def ttp_min(self) -> np.ndarray:
        """Time to peak (min), (N,): ``tau ln(1 + 1/(lam tau))`` capped at the horizon; NaN if not ok."""
        return np.where(self.ok, _ttp_from_params(self.tau_min, self.lam_per_min, self.horizon_min), np.nan)

    def slope_suv_per_h(self, window_min: tuple[float, float] = (10.0, 30.0)) -> np.ndarray:
        """Least-squares slope of each curve over ``window_min`` (SUV/h), (N,)."""
        return np.where(self.ok, _curve_slope(self.amplitude, self.tau_min, self.lam_per_min, window_min), np.nan)

    def relative_change(self, window_min: tuple[float, float] = (10.0, 30.0)) -> np.ndarray:
        """``slope * (w1 - w0) / mean`` of each curve over the window (the curve-class statistic)."""
        t = np.linspace(window_min[0], window_min[1], _SLOPE_POINTS)
        mean = self(t).mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.slope_suv_per_h(window_min) * (window_min[1] - window_min[0]) / 60.0 / mean

    def row(self, i: int = 0) -> dict[str, float]:
        """JSON-safe parameters of curve ``i``."""
        return {"amplitude": float(self.amplitude[i]), "tau_min": float(self.tau_min[i]),
                "lam_per_min": float(self.lam_per_min[i]), "rmse": float(self.rmse[i]),
                "ttp_min": float(self.ttp_min()[i]), "horizon_min": self.horizon_min}


def _grid_start(y: np.ndarray, nodes: np.ndarray, w: np.ndarray, *, chunk: int = 16384):
    """Best grid (A, tau, lam) per curve with A solved linearly (variable projection)."""
    tau_g, lam_g = np.meshgrid(_TAU_GRID_MIN, _LAM_GRID_PER_MIN, indexing="ij")
    tau_g, lam_g = tau_g.ravel(), lam_g.ravel()
    shapes = _frame_means(nodes, 1.0, tau_g, lam_g)  # (M, T)
    sw = np.sqrt(w)
    gs = (shapes * sw).astype(np.float32)
    norm = np.einsum("mt,mt->m", gs, gs)
    best = np.empty(y.shape[0], dtype=np.int64)
    for i in range(0, y.shape[0], chunk):
        proj = (y[i:i + chunk] * sw).astype(np.float32) @ gs.T  # (n, M)
        # min over A >= 0 of |y - A g|^2 is reached at the largest (y.g)^2 / |g|^2 with y.g > 0
        best[i:i + chunk] = np.argmax(np.where(proj > 0, proj * proj / norm, -1.0), axis=1)
    g = shapes[best]
    amp = np.maximum((y * g * w).sum(axis=1) / (g * g * w).sum(axis=1), 1e-9)
    return amp, tau_g[best], lam_g[best]


def _model_and_jacobian(nodes: np.ndarray, a: np.ndarray, log_tau: np.ndarray, lam: np.ndarray):
    """Frame means (N, T) and their derivatives (N, T, 3) in (A, log tau, lam)."""
    t = nodes[None, :, :]
    x = t / np.exp(log_tau)[:, None, None]
    e_up = np.exp(-x)
    e_wash = np.exp(-lam[:, None, None] * t)
    wq = _GL_WEIGHTS / 2.0
    c1 = (1.0 - e_up) * e_wash
    f1 = c1 @ wq
    d_logtau = -(e_wash * e_up * x) @ wq  # d/dlog(tau) of (1 - e^{-t/tau}) = -e^{-t/tau} t / tau
    d_lam = -(t * c1) @ wq
    jac = np.stack([f1, a[:, None] * d_logtau, a[:, None] * d_lam], axis=-1)
    return a[:, None] * f1, jac


def fit_tacs(
    values: np.ndarray,
    frame_start_s,
    frame_duration_s,
    *,
    horizon_min: float = TTP_HORIZON_MIN,
    n_iter: int = 30,
) -> TacFit:
    """Fit the uptake-washout curve to one (T,) or many (N, T) TACs of frame means (section comment).

    Args:
        values: mean SUV of each frame, (T,) or (N, T).
        frame_start_s: BIDS ``FrameTimesStart`` (s from injection).
        frame_duration_s: BIDS ``FrameDuration`` (s).
        horizon_min: TTP cap for curves without a peak before it (min).
        n_iter: Levenberg-Marquardt iterations.

    Raises:
        ValueError: bad frame timing or fewer than 3 frames.
    """
    y = np.atleast_2d(np.asarray(values, dtype=np.float64))
    start = np.asarray(frame_start_s, dtype=np.float64).ravel()
    dur = np.asarray(frame_duration_s, dtype=np.float64).ravel()
    frame_mid_times_s(start, dur, n_frames=y.shape[-1])  # validates the timing
    if np.any(start < 0):
        raise ValueError("frame_start_s: times are counted from injection and cannot be negative")
    if y.shape[-1] < 3:
        raise ValueError(f"values: a curve fit needs at least 3 frames, got {y.shape[-1]}")
    n = y.shape[0]
    ok = np.all(np.isfinite(y), axis=1) & (np.nan_to_num(y).max(axis=1) > 0)
    nodes = _frame_nodes_min(start, dur)
    w = dur / dur.sum()
    out = {k: np.full(n, np.nan) for k in ("a", "tau", "lam", "rmse")}
    if ok.any():
        yy = y[ok]
        a, tau, lam = _grid_start(yy, nodes, w)
        p = np.stack([a, np.log(tau), lam], axis=1)
        lo = np.array([0.0, np.log(_TAU_BOUNDS_MIN[0]), _LAM_BOUNDS_PER_MIN[0]])
        hi = np.array([np.inf, np.log(_TAU_BOUNDS_MIN[1]), _LAM_BOUNDS_PER_MIN[1]])
        model, jac = _model_and_jacobian(nodes, *p.T)
        cost = ((model - yy) ** 2 * w).sum(axis=1)
        mu = np.full(yy.shape[0], 1e-3)
        for _ in range(n_iter):
            r = (model - yy) * w  # weighted residual
            jt = np.swapaxes(jac, 1, 2)  # (N, 3, T)
            jtj = (jt * w) @ jac
            grad = (jt @ r[..., None])[..., 0]
            diag = np.diagonal(jtj, axis1=1, axis2=2)
            damp = jtj + (mu[:, None] * diag + 1e-15)[:, :, None] * np.eye(3)
            step = np.linalg.solve(damp, -grad[..., None])[..., 0]
            trial = np.clip(p + step, lo, hi)
            t_model, t_jac = _model_and_jacobian(nodes, *trial.T)
            t_cost = ((t_model - yy) ** 2 * w).sum(axis=1)
            better = t_cost < cost
            p = np.where(better[:, None], trial, p)
            model = np.where(better[:, None], t_model, model)
            jac = np.where(better[:, None, None], t_jac, jac)
            cost = np.where(better, t_cost, cost)
            mu = np.where(better, mu / 3.0, mu * 10.0)
            if np.all(mu > 1e8):
                break
        out["a"][ok], out["tau"][ok], out["lam"][ok] = p[:, 0], np.exp(p[:, 1]), p[:, 2]
        out["rmse"][ok] = np.sqrt(cost)
    return TacFit(amplitude=out["a"], tau_min=out["tau"], lam_per_min=out["lam"], horizon_min=float(horizon_min),
                  rmse=out["rmse"], ok=ok)


def fitted_ttp_min(values: np.ndarray, frame_start_s, frame_duration_s, *,
                   horizon_min: float = TTP_HORIZON_MIN) -> np.ndarray | float:
    """TTP (min) of the fitted curve of one (T,) or many (N, T) TACs; NaN without positive uptake."""
    ttp = fit_tacs(values, frame_start_s, frame_duration_s, horizon_min=horizon_min).ttp_min()
    return float(ttp[0]) if np.ndim(values) == 1 else ttp


def fitted_slope_suv_per_h(values: np.ndarray, frame_start_s, frame_duration_s, *,
                           window_min: tuple[float, float] = (10.0, 30.0)) -> np.ndarray | float:
    """Late slope (SUV/h) of the fitted curve over ``window_min``, one (T,) or many (N, T) TACs."""
    slope = fit_tacs(values, frame_start_s, frame_duration_s).slope_suv_per_h(window_min)
    return float(slope[0]) if np.ndim(values) == 1 else slope
