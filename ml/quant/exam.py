"""One call that quantifies an exam: static parameters, reference regions, TACs, maps, hotspots.

:func:`quantify_exam` is the API the platform's quantification job calls for every exam. It takes
SUV arrays (the caller converts Bq/mL with :func:`ml.quant.suv.to_suv`), the PET affine and the
masks on the PET grid, and returns an :class:`ExamQuantification` whose :meth:`~ExamQuantification.to_row`
gives the CSV columns of ``manage.py quantify``::

    suv_max, suv_mean, tbr_max, tbr_mean, ts_max, ts_mean, mtv_ml, ttp_min, slope_suv_per_h, curve_class

Formulas: :mod:`ml.quant.static` (static), :mod:`ml.quant.kinetics` (dynamic),
:mod:`ml.quant.regions` (automatic background), :mod:`ml.quant.clustering` (hotspots).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.quant._checks import check_affine, check_mask, check_volume
from ml.quant.clustering import HotspotResult, dynamic_hotspots
from ml.quant.kinetics import (
    TTP_HORIZON_MIN,
    TimeActivityCurve,
    curve_class,
    fit_tacs,
    frame_mid_times_s,
    late_slope_suv_per_h,
    save_parametric_map,
    slope_map_suv_per_h,
    time_activity_curve,
    time_to_peak_min,
    ttp_map_min,
)
from ml.quant.regions import brain_support_mask, mirrored_background_mask
from ml.quant.static import StaticParameters, static_parameters

__all__ = ["ROW_COLUMNS", "QuantConfig", "ExamQuantification", "quantify_exam"]

#: Columns of :meth:`ExamQuantification.to_row`, in CSV order.
ROW_COLUMNS: tuple[str, ...] = (
    "suv_max",
    "suv_mean",
    "tbr_max",
    "tbr_mean",
    "ts_max",
    "ts_mean",
    "mtv_ml",
    "ttp_min",
    "slope_suv_per_h",
    "curve_class",
)


@dataclass(frozen=True)
class QuantConfig:
    """Settings of :func:`quantify_exam` (stored with every result for reproducibility).

    Attributes:
        mtv_threshold_tbr: TBR threshold of the metabolic tumour volume (1.6).
        slope_window_min: late-slope window, minutes after injection (10, 30).
        plateau_tolerance: relative change over the window counted as plateau (0.05).
        background_margin_mm: automatic background keeps this distance from the tumour.
        background_min_volume_ml: automatic background grows to at least this volume.
        support_fraction: PET brain-support threshold, fraction of the 99th percentile.
        midline_x_mm: world x of the midsagittal plane; None = support centroid.
        maps_region: where parametric maps are computed: ``"brain"``, ``"tumor"`` or ``"none"``.
        n_clusters: k of the TAC clustering; 0 disables hotspots.
        cluster_normalization: TAC normalisation for clustering (``"mean"``, ``"max"``, ``"zscore"``).
        random_state: k-means seed.
        kinetics: ``"fit"`` (default): TTP, slope, curve class and maps from the uptake-washout
            curve fitted to the frame means (:mod:`ml.quant.kinetics`, comparable across frame
            schedules); ``"frames"``: the frame mid-time of the maximum and the OLS slope of the
            frames (the values before issue 10, bound to the site's frame schedule).
        ttp_horizon_min: TTP of a curve still rising at this time (min), ``"fit"`` only.
        map_fit_iterations: Levenberg-Marquardt iterations of the voxel maps (cost vs precision).
    """

    mtv_threshold_tbr: float = 1.6
    slope_window_min: tuple[float, float] = (10.0, 30.0)
    plateau_tolerance: float = 0.05
    background_margin_mm: float = 5.0
    background_min_volume_ml: float = 1.0
    support_fraction: float = 0.2
    midline_x_mm: float | None = None
    maps_region: str = "brain"
    n_clusters: int = 3
    cluster_normalization: str = "mean"
    random_state: int = 0
    kinetics: str = "fit"
    ttp_horizon_min: float = TTP_HORIZON_MIN
    map_fit_iterations: int = 6

    def __post_init__(self) -> None:
        if self.kinetics not in ("fit", "frames"):
            raise ValueError(f"kinetics: 'fit' or 'frames', got {self.kinetics!r}")
        if self.maps_region not in ("brain", "tumor", "none"):
            raise ValueError(f"maps_region: 'brain', 'tumor' or 'none', got {self.maps_region!r}")
        if not self.mtv_threshold_tbr > 0:
            raise ValueError(f"mtv_threshold_tbr: must be > 0, got {self.mtv_threshold_tbr}")
        if self.plateau_tolerance < 0:
            raise ValueError(f"plateau_tolerance: must be >= 0, got {self.plateau_tolerance}")
        if self.n_clusters < 0:
            raise ValueError(f"n_clusters: must be >= 0, got {self.n_clusters}")
        object.__setattr__(self, "slope_window_min", tuple(float(v) for v in self.slope_window_min))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; ``QuantConfig(**d)`` rebuilds it."""
        d = asdict(self)
        d["slope_window_min"] = list(self.slope_window_min)
        return d


@dataclass(frozen=True)
class ExamQuantification:
    """Everything measured on one exam.

    Attributes:
        static: static parameters (:class:`~ml.quant.static.StaticParameters`).
        ttp_min: tumour TAC time-to-peak (min); NaN without dynamic PET.
        slope_suv_per_h: tumour TAC late slope (SUV/h); NaN without dynamic PET.
        curve_class: ``increasing``/``plateau``/``decreasing``; ``"n/a"`` without dynamic PET.
        background_mask: the background reference region used (X, Y, Z) bool.
        background_source: ``"given"`` or ``"mirrored"`` (automatic).
        tacs: TACs keyed ``"tumor"``, ``"background"`` and ``"striatum"`` (if given).
        ttp_map: voxel TTP (min) (X, Y, Z), NaN outside ``config.maps_region``, or None.
        slope_map: voxel late slope (SUV/h), or None.
        hotspots: kinetic clusters of the tumour, or None.
        kinetic_fit: the fitted tumour curve (parameters, rmse, TTP) and the frame-bound TTP and
            slope beside it, or None (no dynamic PET).
        affine: the PET affine (for :meth:`save_maps`).
        config: the settings used.
    """

    static: StaticParameters
    ttp_min: float
    slope_suv_per_h: float
    curve_class: str
    background_mask: np.ndarray
    background_source: str
    affine: np.ndarray
    config: QuantConfig
    tacs: dict[str, TimeActivityCurve] = field(default_factory=dict)
    ttp_map: np.ndarray | None = None
    slope_map: np.ndarray | None = None
    hotspots: HotspotResult | None = None
    kinetic_fit: dict[str, Any] | None = None

    def to_row(self) -> dict[str, float | str]:
        """The CSV row: exactly :data:`ROW_COLUMNS` (floats, NaN when not measurable)."""
        s = self.static
        return {
            "suv_max": s.suv_max,
            "suv_mean": s.suv_mean,
            "tbr_max": s.tbr_max,
            "tbr_mean": s.tbr_mean,
            "ts_max": s.ts_max,
            "ts_mean": s.ts_mean,
            "mtv_ml": s.mtv_ml,
            "ttp_min": self.ttp_min,
            "slope_suv_per_h": self.slope_suv_per_h,
            "curve_class": self.curve_class,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (NaN -> None): row, reference means, TACs, hotspots, config."""

        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "row": {k: clean(v) for k, v in self.to_row().items()},
            "static": {k: clean(v) for k, v in self.static.to_dict().items()},
            "background_source": self.background_source,
            "tacs": {k: v.to_dict() for k, v in self.tacs.items()},
            "hotspots": None if self.hotspots is None else self.hotspots.to_dict(),
            "kinetic_fit": None if self.kinetic_fit is None else {k: clean(v) for k, v in self.kinetic_fit.items()},
            "config": self.config.to_dict(),
        }

    def save_maps(self, directory: str | Path, *, prefix: str = "") -> dict[str, Path]:
        """Write the available maps as NIfTI on the PET grid.

        Files: ``{prefix}ttp.nii.gz`` (min), ``{prefix}slope.nii.gz`` (SUV/h),
        ``{prefix}hotspots.nii.gz`` (cluster labels, 1 = hotspot), ``{prefix}background.nii.gz``.

        Returns:
            ``{"ttp": path, "slope": path, "hotspots": path, "background": path}`` for the maps
            that exist.
        """
        d = Path(directory)
        out: dict[str, Path] = {}
        maps = {
            "ttp": (self.ttp_map, "TTP min"),
            "slope": (self.slope_map, "late slope SUV/h"),
            "hotspots": (None if self.hotspots is None else self.hotspots.labels, "TAC clusters"),
            "background": (self.background_mask.astype(np.float32), "background mask"),
        }
        for key, (arr, desc) in maps.items():
            if arr is not None:
                out[key] = save_parametric_map(
                    arr, self.affine, d / f"{prefix}{key}.nii.gz", description=desc
                )
        return out


def quantify_exam(
    *,
    pet_static: np.ndarray,
    affine: np.ndarray,
    tumor_mask: np.ndarray,
    pet_dynamic: np.ndarray | None = None,
    frame_start_s: Sequence[float] | None = None,
    frame_duration_s: Sequence[float] | None = None,
    striatum_mask: np.ndarray | None = None,
    background_mask: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
    config: QuantConfig | None = None,
) -> ExamQuantification:
    """Quantify one exam (all arrays on the PET grid, in SUV).

    Args:
        pet_static: static SUV image (X, Y, Z).
        affine: 4x4 voxel-to-world affine (RAS+ mm, NIfTI convention) of the PET grid.
        tumor_mask: tumour VOI (X, Y, Z).
        pet_dynamic: dynamic SUV image (X, Y, Z, T), optional.
        frame_start_s: BIDS ``FrameTimesStart`` (s), required with ``pet_dynamic``.
        frame_duration_s: BIDS ``FrameDuration`` (s), required with ``pet_dynamic``.
        striatum_mask: striatum (for T/S and its TAC), optional.
        background_mask: healthy background; built automatically (mirrored tumour) when None.
        brain_mask: brain support for the automatic background and the maps, optional.
        config: settings (defaults: :class:`QuantConfig`).

    Raises:
        ValueError: mismatched shapes, NaNs, empty masks, missing or inconsistent frame timing.
    """
    cfg = config or QuantConfig()
    aff = check_affine(affine)
    suv = check_volume(pet_static, "pet_static")
    shape = suv.shape
    tumor = check_mask(tumor_mask, "tumor_mask", shape)
    striatum = None if striatum_mask is None else check_mask(striatum_mask, "striatum_mask", shape)
    brain = None if brain_mask is None else check_mask(brain_mask, "brain_mask", shape)
    if background_mask is not None:
        background = check_mask(background_mask, "background_mask", shape)
        source = "given"
    else:
        background = mirrored_background_mask(
            tumor,
            aff,
            pet=suv,
            brain_mask=brain,
            exclude_mask=striatum,
            midline_x_mm=cfg.midline_x_mm,
            margin_mm=cfg.background_margin_mm,
            min_volume_ml=cfg.background_min_volume_ml,
            support_fraction=cfg.support_fraction,
        )
        source = "mirrored"
    static = static_parameters(
        suv,
        tumor,
        affine=aff,
        background_mask=background,
        striatum_mask=striatum,
        mtv_threshold_tbr=cfg.mtv_threshold_tbr,
    )
    common = dict(static=static, background_mask=background, background_source=source,
                  affine=aff, config=cfg)
    if pet_dynamic is None:
        if frame_start_s is not None or frame_duration_s is not None:
            raise ValueError("frame_start_s/frame_duration_s: given without pet_dynamic")
        return ExamQuantification(
            ttp_min=float("nan"), slope_suv_per_h=float("nan"), curve_class="n/a", **common
        )
    dyn = check_volume(pet_dynamic, "pet_dynamic", ndim=4)
    if dyn.shape[:3] != shape:
        raise ValueError(f"pet_dynamic: grid {dyn.shape[:3]} differs from pet_static {shape}")
    if frame_start_s is None or frame_duration_s is None:
        raise ValueError("frame_start_s/frame_duration_s: required with pet_dynamic")
    t = frame_mid_times_s(frame_start_s, frame_duration_s, n_frames=dyn.shape[3])
    tacs = {"tumor": time_activity_curve(dyn, tumor, t, name="tumor_mask"),
            "background": time_activity_curve(dyn, background, t, name="background_mask")}
    if striatum is not None:
        tacs["striatum"] = time_activity_curve(dyn, striatum, t, name="striatum_mask")
    y = tacs["tumor"].values
    window = cfg.slope_window_min
    if cfg.maps_region == "none":
        ttp_map = slope_map = None
    else:
        region = tumor if cfg.maps_region == "tumor" else (
            brain if brain is not None else brain_support_mask(suv, support_fraction=cfg.support_fraction) | tumor
        )
        if cfg.kinetics == "fit":
            fit = fit_tacs(dyn[region], frame_start_s, frame_duration_s, horizon_min=cfg.ttp_horizon_min,
                           n_iter=cfg.map_fit_iterations)
            ttp_map = np.full(shape, np.nan)
            slope_map = np.full(shape, np.nan)
            ttp_map[region] = fit.ttp_min()
            slope_map[region] = fit.slope_suv_per_h(window)
        else:
            ttp_map = ttp_map_min(dyn, t, mask=region)
            slope_map = slope_map_suv_per_h(dyn, t, mask=region, window_min=window)
    hotspots = None
    if cfg.n_clusters > 0 and int(tumor.sum()) >= cfg.n_clusters:
        hotspots = dynamic_hotspots(
            dyn, tumor, t, affine=aff, n_clusters=cfg.n_clusters,
            normalization=cfg.cluster_normalization, slope_window_min=window,
            random_state=cfg.random_state,
        )
    frame_ttp = time_to_peak_min(y, t)
    frame_slope = late_slope_suv_per_h(y, t, window_min=window)
    fit = fit_tacs(y, frame_start_s, frame_duration_s, horizon_min=cfg.ttp_horizon_min)
    kinetic_fit = fit.row(0) | {"ttp_frames_min": frame_ttp, "slope_frames_suv_per_h": frame_slope}
    if cfg.kinetics == "fit" and fit.ok[0]:
        ttp, slope = float(fit.ttp_min()[0]), float(fit.slope_suv_per_h(window)[0])
        delta = float(fit.relative_change(window)[0])
        cls = "increasing" if delta > cfg.plateau_tolerance else (
            "decreasing" if delta < -cfg.plateau_tolerance else "plateau")
    else:
        ttp, slope = frame_ttp, frame_slope
        cls = curve_class(y, t, window_min=window, tolerance=cfg.plateau_tolerance)
    return ExamQuantification(
        ttp_min=ttp,
        slope_suv_per_h=slope,
        curve_class=cls,
        kinetic_fit=kinetic_fit,
        tacs=tacs,
        ttp_map=ttp_map,
        slope_map=slope_map,
        hotspots=hotspots,
        **common,
    )
