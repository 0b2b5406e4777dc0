"""Pretext losses and the training loop: overfitting, reproducibility, resume, init, DDP on gloo."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.foundation.config import load_config, save_config
from ml.foundation.model import FoundationEncoder, load_encoder, save_encoder
from ml.foundation.pretext import (
    PretextConfig,
    PretrainModel,
    contrastive_at_chance,
    contrastive_chance,
    nt_xent,
    patchify,
    random_keep,
    unpatchify,
)
from ml.foundation.train import build_model, load_matching_weights, pretrain, weights_digest

from .conftest import tiny_encoder_config

REPO = Path(__file__).resolve().parents[3]


def test_patchify_roundtrip_and_token_order():
    x = torch.randn(2, 5, 16, 24, 8)
    tokens = patchify(x, 8)
    assert tokens.shape == (2, 6, 512, 5)
    torch.testing.assert_close(unpatchify(tokens, (2, 3, 1), 8), x)
    # token 1 is patch (0, 1, 0) (d, h, w row-major, as the encoder's flatten)
    torch.testing.assert_close(tokens[0, 1, 0], x[0, :, 0, 8, 0])


def test_random_keep_hides_the_ratio():
    g = torch.Generator().manual_seed(0)
    keep, masked = random_keep(3, 64, 0.75, g)
    assert keep.shape == (3, 16) and masked.sum(dim=1).tolist() == [48, 48, 48]
    for b in range(3):
        assert not masked[b, keep[b]].any()
        assert len(set(keep[b].tolist())) == 16


def test_nt_xent_is_low_for_matching_pairs():
    z = torch.randn(6, 8)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z), 0.1) < nt_xent(z, torch.randn(6, 8), 0.1)


def test_the_contrastive_chance_level_is_the_loss_of_embeddings_that_tell_nothing_apart():
    same = torch.ones(8, 16)  # every exam's embedding alike: each view's positive is one of 15 equals
    assert float(nt_xent(same, same, 0.1)) == pytest.approx(contrastive_chance(8)) == pytest.approx(np.log(15))
    assert contrastive_at_chance(2.705, 8) and not contrastive_at_chance(2.63, 8)
    with pytest.raises(ValueError, match="at least 2"):
        contrastive_chance(1)


def _views(stacks, crop=16):
    """Fixed crops around the lesion-rich centre of 4 stacks, two slightly shifted views."""
    imgs = np.stack([s.image for s in stacks[:4]])
    v1 = torch.from_numpy(imgs[:, :, 16:16 + crop, 20:20 + crop, 16:16 + crop].copy())
    v2 = torch.from_numpy(imgs[:, :, 16:16 + crop, 24:24 + crop, 16:16 + crop].copy())
    o1 = torch.tensor([[-93.0 + 64, -129.0 + 80, -75.0 + 64]]).expand(4, 3)
    o2 = torch.tensor([[-93.0 + 64, -129.0 + 96, -75.0 + 64]]).expand(4, 3)
    return v1, o1, v2, o2


@pytest.mark.parametrize("task, contrastive_view", [("inpainting", "crossmodal"), ("crossmodal", "crossmodal"),
                                                     ("contrastive", "crossmodal"), ("contrastive", "masked"),
                                                     ("patchstats", "crossmodal")])
def test_each_loss_decreases_on_a_tiny_overfit_run(foundation_stacks, task, contrastive_view):
    weights = {f"weight_{t}": float(t == task) for t in ("inpainting", "crossmodal", "contrastive", "patchstats")}
    cfg = PretextConfig(decoder_hidden_size=32, decoder_layers=1, decoder_heads=4, decoder_mlp_dim=64,
                        proj_dim=16, contrastive_view=contrastive_view, **weights)
    torch.manual_seed(0)
    model = PretrainModel(tiny_encoder_config(patch_size=4), cfg)
    v1, o1, v2, o2 = _views(foundation_stacks)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first, last = None, None
    for step in range(40):
        g = torch.Generator().manual_seed(step % 4)  # a few fixed masks: overfitting is possible
        losses = model(v1, o1, v2, o2, generator=g)
        assert set(losses) == {"loss", task}
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        value = float(losses[task].detach())
        first = value if first is None else first
        last = value
    assert last < 0.7 * first, (task, first, last)


def test_patch_statistics_are_each_visible_patch_own_mean_and_max(foundation_stacks):
    """The target is every patch's mean and max per channel, standardised over the batch; the loss
    compares the head's prediction on the visible tokens with their own patches' statistics only."""
    v1, o1, v2, o2 = _views(foundation_stacks)
    torch.manual_seed(0)
    cfg = PretextConfig(decoder_hidden_size=32, decoder_layers=1, decoder_heads=4, decoder_mlp_dim=64, proj_dim=16,
                        weight_patchstats=1.0)
    model = PretrainModel(tiny_encoder_config(patch_size=4), cfg)
    stats = model.patch_stats(v1)
    b, n = v1.shape[0], (16 // 4) ** 3
    assert stats.shape == (b, n, 2 * v1.shape[1])
    # by hand: patch (1, 2, 3) of exam 2 (token order d, h, w), the PET channel (2)
    block = v1[2, :, 4:8, 8:12, 12:16].reshape(v1.shape[1], -1)
    raw = torch.cat([block.mean(dim=1), block.amax(dim=1)])
    every = torch.cat([patchify(v1, 4).mean(dim=2), patchify(v1, 4).amax(dim=2)], dim=-1).reshape(-1, 10)
    want = (raw - every.mean(dim=0)) / every.std(dim=0)
    token = 1 * 16 + 2 * 4 + 3
    torch.testing.assert_close(stats[2, token], want, atol=1e-5, rtol=1e-5)
    # the loss reads the visible tokens only: hidden patches changed, the loss unchanged
    keep, masked = random_keep(b, n, cfg.mask_ratio, torch.Generator().manual_seed(3))
    tokens = model.encoder(v1, o1, keep_idx=keep).tokens
    loss = model._patchstats_loss(v1, keep, tokens)
    target = torch.gather(stats, 1, keep[:, :, None].expand(-1, -1, 10))
    torch.testing.assert_close(loss, (model.stats_head(tokens) - target).pow(2).mean())
    # off by default: no head, no loss, the state dict of older configs
    plain = PretrainModel(tiny_encoder_config(patch_size=4), PretextConfig(decoder_hidden_size=32, decoder_layers=1,
                                                                           decoder_heads=4, decoder_mlp_dim=64))
    assert plain.stats_head is None and not any(k.startswith("stats_head") for k in plain.state_dict())
    with torch.no_grad():
        assert "patchstats" not in plain(v1, o1, v2, o2, generator=torch.Generator().manual_seed(1))
        assert "patchstats" in model(v1, o1, v2, o2, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="weight_patchstats"):
        PretextConfig(weight_patchstats=-1)


def test_the_masked_contrastive_view_is_a_third_pass_with_every_modality(foundation_stacks):
    """``contrastive_view="masked"``: the inpainting view is contrasted with view 2 seen whole
    (every modality) through its own mask, not with the cross-modal pass (one modality hidden):
    one more encoder pass, the cross-modal loss unchanged, the contrastive one different."""
    v1, o1, v2, o2 = _views(foundation_stacks)
    out, calls = {}, {}
    for view in ("crossmodal", "masked"):
        torch.manual_seed(0)
        model = PretrainModel(tiny_encoder_config(patch_size=4), PretextConfig(
            decoder_hidden_size=32, decoder_layers=1, decoder_heads=4, decoder_mlp_dim=64, proj_dim=16,
            contrastive_view=view))
        seen = []
        model.encoder.register_forward_hook(lambda m, args, kwargs, _o, seen=seen: seen.append(kwargs.get("channel_mask")),
                                            with_kwargs=True)
        with torch.no_grad():
            out[view] = model(v1, o1, v2, o2, generator=torch.Generator().manual_seed(1))
        calls[view] = seen
    assert len(calls["crossmodal"]) == 2 and len(calls["masked"]) == 3
    assert calls["masked"][2] is None  # the contrastive view keeps every channel
    torch.testing.assert_close(out["masked"]["crossmodal"], out["crossmodal"]["crossmodal"])
    torch.testing.assert_close(out["masked"]["inpainting"], out["crossmodal"]["inpainting"])
    assert not torch.allclose(out["masked"]["contrastive"], out["crossmodal"]["contrastive"])
    with pytest.raises(ValueError, match="contrastive_view"):
        PretextConfig(contrastive_view="other")
    with pytest.raises(ValueError, match="contrastive_mask_ratio"):
        PretextConfig(contrastive_mask_ratio=1.0)


def test_config_yaml_roundtrip_and_errors(tmp_path, tiny_config):
    path = save_config(tiny_config, tmp_path / "c.yaml")
    assert load_config(path) == tiny_config
    (tmp_path / "bad.yaml").write_text("epochs: 2\nencoder: {hidden_sise: 3}\n")
    with pytest.raises(ValueError, match="bad.yaml.*unknown keys"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        dataclasses.replace(tiny_config, batch_size=1)


def test_pretrain_writes_run_and_is_reproducible(foundation_index, tiny_config, tmp_path):
    seen = []
    a = pretrain(tiny_config, foundation_index, out_dir=tmp_path / "a", progress=lambda f, m: seen.append(f))
    b = pretrain(tiny_config, foundation_index, out_dir=tmp_path / "b")
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.weights_digest == b.weights_digest
    assert set(a.history[0]) >= {"epoch", "loss", "inpainting", "crossmodal", "contrastive", "lr", "volumes_per_s"}
    assert len(a.history) == tiny_config.epochs and seen[-1] == pytest.approx(1.0)
    assert sorted(a.exams_seen) == sorted(foundation_index.index)
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in lines] == [h["loss"] for h in a.history]
    assert load_config(tmp_path / "a" / "config.yaml") == tiny_config
    assert (tmp_path / "a" / "optimizer.pt").is_file()
    encoder, config = load_encoder(a.checkpoint)
    assert config["seed"] == tiny_config.seed and encoder.config == tiny_config.encoder
    # another seed gives another run
    c = pretrain(dataclasses.replace(tiny_config, seed=4), foundation_index, out_dir=tmp_path / "c")
    assert c.weights_digest != a.weights_digest


def test_resume_continues_identically(foundation_index, tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, epochs=3)
    full = pretrain(cfg, foundation_index, out_dir=tmp_path / "full")
    # the same run stopped after epoch 1 (its first epoch equals a 3-epoch run's only if the
    # schedule is the same: write the 3-epoch config, interrupt by running 1 epoch of it)
    part_dir = tmp_path / "part"
    pretrain(dataclasses.replace(cfg, epochs=1), foundation_index, out_dir=part_dir)
    with pytest.raises(ValueError, match="differs from the given config"):
        pretrain(cfg, foundation_index, out_dir=part_dir, resume=True)
    # a genuine interruption: 3-epoch run whose process ends after epoch 1
    part_dir = tmp_path / "part3"
    _interrupted(cfg, foundation_index, part_dir, after_epochs=1)
    resumed = pretrain(cfg, foundation_index, out_dir=part_dir, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.weights_digest == full.weights_digest
    assert len((part_dir / "metrics.jsonl").read_text().splitlines()) == 3


class _Stop(Exception):
    pass


def _interrupted(cfg, index, out_dir, after_epochs):
    """Run ``cfg`` and kill it (an exception from the progress callback) right after the checkpoint
    of epoch ``after_epochs``."""
    steps = {"n": 0}
    per_epoch = len(index) // cfg.batch_size

    def progress(fraction, message):
        steps["n"] += 1
        if steps["n"] == after_epochs * per_epoch + 1:  # first step of the next epoch: checkpoint written
            raise _Stop

    with pytest.raises(_Stop):
        pretrain(cfg, index, out_dir=out_dir, progress=progress)
    assert json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == after_epochs


def test_init_from_a_more_general_checkpoint_reports_skipped(tmp_path, tiny_config):
    # a "general" encoder: same width, more layers and 6 input channels (patch embedding differs)
    torch.manual_seed(1)
    general = FoundationEncoder(tiny_encoder_config(img_size=(32, 32, 32), num_layers=3, in_channels=6))
    path = save_encoder(general, tmp_path / "general.pt")
    model = build_model(tiny_config)
    report = load_matching_weights(model, path)
    skipped = dict(report.skipped)
    assert "encoder.patch_embed.weight" in skipped and "shape" in skipped["encoder.patch_embed.weight"]
    assert "encoder.missing_channel" in skipped
    assert any(name.startswith("encoder.blocks.2.") for name in skipped)
    assert "encoder.blocks.0.attn.qkv.weight" in report.loaded
    torch.testing.assert_close(model.encoder.blocks[1].mlp.linear1.weight, general.blocks[1].mlp.linear1.weight)
    assert "encoder.patch_embed.weight" in report.not_initialised
    assert any(n.startswith("decoder.") for n in report.not_initialised)
    # a bare state dict (another code base's names) works too
    torch.save({"state_dict": {"norm.weight": torch.ones(32), "foo.bar": torch.zeros(3)}}, tmp_path / "bare.pt")
    report = load_matching_weights(build_model(tiny_config), tmp_path / "bare.pt")
    assert report.loaded == ("encoder.norm.weight",) and report.skipped == (("foo.bar", "no parameter of that name"),)
    with pytest.raises(ValueError, match="does not exist"):
        load_matching_weights(model, tmp_path / "nope.pt")


def test_pretrain_with_init_checkpoint(foundation_index, tiny_config, tmp_path):
    first = pretrain(dataclasses.replace(tiny_config, epochs=1), foundation_index, out_dir=tmp_path / "a")
    second = pretrain(dataclasses.replace(tiny_config, epochs=1), foundation_index, out_dir=tmp_path / "b",
                      init_checkpoint=first.checkpoint)
    assert second.init is not None and not second.init.skipped and not second.init.not_initialised
    # started from trained weights: its first epoch's loss is below the random start's
    assert second.history[0]["loss"] < first.history[0]["loss"]


def test_bad_index_is_a_clear_error(foundation_index, tiny_config, tmp_path):
    broken = foundation_index.copy()
    broken.loc[broken.index[0], "path"] = str(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="stack files missing"):
        pretrain(tiny_config, broken, out_dir=tmp_path / "x")


@pytest.mark.slow
def _json_objects(text: str) -> list[dict]:
    """Every JSON object in ``text``, even when two processes' lines ran together."""
    decoder, out, i = json.JSONDecoder(), [], text.find("{")
    while i >= 0:
        obj, end = decoder.raw_decode(text, i)
        out.append(obj)
        i = text.find("{", end)
    return out


