"""ml.explain.attributions on a generated exam: shapes, normalisation, locality, LRP support, NIfTI."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from ml.explain import (
    METHODS,
    UnsupportedLayerError,
    attribution_map,
    available_methods,
    lrp_blockers,
    normalise_map,
    save_map_nifti,
)


def small_cnn(in_channels: int = 5, seed: int = 0) -> nn.Sequential:
    """A conv net LRP can run through (conv, ReLU, pooling, linear only)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(in_channels, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool3d(2),
        nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(8, 1),
    )


class MaskedMean(nn.Module):
    """Logit = mean PET (channel 2) inside a region minus a threshold: depends on that region only."""

    def __init__(self, region: np.ndarray, threshold: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(region.astype(np.float32)) / float(region.sum()))
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 2] * self.weight).sum(dim=(1, 2, 3)) - self.threshold


class ResidualNorm(nn.Module):
    """A residual block with instance norm: LRP must refuse it, naming both."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(5, 5, 3, padding=1)
        self.norm = nn.InstanceNorm3d(5)
        self.head = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x)) + x
        return self.head(y.mean(dim=(2, 3, 4)))


class TinyViT(nn.Module):
    """Patch embedding + one transformer layer + mean token + linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Conv3d(5, 16, 8, stride=8)
        self.block = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.block(tokens).mean(1))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_gives_a_normalised_map_of_the_input_grid(case, method):
    model = small_cnn()
    model.train()
    kw = {"window": 8, "stride": 4} if method == "occlusion" else {}
    out = attribution_map(model, case.image, method=method, **kw)
    assert out.shape == case.image.shape[1:]
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() == pytest.approx(1.0)
    assert (out > 0).sum() > 10  # not a single voxel
    assert model.training  # the training flag is restored


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_ig_and_occlusion_put_their_mass_in_the_region_the_model_reads(case, method):
    model = MaskedMean(case.aggressive)
    kw = {"window": 2, "perturbations_per_eval": 64} if method == "occlusion" else {}
    raw = attribution_map(model, case.image, method=method, normalise=False, **kw)
    positive = np.maximum(raw, 0)
    if method == "integrated_gradients":
        # linear model, zero baseline: IG is exactly x * w (completeness, Sundararajan 2017 eq. 1)
        expected = case.image[2] * model.weight.numpy()
        np.testing.assert_allclose(raw, expected, atol=1e-6)
        assert positive[case.aggressive].sum() / positive.sum() == pytest.approx(1.0)
    else:
        # 2-voxel windows: only windows touching the region change the output
        from scipy import ndimage
        near = ndimage.binary_dilation(case.aggressive, iterations=2)
        assert positive[near].sum() / positive.sum() > 0.99  # float noise of batched sums elsewhere
        assert positive[case.aggressive].sum() / positive.sum() > 0.2


def test_occlusion_equals_captums_definition(case):
    from captum.attr import Occlusion

    model = small_cnn()
    model.eval()
    x = torch.from_numpy(case.image[:, 10:22, 10:22, 10:22].copy())[None]
    ours = attribution_map(model, x, method="occlusion", normalise=False, window=4, stride=2, baseline=0.5)
    theirs = Occlusion(lambda t: model(t)[:, 0]).attribute(
        x, sliding_window_shapes=(5, 4, 4, 4), strides=(5, 2, 2, 2), baselines=0.5)
    np.testing.assert_allclose(ours, theirs[0, 0].numpy(), rtol=1e-4, atol=1e-6)


