"""Encoder: shapes, position embedding in MNI mm, visible-token masking, encode() geometry, checkpoints."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ml.foundation.model import (
    EncoderConfig,
    FoundationEncoder,
    default_origin_mm,
    encode,
    load_encoder,
    save_encoder,
)
from ml.io.grid import common_grid

from .conftest import tiny_encoder_config


def _encoder(seed: int = 0, **kw) -> FoundationEncoder:
    torch.manual_seed(seed)
    return FoundationEncoder(tiny_encoder_config(**kw)).eval()


def test_forward_shapes_any_size_divisible_by_patch():
    enc = _encoder()
    out = enc(torch.randn(2, 5, 16, 16, 16))
    assert out.patches.shape == (2, 32, 2, 2, 2)
    assert out.pooled.shape == (2, 32)
    assert out.tokens.shape == (2, 8, 32)
    torch.testing.assert_close(out.pooled, out.patches.flatten(2).mean(-1))
    out = enc(torch.randn(1, 5, 24, 16, 32))  # another crop size: the position embedding follows mm
    assert out.patches.shape == (1, 32, 3, 2, 4)


@pytest.mark.parametrize("shape,match", [((2, 4, 16, 16, 16), "expected input"),
                                         ((2, 5, 12, 16, 16), "not divisible")])
def test_bad_input_is_a_clear_error(shape, match):
    with pytest.raises(ValueError, match=match):
        _encoder()(torch.randn(*shape))


def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        EncoderConfig(img_size=(30, 32, 32), patch_size=8)
    with pytest.raises(ValueError, match="unknown keys"):
        EncoderConfig.from_dict({"hidden_sise": 10})
    cfg = tiny_encoder_config()
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg


def test_patch_centres_are_mni_mm_of_the_patch_centre():
    enc = _encoder()
    origin = torch.tensor([[-93.0, -129.0, -75.0]])  # first voxel of the 4 mm common grid
    centres = enc.patch_centres_mm((2, 2, 2), origin)
    # patch (0,0,0) covers voxels 0..7: centre voxel 3.5 -> -93 + 3.5 * 4 = -79 mm
    np.testing.assert_allclose(centres[0, 0].numpy(), [-79.0, -115.0, -61.0])
    # last patch (1,1,1): +32 mm on each axis; token order is (d, h, w) row-major
    np.testing.assert_allclose(centres[0, 7].numpy(), [-47.0, -83.0, -29.0])
    np.testing.assert_allclose(centres[0, 1].numpy(), [-79.0, -115.0, -29.0])


def test_position_embedding_depends_on_where_the_crop_lies():
    enc = _encoder()
    x = torch.randn(1, 5, 16, 16, 16)
    a = enc(x, torch.tensor([[-40.0, -60.0, 0.0]])).pooled
    b = enc(x, torch.tensor([[-40.0, -60.0, 0.0]])).pooled
    c = enc(x, torch.tensor([[20.0, -60.0, 0.0]])).pooled
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3
    # the default origin is the crop centred on the common grid
    d = enc(x).pooled
    e = enc(x, torch.as_tensor(default_origin_mm((16, 16, 16), 4.0), dtype=torch.float32)[None]).pooled
    torch.testing.assert_close(d, e)


def test_encoder_sees_only_visible_tokens():
    enc = _encoder()
    x = torch.randn(2, 5, 16, 16, 16)
    keep = torch.tensor([[0, 3, 5], [1, 2, 7]])
    out = enc(x, keep_idx=keep)
    assert out.tokens.shape == (2, 3, 32) and out.patches is None
    # changing a hidden patch's voxels does not change the output; changing a visible one does
    y = x.clone()
    y[0, :, 8:, 8:, 8:] += 5.0  # patch (1,1,1) = token 7, hidden for sample 0
    torch.testing.assert_close(enc(y, keep_idx=keep).tokens[0], out.tokens[0])
    y = x.clone()
    y[0, :, :8, :8, 8:] += 5.0  # token 1: hidden for sample 0 -> unchanged
    torch.testing.assert_close(enc(y, keep_idx=keep).tokens[0], out.tokens[0])
    y = x.clone()
    y[0, :, :8, 8:, 8:] += 5.0  # token 3: visible for sample 0 -> changes
    assert (enc(y, keep_idx=keep).tokens[0] - out.tokens[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="keep_idx outside"):
        enc(x, keep_idx=torch.tensor([[0, 8], [0, 1]]))


def test_channel_mask_hides_a_modality():
    enc = _encoder()
    x = torch.randn(1, 5, 16, 16, 16)
    mri_only = torch.tensor([[True, True, False, False, False]])
    a = enc(x, channel_mask=mri_only).pooled
    y = x.clone()
    y[:, 2:] = torch.randn_like(y[:, 2:])  # other PET: invisible
    torch.testing.assert_close(enc(y, channel_mask=mri_only).pooled, a)
    # the missing-channel embedding tells the encoder that PET is absent (not just zero)
    z = x.clone()
    z[:, 2:] = 0
    assert (enc(z).pooled - a).abs().max() > 1e-4


def test_encode_grid_geometry(foundation_stacks):
    stack = foundation_stacks[0]
    enc = _encoder(img_size=(32, 32, 32))
    emb = encode(enc, stack)
    assert stack.image.shape[1:] == (48, 56, 48)
    assert emb.patches.shape == (32, 6, 7, 6) and emb.patches.dtype == np.float32
    assert emb.pooled.shape == (32,)
    grid = common_grid(4.0)
    # patch (i, j, k) covers voxels 8i..8i+7: its centre is voxel 8i + 3.5 of the grid
    for ijk in [(0, 0, 0), (5, 6, 5), (2, 3, 1)]:
        voxel = np.array([8 * c + 3.5 for c in ijk] + [1.0])
        np.testing.assert_allclose(emb.patch_affine @ np.array([*ijk, 1.0]), grid.affine @ voxel)
    # a crop: patches are the same MNI places, so the affine shifts by the crop start
    sub = encode(enc, stack, crop=(slice(8, 40), (10, 30), slice(None)))
    assert sub.patches.shape == (32, 4, 3, 6)
    np.testing.assert_allclose(sub.patch_affine @ [0, 0, 0, 1], emb.patch_affine @ [1, 1, 0, 1])
    # with overlapping windows the patches are averages; the whole-exam pooled vector is deterministic
    np.testing.assert_allclose(encode(enc, stack).pooled, emb.pooled, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="outside the volume"):
        encode(enc, stack, crop=(slice(0, 60), slice(None), slice(None)))


def test_encode_position_matters_for_the_patch_embeddings(foundation_stacks):
    """The same voxels seen in two windows at the same MNI place agree (up to context), and a
    patch's embedding changes when the encoder is told the window lies elsewhere."""
    stack = foundation_stacks[1]
    enc = _encoder(img_size=(48, 56, 48))  # one window = the whole grid: no averaging
    whole = encode(enc, stack)
    out = enc(torch.from_numpy(stack.image[None]), torch.tensor([[-93.0, -129.0, -75.0]]))
    np.testing.assert_allclose(whole.patches, out.patches[0].detach().numpy(), rtol=1e-4, atol=1e-5)


