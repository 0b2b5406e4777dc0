"""Biopsy target: safety margin, fallback, comparators on a phantom, evaluation figures."""
from __future__ import annotations

import numpy as np
import pytest

from ml.subregions.target import (
    border_distance_mm,
    dice,
    earliest_ttp_target,
    evaluate_targets,
    map_target,
    suvmax_target,
    target_from_map,
)
from tests.ml.subregions.conftest import make_stack


def _outside_distance(point_mm, mask, affine) -> float:
    """Brute force: distance from a point to the nearest voxel centre outside the mask."""
    ijk = np.argwhere(~mask).astype(float)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return float(np.min(np.linalg.norm(world - np.asarray(point_mm), axis=1)))


@pytest.mark.parametrize("margin", [0.0, 4.0, 8.0, 12.0])
def test_target_respects_the_margin(stack, margin):
    tumour = stack.masks["tumor"] > 0
    t = map_target(stack.image[2], tumour, stack.affine, margin_mm=margin, radius_mm=6.0)
    assert not t.fallback and tumour[t.voxel]
    d = _outside_distance(t.point_mm, tumour, stack.affine)
    assert d >= margin
    assert t.border_distance_mm == pytest.approx(d)
    # point_mm is the affine applied to the voxel
    np.testing.assert_allclose(t.point_mm, (stack.affine @ np.array([*t.voxel, 1.0]))[:3])
    # region: inside the tumour and within the radius
    ijk = np.argwhere(t.region).astype(float)
    world = ijk @ stack.affine[:3, :3].T + stack.affine[:3, 3]
    assert t.region[t.voxel] and np.all(tumour[t.region])
    assert np.linalg.norm(world - np.asarray(t.point_mm), axis=1).max() <= 6.0 + 1e-9


def test_margin_moves_the_target_off_a_border_hotspot():
    s = make_stack(hot_offset_mm=(16.0, 0.0, 0.0), hot_radius_mm=5.0)  # hotspot on the rim
    tumour = s.masks["tumor"] > 0
    free = suvmax_target(s.suv, tumour, s.affine, margin_mm=0.0)
    safe = suvmax_target(s.suv, tumour, s.affine, margin_mm=10.0)
    assert free.border_distance_mm < 10.0 <= safe.border_distance_mm
    inside = border_distance_mm(tumour, s.affine) >= 10.0
    assert s.suv[safe.voxel] == pytest.approx(s.suv[inside].max())


def test_small_tumour_falls_back_to_the_deepest_voxel_or_raises():
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    mask = np.zeros((9, 9, 9), bool)
    mask[3:6, 3:6, 3:6] = True  # 12 mm cube: the centre is 8 mm from outside voxels
    score = np.random.default_rng(0).random(mask.shape)
    t = target_from_map(score, mask, affine, margin_mm=10.0)
    assert t.fallback and "too small" in t.note
    assert t.voxel == (4, 4, 4) and t.border_distance_mm == pytest.approx(8.0)
    with pytest.raises(ValueError, match="no tumour voxel is 10.0 mm"):
        target_from_map(score, mask, affine, margin_mm=10.0, on_small="raise")
    with pytest.raises(ValueError, match="empty"):
        target_from_map(score, np.zeros_like(mask), affine)
    with pytest.raises(ValueError, match="shape"):
        target_from_map(score, mask[:-1], affine)


def test_suvmax_comparator_finds_the_suvmax_voxel(stack):
    tumour = stack.masks["tumor"] > 0
    t = suvmax_target(stack.suv, tumour, stack.affine, margin_mm=0.0)
    assert stack.suv[t.voxel] == stack.suv[tumour].max()
    assert np.all(stack.suv[t.subregion] >= 0.8 * stack.suv[tumour].max())
    assert stack.masks["aggressive"][t.voxel]


