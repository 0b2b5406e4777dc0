"""Dynamic parameters, parametric maps and TAC clustering on analytic TACs (exact values)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ml.quant import QuantConfig, quantify_exam
from ml.quant import phantom as P
from ml.quant.clustering import TACKMeans, normalize_curves
from ml.quant.kinetics import (
    curve_class,
    frame_mid_times_s,
    late_slope_suv_per_h,
    slope_map_suv_per_h,
    time_to_peak_min,
    ttp_map_min,
)

T_S = P.MID_MIN * 60.0


def test_frame_mid_times():
    assert np.allclose(frame_mid_times_s([0, 60, 180], [60, 120, 300]), [30, 120, 330])


@pytest.mark.parametrize(
    ("start", "dur", "match"),
    [
        ([0, 60], [60], "equal non-zero lengths"),
        ([0, 60], [60, 0], "durations must be > 0"),
        ([60, 0], [60, 60], "strictly increasing"),
        ([0, np.nan], [60, 60], "NaN"),
    ],
)
def test_frame_timing_errors(start, dur, match):
    with pytest.raises(ValueError, match=match):
        frame_mid_times_s(start, dur)


def test_known_tac_gives_exact_ttp_and_slope():
    y = P.tumor_tac(P.MID_MIN)
    assert time_to_peak_min(y, T_S) == pytest.approx(7.0)
    # Linear part of slope -0.05 SUV/min over the 10-30 min window = -3 SUV/h.
    assert late_slope_suv_per_h(y, T_S, window_min=(10, 30)) == pytest.approx(-3.0, rel=1e-12)
    assert curve_class(y, T_S) == "decreasing"
    inc = P.increasing_tac(P.MID_MIN)
    assert time_to_peak_min(inc, T_S) == pytest.approx(29.0)
    assert late_slope_suv_per_h(inc, T_S) == pytest.approx(2.4, rel=1e-12)
    assert curve_class(inc, T_S) == "increasing"


def test_slope_matches_numpy_polyfit_on_a_noisy_curve():
    rng = np.random.default_rng(1)
    y = 2 + rng.normal(size=T_S.size)
    sel = (P.MID_MIN >= 10) & (P.MID_MIN <= 30)
    ref = np.polyfit(T_S[sel] / 3600, y[sel], 1)[0]
    assert late_slope_suv_per_h(y, T_S) == pytest.approx(ref, rel=1e-10)


def test_curve_class_tolerance_boundary():
    # Relative change over the window: slope * span / mean; span = 18 min = 0.3 h, mean = 2.
    for slope_h, expected in [(0.3, "plateau"), (0.4, "increasing"), (-0.4, "decreasing")]:
        # delta = slope_h * 0.3 / 2 -> 0.045 (plateau), 0.06, -0.06
        y = 2.0 + slope_h * (P.MID_MIN - 20.0) / 60.0
        assert curve_class(y, T_S, tolerance=0.05) == expected


def test_slope_window_needs_two_frames():
    with pytest.raises(ValueError, match="fewer than 2 frame"):
        late_slope_suv_per_h(P.tumor_tac(P.MID_MIN), T_S, window_min=(10, 11))


@pytest.mark.parametrize("storage", ["ras", "lps", "transposed"])
@pytest.mark.parametrize("voxel_mm", [2.0, 4.0])
def test_quantify_exam_dynamic_exact_and_orientation_free(storage, voxel_mm):
    ras = P.static_phantom(voxel_mm)
    ras["dyn"] = P.dynamic_phantom(ras)
    conv = {"ras": lambda a: a, "lps": P.to_lps, "transposed": P.to_transposed}[storage]
    ph = conv(ras)
    # The piecewise-linear phantom TACs give exact values with the frame-bound method (kinetics="frames",
    # the default before issue 10); the fitted method is tested in test_kinetics_fit.py.
    q = quantify_exam(pet_static=ph["suv"], pet_dynamic=ph["dyn"], frame_start_s=P.FRAME_START_S,
                      frame_duration_s=P.FRAME_DURATION_S, affine=ph["affine"],
                      tumor_mask=ph["core"], striatum_mask=ph["striatum"], brain_mask=ph["brain"],
                      config=QuantConfig(kinetics="frames"))
    assert q.ttp_min == pytest.approx(7.0)
    assert q.slope_suv_per_h == pytest.approx(-3.0, rel=1e-12)
    assert q.curve_class == "decreasing"
    assert np.allclose(q.tacs["background"].values, 1.0)
    assert np.allclose(q.tacs["striatum"].values, 2.0)
    # Maps: exact per voxel, NaN outside the brain.
    assert np.allclose(q.ttp_map[ph["core"]], 7.0)
    assert np.allclose(q.slope_map[ph["core"]], -3.0)
    rest = ph["tumor"] & ~ph["core"]
    assert np.allclose(q.ttp_map[rest], 29.0) and np.allclose(q.slope_map[rest], 2.4)
    assert np.all(np.isnan(q.ttp_map[~ph["brain"]]))


def test_maps_saved_as_nifti_on_the_pet_grid(tmp_path):
    ph = P.to_lps(P.static_phantom(4.0))
    dyn = P.dynamic_phantom(P.static_phantom(4.0))[::-1, ::-1]
    q = quantify_exam(pet_static=ph["suv"], pet_dynamic=dyn, frame_start_s=P.FRAME_START_S,
                      frame_duration_s=P.FRAME_DURATION_S, affine=ph["affine"],
                      tumor_mask=ph["tumor"], config=QuantConfig(maps_region="tumor", kinetics="frames"))
    paths = q.save_maps(tmp_path, prefix="sub-1_")
    assert set(paths) == {"ttp", "slope", "hotspots", "background"}
    img = nib.load(paths["ttp"])
    assert np.allclose(img.affine, ph["affine"])
    data = img.get_fdata()
    assert np.allclose(data[ph["core"]], 7.0) and np.all(np.isnan(data[~ph["tumor"]]))


def test_voxel_maps_direct_functions():
    dyn = np.stack([P.tumor_tac(P.MID_MIN), P.increasing_tac(P.MID_MIN)]).reshape(2, 1, 1, -1)
    assert np.allclose(ttp_map_min(dyn, T_S).ravel(), [7.0, 29.0])
    assert np.allclose(slope_map_suv_per_h(dyn, T_S).ravel(), [-3.0, 2.4])


def test_dynamic_input_errors():
    ph = P.static_phantom(4.0)
    dyn = P.dynamic_phantom(ph)
    base = dict(pet_static=ph["suv"], affine=ph["affine"], tumor_mask=ph["tumor"],
                pet_dynamic=dyn, frame_start_s=P.FRAME_START_S[:-1],
                frame_duration_s=P.FRAME_DURATION_S[:-1])
    with pytest.raises(ValueError, match="14 frames given but pet_dynamic has 15"):
        quantify_exam(**base)
    with pytest.raises(ValueError, match="required with pet_dynamic"):
        quantify_exam(**{**base, "frame_start_s": None})
    with pytest.raises(ValueError, match="pet_dynamic: grid"):
        quantify_exam(**{**base, "pet_dynamic": dyn[:-1], "frame_start_s": P.FRAME_START_S,
                         "frame_duration_s": P.FRAME_DURATION_S})


def test_hotspot_clustering_finds_the_early_peaking_core():
    ph = P.static_phantom(4.0)
    dyn = P.dynamic_phantom(ph)
    rng = np.random.default_rng(0)
    dyn = dyn + rng.normal(scale=0.05, size=dyn.shape) * ph["tumor"][..., None]
    q = quantify_exam(pet_static=ph["suv"], pet_dynamic=dyn, frame_start_s=P.FRAME_START_S,
                      frame_duration_s=P.FRAME_DURATION_S, affine=ph["affine"],
                      tumor_mask=ph["tumor"], config=QuantConfig(n_clusters=2, maps_region="none"))
    h = q.hotspots
    assert np.array_equal(h.hotspot_mask, ph["core"])
    assert h.cluster_ttp_min[0] == pytest.approx(7.0)
    assert h.cluster_volume_ml[0] == pytest.approx(P.CORE_VOLUME_ML)
    assert q.ttp_map is None


def test_tackmeans_is_a_reproducible_sklearn_estimator():
    rng = np.random.default_rng(3)
    early = P.tumor_tac(P.MID_MIN) * rng.uniform(0.5, 2, size=(30, 1))  # same shape, any scale
    late = P.increasing_tac(P.MID_MIN) * rng.uniform(0.5, 2, size=(40, 1))
    X = np.vstack([late, early])
    est = TACKMeans(2, random_state=0)
    assert est.get_params()["random_state"] == 0
    labels = est.fit(X).labels_
    assert np.array_equal(labels, np.r_[np.ones(40), np.zeros(30)])
    assert np.array_equal(TACKMeans(2, random_state=0).fit(X).labels_, labels)
    assert np.array_equal(est.predict(early[:3]), [0, 0, 0])
    assert np.allclose(normalize_curves(early).mean(axis=1), 1.0)