def test_encode_rejects_other_voxel_size(foundation_stacks):
    enc = _encoder(voxel_mm=2.0)
    with pytest.raises(ValueError, match="4 mm grid"):
        encode(enc, foundation_stacks[0])


def test_save_and_load_encoder(tmp_path, foundation_stacks):
    enc = _encoder(seed=4)
    path = save_encoder(enc, tmp_path / "enc.pt", config={"seed": 4})
    loaded, config = load_encoder(path)
    assert config["seed"] == 4 and config["encoder"] == enc.config.to_dict()
    assert not loaded.training
    np.testing.assert_array_equal(encode(loaded, foundation_stacks[0]).pooled, encode(enc, foundation_stacks[0]).pooled)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_encoder(tmp_path / "junk.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an AminoPET foundation checkpoint"):
        load_encoder(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_encoder(tmp_path / "missing.pt")


def test_encode_lesion_embedding_is_the_tumour_weighted_mean_of_patches(foundation_stacks):
    stack = foundation_stacks[0]
    enc = _encoder(img_size=(32, 32, 32))
    emb = encode(enc, stack)
    tumour = stack.masks["tumor"] > 0
    assert tumour.any()
    # share of each 8^3 patch inside the tumour, computed independently of encode()
    share = np.zeros(emb.grid_shape)
    for i, j, k in np.argwhere(tumour):
        share[i // 8, j // 8, k // 8] += 1 / 8 ** 3
    expected = (emb.patches * share[None]).sum(axis=(1, 2, 3)) / share.sum()
    np.testing.assert_allclose(emb.lesion, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(emb.lesion - emb.pooled).max() > 1e-3  # the tumour's patches are not the brain's mean
    no_tumour = dataclasses.replace(stack, masks={k: v for k, v in stack.masks.items() if k != "tumor"})
    assert encode(enc, no_tumour).lesion is None


def test_encode_global_max_embedding_is_the_featurewise_max_over_the_brains_patches(foundation_stacks):
    stack = foundation_stacks[0]
    enc = _encoder(img_size=(32, 32, 32))
    emb = encode(enc, stack)
    brain = stack.masks["brain"] > 0
    # share of each 8^3 patch inside the brain, computed independently of encode()
    share = np.zeros(emb.grid_shape)
    for i, j, k in np.argwhere(brain):
        share[i // 8, j // 8, k // 8] += 1 / 8 ** 3
    inside = share >= 0.5
    assert 0 < inside.sum() < inside.size  # some patches are mostly outside the head: left out
    np.testing.assert_allclose(emb.peak, emb.patches[:, inside].max(axis=1), rtol=1e-6)
    assert not np.allclose(emb.peak, emb.patches.reshape(emb.patches.shape[0], -1).max(axis=1))
    assert (emb.peak > emb.pooled).all()  # the maximum of patches that differ is above their mean
    # without a brain mask: the maximum over every patch
    no_brain = dataclasses.replace(stack, masks={k: v for k, v in stack.masks.items() if k != "brain"})
    bare = encode(enc, no_brain)
    np.testing.assert_allclose(bare.peak, bare.patches.reshape(bare.patches.shape[0], -1).max(axis=1), rtol=1e-6)
