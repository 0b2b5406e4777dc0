"""Aggressiveness maps: exact voxel attribution of the marker model, captum through the encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ml.subregions.aggressiveness import (
    MarkerAttributionModel,
    MILMarkerModel,
    encoder_attribution,
    encoder_attribution_map,
    habitat_attribution,
    linear_head,
    tumour_crop,
)
from ml.subregions.habitats import voxel_features
from tests.ml.subregions.conftest import make_stack


@pytest.fixture(scope="module")
def cohort():
    """8 exams: grade 4 ones have the hot early blob (gain 1), the others a faint one (gain 0.1)."""
    stacks, y = [], []
    for i in range(8):
        g4 = i % 2 == 0
        stacks.append(make_stack(seed=10 + i, hot_gain=1.0 if g4 else 0.1, key=f"sub-{i}/ses-01",
                                 hot_offset_mm=(8.0, 4.0 * (i % 3 - 1), 0.0)))
        y.append(int(g4))
    return stacks, [voxel_features(s) for s in stacks], np.array(y)


def test_voxel_attribution_is_complete(cohort):
    _, feats, y = cohort
    model = MarkerAttributionModel(C=1.0).fit(feats, y)
    logits = model.decision_function(feats)
    for vf, logit in zip(feats, logits):
        assert model.baseline_logit() + model.voxel_attribution(vf).mean() == pytest.approx(logit, abs=1e-9)
    assert (model.predict(feats) == y).mean() >= 0.75


def test_attribution_map_is_highest_in_the_aggressive_subregion(cohort):
    stacks, feats, y = cohort
    model = MarkerAttributionModel().fit(feats, y)
    for s, vf, label in zip(stacks, feats, y):
        if not label:
            continue
        vol = model.attribution_volume(vf)
        hot, tumour = s.masks["aggressive"] > 0, s.masks["tumor"] > 0
        assert np.isnan(vol[~tumour]).all()
        assert np.nanmean(vol[hot]) > np.nanmean(vol[tumour & ~hot]) + 1.0


def test_habitat_attribution_sums_to_the_mean():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    h = rng.integers(0, 3, size=200)
    shares = habitat_attribution(a, h, 4)
    assert shares.shape == (4,) and shares[3] == 0.0
    assert shares.sum() == pytest.approx(a.mean())
    assert shares[1] == pytest.approx(a[h == 1].sum() / 200)
    with pytest.raises(ValueError):
        habitat_attribution(a, h + 2, 4)


def test_model_refuses_one_class(cohort):
    _, feats, _ = cohort
    with pytest.raises(ValueError, match="two classes"):
        MarkerAttributionModel().fit(feats, np.ones(len(feats), int))


def test_tumour_crop_is_inside_the_grid_and_holds_the_tumour(stack):
    sl = tumour_crop(stack.masks["tumor"], (16, 16, 16))
    assert all(s.stop - s.start == 16 and 0 <= s.start and s.stop <= n
               for s, n in zip(sl, stack.masks["tumor"].shape))
    assert stack.masks["tumor"][sl].sum() == stack.masks["tumor"].sum()


def test_integrated_gradients_through_a_real_encoder(stack):
    from ml.foundation.model import EncoderConfig, FoundationEncoder

    torch.manual_seed(0)
    cfg = EncoderConfig(img_size=(16, 16, 16), patch_size=8, hidden_size=32, mlp_dim=64, num_layers=1,
                        num_heads=2, voxel_mm=4.0)
    enc = FoundationEncoder(cfg)
    rng = np.random.default_rng(0)
    pooled = rng.normal(size=(20, 32))
    lr = LogisticRegression().fit(pooled, np.arange(20) % 2)
    head = linear_head(lr)
    np.testing.assert_allclose(
        head(torch.as_tensor(pooled, dtype=torch.float32)).detach().numpy()[:, 0],
        lr.decision_function(pooled), atol=1e-4)
    sl = tumour_crop(stack.masks["tumor"], cfg.img_size)
    crop = stack.image[(slice(None), *sl)]
    origin = (stack.affine @ np.array([s.start for s in sl] + [1.0]))[:3]
    attr = encoder_attribution(enc, head, crop, origin_mm=origin, n_steps=32)
    assert attr.shape == cfg.img_size and np.isfinite(attr).all()
    with torch.no_grad():
        o = torch.as_tensor(origin, dtype=torch.float32)[None]
        x = torch.as_tensor(crop)[None]
        gap = head(enc(x, o).pooled) - head(enc(torch.zeros_like(x), o).pooled)
    # completeness of Integrated Gradients: the attributions add up to the logit difference
    assert float(attr.sum()) == pytest.approx(float(gap), rel=0.05, abs=1e-3)
    # the same on the exam grid: the crop's values in place, NaN elsewhere
    full = encoder_attribution_map(enc, head, stack, n_steps=32)
    np.testing.assert_allclose(full[sl], attr, rtol=1e-4, atol=1e-6)
    assert np.isnan(full).sum() == full.size - attr.size


def test_mil_model_locates_the_aggressive_voxels_and_ig_is_complete(cohort):
    stacks, feats, y = cohort
    model = MILMarkerModel(beta=4.0, random_state=0).fit(feats, y)
    assert (model.predict(feats) == y).mean() >= 0.75
    logits = model.decision_function(feats)
    for s, vf, label, logit in zip(stacks, feats, y, logits):
        attr = model.voxel_attribution(vf, n_steps=64)
        # Integrated Gradients completeness: attributions add up to logit - logit(mean voxel)
        assert attr.sum() == pytest.approx(logit - model.baseline_logit(), rel=0.02, abs=1e-3)
        if label:
            score = model.attribution_volume(vf, kind="score")
            hot, tumour = s.masks["aggressive"] > 0, s.masks["tumor"] > 0
            assert np.nanmean(score[hot]) > np.nanmean(score[tumour & ~hot])
    with pytest.raises(ValueError, match="kind"):
        model.attribution_volume(feats[0], kind="shap")


def test_mil_model_is_reproducible(cohort):
    _, feats, y = cohort
    a = MILMarkerModel(random_state=3).fit(feats, y)
    b = MILMarkerModel(random_state=3).fit(feats, y)
    np.testing.assert_allclose(a.coef_, b.coef_)
