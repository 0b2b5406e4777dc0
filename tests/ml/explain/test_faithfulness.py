"""ml.explain.faithfulness: deletion/insertion curves on a generated exam, overlap metrics by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.explain import attribution_map
from ml.explain.faithfulness import (
    faithfulness,
    mask_overlap,
    model_score,
    perturbation_curve,
    random_curves,
)
from tests.ml.explain.test_attributions import MaskedMean


def test_deletion_falls_and_insertion_rises_faster_than_random_for_a_faithful_map(case):
    model = MaskedMean(case.aggressive, threshold=float(case.image[2][case.aggressive].mean()))
    amap = attribution_map(model, case.image, method="integrated_gradients")
    res = faithfulness(model, case.image, amap, mask=case.brain, steps=10, n_random=2)
    # the region is < 1 % of the brain: one step of the map's deletion removes all of it
    assert res.deletion.scores[0] == pytest.approx(0.5, abs=1e-6)
    assert res.deletion.scores[1] < 0.1 < res.deletion_random.scores[1]
    assert res.insertion.scores[1] == pytest.approx(0.5, abs=1e-6)
    assert res.insertion_random.scores[1] < 0.45
    assert res.deletion_gain > 0.1 and res.insertion_gain > 0.05
    assert res.deletion.fractions[0] == 0 and res.deletion.fractions[-1] == 1
    assert res.deletion.auc == pytest.approx(np.trapezoid(res.deletion.scores, res.deletion.fractions))


def test_a_map_pointing_away_from_the_region_is_no_better_than_random(case):
    model = MaskedMean(case.aggressive, threshold=float(case.image[2][case.aggressive].mean()))
    away = np.where(case.aggressive, 0.0, 1.0) * np.random.default_rng(0).random(case.aggressive.shape)
    random = random_curves(model, case.image, mask=case.brain, steps=10, n_random=2)
    res = faithfulness(model, case.image, away, mask=case.brain, steps=10, random=random)
    assert res.deletion_gain < 0 and res.insertion_gain < 0


def test_curves_end_at_the_baseline_and_start_at_the_input(case):
    model = MaskedMean(case.aggressive)
    amap = np.random.default_rng(1).random(case.brain.shape)
    x = torch.from_numpy(case.image)[None]
    p_input = float(model_score(model, x))
    p_zero = float(model_score(model, torch.zeros_like(x)))
    deletion = perturbation_curve(model, case.image, amap, kind="deletion", steps=4)
    insertion = perturbation_curve(model, case.image, amap, kind="insertion", steps=4, baseline="zero")
    assert deletion.scores[0] == pytest.approx(p_input) and deletion.scores[-1] == pytest.approx(p_zero)
    assert insertion.scores[0] == pytest.approx(p_zero) and insertion.scores[-1] == pytest.approx(p_input)
    with pytest.raises(ValueError, match="kind"):
        perturbation_curve(model, case.image, amap, kind="removal")
    with pytest.raises(ValueError, match="attribution shape"):
        perturbation_curve(model, case.image, amap[:4], kind="deletion")
    with pytest.raises(ValueError, match="baseline"):
        perturbation_curve(model, case.image, amap, kind="deletion", baseline="noise")


def test_mask_overlap_by_hand():
    values = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.0, 0.5, 0.4, 0.7, 0.6]).reshape(1, 1, 10)
    region = np.zeros((1, 1, 10), bool)
    region[0, 0, [1, 2, 6]] = True  # values 0.9, 0.3, 0.5
    ov = mask_overlap(values, region, top_percent=20)
    assert ov.pointing == 1.0  # the maximum 0.9 is inside
    # top 20 % = 2 voxels (0.9, 0.8): one inside
    assert ov.top_in_mask == pytest.approx(0.5)
    assert ov.dice_top == pytest.approx(2 * 1 / (2 + 3))
    # top 3 voxels (0.9, 0.8, 0.7): one inside
    assert ov.dice_matched == pytest.approx(1 / 3)
    # AUC over the 3 x 7 (inside, outside) pairs: 0.9 beats all 7, 0.3 beats 0.1, 0.2, 0.0 (3),
    # 0.5 beats 0.1, 0.2, 0.0, 0.4 (4)
    assert ov.auc == pytest.approx((7 + 3 + 4) / 21)
    assert ov.mask_voxels == 3


def test_mask_overlap_within_tolerance_and_ties():
    values = np.zeros((1, 1, 10))
    values[0, 0, 4] = 1.0
    region = np.zeros((1, 1, 10), bool)
    region[0, 0, 6:8] = True
    assert mask_overlap(values, region).pointing == 0.0
    assert mask_overlap(values, region, tolerance_vox=2).pointing == 1.0
    values[0, 0, 6] = 1.0  # two maxima, one inside
    assert mask_overlap(values, region).pointing == 0.5
    within = np.zeros((1, 1, 10), bool)
    within[0, 0, 5:] = True  # the maximum at 4 is not considered
    ov = mask_overlap(values, region, within=within)
    assert ov.pointing == 1.0 and ov.mask_voxels == 2
    with pytest.raises(ValueError, match="some but not all"):
        mask_overlap(values, np.zeros((1, 1, 10)))
    with pytest.raises(ValueError, match="same 3D shape"):
        mask_overlap(values, region[0])


def test_mask_overlap_of_ig_on_the_region_model(case):
    model = MaskedMean(case.aggressive)
    amap = attribution_map(model, case.image, method="integrated_gradients")
    ov = mask_overlap(amap, case.aggressive, within=case.brain, top_percent=1)
    assert ov.pointing == 1.0 and ov.auc > 0.99 and ov.dice_matched > 0.99