def test_earliest_ttp_comparator_finds_the_early_cluster():
    # hot_gain 0.35: the blob's curve still peaks early but its late SUV barely exceeds the tumour's
    s = make_stack(hot_gain=0.35, seed=4)
    tumour, hot = s.masks["tumor"] > 0, s.masks["aggressive"] > 0
    t = earliest_ttp_target(s.ttp_min, tumour, s.affine, margin_mm=0.0)
    assert hot[t.voxel]
    assert dice(t.subregion, hot) > 0.8
    assert np.nanmean(s.ttp_min[t.subregion]) < np.nanmean(s.ttp_min[tumour & ~t.subregion])


def test_dice():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[:2], b[1:3] = True, True
    assert dice(a, b) == pytest.approx(0.5)
    assert np.isnan(dice(np.zeros_like(a), np.zeros_like(a)))


def test_evaluation_figures_and_cis():
    stacks = [make_stack(seed=i, hot_offset_mm=(8.0 * (-1) ** i, 0.0, 0.0), key=f"sub-{i}/ses-01")
              for i in range(4)]
    truths = [s.masks["aggressive"] > 0 for s in stacks]
    tumours = [s.masks["tumor"] > 0 for s in stacks]
    # a deliberately bad method: the voxel with the lowest SUV
    targets = {
        "suvmax": [suvmax_target(s.suv, m, s.affine, margin_mm=0.0) for s, m in zip(stacks, tumours)],
        "coldest": [target_from_map(-s.suv, m, s.affine, margin_mm=0.0, method="coldest")
                    for s, m in zip(stacks, tumours)],
    }
    ev = evaluate_targets(targets, truths, [s.affine for s in stacks], keys=[s.key for s in stacks],
                          n_boot=500, random_state=0)
    row = ev.per_exam.set_index(["method", "key"])
    for s, t in zip(stacks, targets["coldest"]):
        truth = s.masks["aggressive"] > 0
        expected = _outside_distance(t.point_mm, ~truth, s.affine)  # nearest truth voxel centre
        assert row.loc[("coldest", s.key), "distance_mm"] == pytest.approx(expected)
        assert row.loc[("coldest", s.key), "hit"] == int(truth[t.voxel])
    summ = ev.summary
    assert summ.loc["suvmax", "hit_rate"] == 1.0 and summ.loc["suvmax", "distance_mm"] == 0.0
    assert summ.loc["coldest", "hit_rate"] == 0.0
    for m in ("suvmax", "coldest"):
        assert summ.loc[m, "dice_lo"] <= summ.loc[m, "dice"] <= summ.loc[m, "dice_hi"]
        assert summ.loc[m, "distance_lo"] <= summ.loc[m, "distance_mm"] <= summ.loc[m, "distance_hi"]
    paired = ev.paired.loc["coldest"]
    assert paired["hit_diff"] == -1.0 and paired["reference_only"] == 4 and paired["method_only"] == 0
    assert paired["mcnemar_p"] == pytest.approx(0.125)  # exact two-sided binomial, 0 of 4 discordant
    assert list(ev.summary_frame().index) == ["suvmax", "coldest"]
    with pytest.raises(ValueError, match="empty"):
        evaluate_targets(targets, [np.zeros_like(truths[0])] * 4, [s.affine for s in stacks])


def test_map_target_aims_at_the_centre_of_the_predicted_subregion(stack):
    tumour, hot = stack.masks["tumor"] > 0, stack.masks["aggressive"] > 0
    prob = np.where(tumour, hot.astype(float), np.nan)
    prob[tuple(np.argwhere(hot)[0])] = 1.2  # a spike on the subregion's edge
    peak = map_target(prob, tumour, stack.affine, smooth_fwhm_mm=0.0, margin_mm=0.0, aim="peak")
    centre = map_target(prob, tumour, stack.affine, smooth_fwhm_mm=0.0, margin_mm=0.0, aim="centre")
    assert dice(centre.subregion, hot) == 1.0
    inside = border_distance_mm(hot, stack.affine)
    assert inside[centre.voxel] == inside.max() > inside[peak.voxel]
    # NaN voxels of a map (e.g. left out of the model) are never chosen
    prob_nan = np.where(hot, np.nan, 1.0)
    t = map_target(prob_nan, tumour, stack.affine, margin_mm=0.0)
    assert not hot[t.voxel]