def test_ddp_two_gloo_ranks_end_with_identical_weights(foundation_index, tiny_config, tmp_path):
    index_dir = Path(foundation_index["path"].iloc[0]).parent
    cfg = dataclasses.replace(tiny_config, epochs=1, batch_size=2)
    save_config(cfg, tmp_path / "cfg.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
         "-m", "ml.foundation.train", "--config", str(tmp_path / "cfg.yaml"), "--index", str(index_dir),
         "--out", str(tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _json_objects(proc.stdout)  # the two ranks write to one pipe
    digests = {x["rank"]: x["weights_digest"] for x in lines}
    assert set(digests) == {0, 1}
    assert digests[0] == digests[1]
    # and the checkpoint rank 0 wrote holds those weights
    model = build_model(cfg)
    payload = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    model.load_state_dict({**{f"encoder.{k}": v for k, v in payload["encoder"].items()}, **payload["heads"]})
    assert weights_digest(model) == digests[0]
    # each rank trained on half the exams per epoch, on gradients averaged over both
    history = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["steps"] == len(foundation_index) // 4


def test_scanner_augmentations_touch_only_their_channels_and_are_seeded(tiny_config, foundation_index):
    """PET blur changes only the PET channels (smoother: less voxel-to-voxel variation), the MRI bias
    field only the MRI channels; both reproducible from the transform seed; off by default."""
    from ml.foundation.data import CHANNELS
    from ml.foundation.train import _transforms

    pet = [i for i, c in enumerate(CHANNELS) if c.startswith("suv")]
    mri = [i for i, c in enumerate(CHANNELS) if not c.startswith("suv")]
    item = {"path": foundation_index["path"].iloc[0], "key": foundation_index.index[0]}

    def views(config, seed):
        t = _transforms(config)
        t.set_random_state(seed=seed)
        return [v["image"].as_tensor() for v in t(dict(item))]

    plain = dataclasses.replace(tiny_config, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)
    base = views(plain, 1)
    blurred = views(dataclasses.replace(plain, pet_blur_mm=12.0), 1)
    biased = views(dataclasses.replace(plain, mri_bias_field=0.3), 1)
    # the same crops (the crop is drawn first, from the same seed)
    changed_pet = changed_mri = 0
    for b, bl, bi in zip(base, blurred, biased, strict=True):
        torch.testing.assert_close(bl[mri], b[mri])
        torch.testing.assert_close(bi[pet], b[pet])
        if not torch.allclose(bl[pet], b[pet]):
            changed_pet += 1
            rough = lambda x: (x[:, 1:] - x[:, :-1]).abs().mean()  # noqa: E731
            assert rough(bl[pet]) < rough(b[pet])
        if not torch.allclose(bi[mri], b[mri]):
            changed_mri += 1
    both = dataclasses.replace(plain, pet_blur_mm=12.0, mri_bias_field=0.3)
    n_views = n_pet = n_mri = 0
    for seed in range(6):  # same seed: same crops; each augmentation hits about half the views
        for b, v in zip(views(plain, seed), views(both, seed), strict=True):
            n_views += 1
            n_pet += not torch.allclose(v[pet], b[pet])
            n_mri += not torch.allclose(v[mri], b[mri])
    assert 0 < n_pet < n_views and 0 < n_mri < n_views, (n_pet, n_mri, n_views)
    for a, b in zip(views(both, 3), views(both, 3), strict=True):
        torch.testing.assert_close(a, b)
    assert changed_pet + changed_mri > 0