def test_occlusion_with_a_mask_evaluates_only_windows_touching_it(case):
    model = MaskedMean(case.aggressive)
    full = attribution_map(model, case.image, method="occlusion", normalise=False, window=4)
    inside = attribution_map(model, case.image, method="occlusion", normalise=False, window=4,
                             mask=case.tumor)
    # the model reads the aggressive part, inside the tumour: skipping the other windows loses nothing
    np.testing.assert_allclose(inside, full, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        attribution_map(model, case.image, method="occlusion", mask=np.zeros_like(case.tumor))


class WithOrigin(nn.Module):
    """A model taking ``(x, origin_mm)`` like the platform's: origin must match the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()

    def forward(self, x: torch.Tensor, origin_mm: torch.Tensor) -> torch.Tensor:
        if origin_mm.shape != (x.shape[0], 3):
            raise ValueError(f"origin_mm {tuple(origin_mm.shape)} for a batch of {x.shape[0]}")
        return self.net(x)[:, 0] + 0.0 * origin_mm[:, 0]


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "gradcam"])
def test_per_case_forward_arguments_follow_the_batches(case, method):
    origin = torch.zeros(1, 3)
    kw = {"window": 8} if method == "occlusion" else {}
    plain = attribution_map(small_cnn(), case.image, method=method, **kw)
    with_origin = attribution_map(WithOrigin(), case.image, method=method, additional_forward_args=origin, **kw)
    np.testing.assert_allclose(with_origin, plain, atol=1e-5)


def test_lrp_conserves_relevance_on_a_bias_free_relu_net(case):
    model = small_cnn()
    for m in model.modules():
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    raw = attribution_map(model, case.image, method="lrp", normalise=False, epsilon=1e-9)
    with torch.no_grad():
        logit = float(model(torch.from_numpy(case.image)[None]))
    assert raw.sum() == pytest.approx(logit, rel=1e-3)


def test_lrp_on_a_linear_model_is_input_times_weight(case):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(case.image.size, 1, bias=False))
    raw = attribution_map(model, case.image, method="lrp", normalise=False, epsilon=1e-9)
    expected = (case.image.ravel() * model[1].weight.detach().numpy().ravel()).reshape(case.image.shape)
    np.testing.assert_allclose(raw, expected.sum(0), rtol=1e-3, atol=1e-6)


def test_lrp_names_the_layers_that_block_it(case):
    model = ResidualNorm()
    blockers = lrp_blockers(model)
    assert any("norm (InstanceNorm3d)" in b for b in blockers)
    assert any("add" in b for b in blockers)
    with pytest.raises(UnsupportedLayerError, match="InstanceNorm3d"):
        attribution_map(model, case.image, method="lrp")
    methods = available_methods(model)
    assert methods["lrp"] and methods["integrated_gradients"] == ""
    assert available_methods(small_cnn())["lrp"] == ""


def test_lrp_refuses_the_transformer_and_gradcam_reads_its_tokens(case):
    model = TinyViT()
    assert lrp_blockers(model)  # attention, layer norm
    with pytest.raises(UnsupportedLayerError):
        attribution_map(model, case.image, method="lrp")
    out = attribution_map(model, case.image, method="gradcam", layer="block", token_grid=(4, 4, 4))
    assert out.shape == case.image.shape[1:] and np.isfinite(out).all() and out.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="token_grid"):
        attribution_map(model, case.image, method="gradcam", layer="block")
    with pytest.raises(ValueError, match="token_grid"):
        attribution_map(model, case.image, method="gradcam", layer="block", token_grid=(2, 4, 4))


def test_bad_input_is_refused_with_a_clear_error(case):
    model = small_cnn()
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribution_map(model, case.image, method="saliency")
    with pytest.raises(ValueError, match="one case"):
        attribution_map(model, case.image[0], method="integrated_gradients")
    bad = case.image.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        attribution_map(model, bad, method="integrated_gradients")
    with pytest.raises(ValueError, match="target must be None or 0"):
        attribution_map(model, case.image, method="integrated_gradients", target=1)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        attribution_map(model, case.image, method="gradcam", layer="nope")
    with pytest.raises(ValueError, match="unexpected keyword"):
        attribution_map(model, case.image, method="gradcam", n_steps=3)


def test_multi_logit_model_needs_a_target(case):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(5, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="give target"):
        attribution_map(model, case.image, method="integrated_gradients")
    a0 = attribution_map(model, case.image, method="integrated_gradients", target=0, normalise=False)
    a1 = attribution_map(model, case.image, method="integrated_gradients", target=1, normalise=False)
    assert not np.allclose(a0, a1)


def test_normalise_map_by_hand():
    raw = np.array([-3.0, 0.0, 1.0, 2.0, 4.0]).reshape(1, 1, 5)
    # positive voxels 1, 2, 4; their 50th percentile is 2
    np.testing.assert_allclose(normalise_map(raw, percentile=50).ravel(), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(normalise_map(raw, percentile=100, sign="absolute").ravel(),
                               [0.75, 0, 0.25, 0.5, 1])
    assert not normalise_map(-np.abs(raw)).any()
    with pytest.raises(ValueError, match="sign"):
        normalise_map(raw, sign="negative")


def test_nifti_keeps_the_map_and_the_affine(case, tmp_path):
    amap = attribution_map(small_cnn(), case.image, method="gradcam")
    path = save_map_nifti(amap, case.affine, tmp_path / "maps" / "gradcam.nii.gz")
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, case.affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), amap)
    assert img.get_data_dtype() == np.float32
    with pytest.raises(ValueError, match="4x4"):
        save_map_nifti(amap, np.eye(3), tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        save_map_nifti(amap[0], case.affine, tmp_path / "x.nii.gz")
