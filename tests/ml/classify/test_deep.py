"""Deep families: crops, the scratch CNN training loop, the foundation encoder fine-tuned and probed."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ml.classify.cnn import CnnClassifier, build_cnn
from ml.classify.finetune import FoundationClassifier
from ml.classify.inputs import Augmenter, crop_centre, crop_stack
from ml.foundation.model import EncoderConfig, FoundationEncoder, save_encoder

torch.set_num_threads(1)


def _xy(phantom_stacks, phantom_cohort):
    keys = list(phantom_cohort.keys)
    return [phantom_stacks[k] for k in keys], phantom_cohort.subset(keys)


def test_crop_is_centred_on_the_tumour_with_true_origin_and_mirror(phantom_stacks):
    stack = next(iter(phantom_stacks.values()))
    centre = crop_centre(stack)
    tumour = np.argwhere(stack.masks["tumor"] > 0)
    assert np.allclose(centre, tumour.mean(axis=0))
    crop, origin = crop_stack(stack.image, stack.affine, centre, 16)
    start = np.round(centre - 7.5).astype(int)
    assert np.allclose(crop[:, 0, 0, 0], stack.image[:, start[0], start[1], start[2]])
    assert np.allclose(origin, (stack.affine @ np.append(start, 1))[:3])
    flipped, f_origin = crop_stack(stack.image, stack.affine, centre, 16, flip_x=True)
    assert np.array_equal(flipped, crop[:, ::-1])
    # voxel 0 of the mirrored crop is the mirror image (x -> -x) of the last voxel of the crop
    assert f_origin[0] == pytest.approx(-(origin[0] + 15 * stack.voxel_mm))
    assert np.allclose(f_origin[1:], origin[1:])
    # outside the grid: zeros
    corner, _ = crop_stack(stack.image, stack.affine, (0, 0, 0), 8)
    assert np.all(corner[:, :3, :3, :3] == 0)
    rng = np.random.default_rng(0)
    aug, _ = Augmenter().crop(stack.image, stack.affine, centre, 16, rng)
    assert aug.shape == crop.shape and not np.allclose(aug, crop)
    with pytest.raises(ValueError, match="flip_prob"):
        Augmenter(flip_prob=2)


def test_tiny_cnn_training_loss_drops_and_the_checkpoint_round_trips(phantom_stacks, phantom_cohort):
    X, y = _xy(phantom_stacks, phantom_cohort)
    clf = CnnClassifier(arch="densenet", crop=16, epochs=12, batch_size=4, lr=3e-3, augment=False,
                        random_state=0).fit(X, y)
    losses = [h["train_loss"] for h in clf.history_]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])
    p = clf.predict_proba(X)
    assert p.shape == (len(X), 2) and np.allclose(p.sum(axis=1), 1)
    # the training cases are fitted: higher probability for progression
    assert p[y == 1, 1].mean() > p[y == 0, 1].mean()
    payload = torch.load(io.BytesIO(clf.state_bytes()), weights_only=False)
    again = CnnClassifier.from_state(payload)
    assert np.allclose(again.predict_proba(X), p, atol=1e-6)
    # same seed, same model
    twin = CnnClassifier(arch="densenet", crop=16, epochs=2, batch_size=4, augment=True, random_state=5).fit(X, y)
    twin2 = CnnClassifier(arch="densenet", crop=16, epochs=2, batch_size=4, augment=True, random_state=5).fit(X, y)
    assert np.allclose(twin.predict_proba(X), twin2.predict_proba(X), atol=1e-6)


def test_cnn_early_stopping_keeps_the_best_validation_epoch(phantom_stacks, phantom_cohort):
    X, y = _xy(phantom_stacks, phantom_cohort)
    clf = CnnClassifier(arch="densenet", crop=16, epochs=6, batch_size=4, patience=2, random_state=1)
    clf.fit(X[:8], y[:8], X_val=X[8:], y_val=y[8:])
    val = [h["val_loss"] for h in clf.history_]
    assert clf.best_epoch_ == int(np.argmin(val)) + 1
    assert len(val) <= 6


def test_cnn_bad_input():
    with pytest.raises(ValueError, match="arch"):
        build_cnn("vgg", 5)
    with pytest.raises(ValueError, match="crop"):
        CnnClassifier(crop=4).fit([object()], [1])


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    enc = FoundationEncoder(EncoderConfig(img_size=(16, 16, 16), patch_size=8, hidden_size=32, mlp_dim=64,
                                          num_layers=1, num_heads=2, voxel_mm=4.0))
    path = save_encoder(enc, tmp_path_factory.mktemp("enc") / "encoder.pt", config={"run": "test"})
    return path, {k: v.clone() for k, v in enc.state_dict().items()}


def test_finetune_loads_the_encoder_checkpoint_and_trains_it(phantom_stacks, phantom_cohort, encoder_checkpoint):
    path, weights = encoder_checkpoint
    X, y = _xy(phantom_stacks, phantom_cohort)
    frozen_lr = FoundationClassifier(encoder_path=str(path), crop=16, epochs=1, batch_size=4, encoder_lr_mult=0.0,
                                     weight_decay=0.0, random_state=0).fit(X, y)
    got = frozen_lr.network_.encoder.state_dict()
    # the pretrained weights were loaded (and with a zero encoder learning rate, kept)
    assert all(torch.equal(got[k], weights[k]) for k in weights)
    tuned = FoundationClassifier(encoder_path=str(path), crop=16, epochs=3, batch_size=4, lr=1e-3,
                                 random_state=0).fit(X, y)
    changed = [k for k in weights if not torch.equal(tuned.network_.encoder.state_dict()[k], weights[k])]
    assert changed
    assert tuned.encoder_config_["hidden_size"] == 32
    payload = torch.load(io.BytesIO(tuned.state_bytes()), weights_only=False)
    again = FoundationClassifier.from_state(payload)
    assert np.allclose(again.predict_proba(X), tuned.predict_proba(X), atol=1e-5)


def test_linear_probe_keeps_the_encoder_frozen_and_equals_the_logistic_regression(
        phantom_stacks, phantom_cohort, encoder_checkpoint):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    path, weights = encoder_checkpoint
    X, y = _xy(phantom_stacks, phantom_cohort)
    probe = FoundationClassifier(encoder_path=str(path), mode="probe", crop=16, random_state=0).fit(X, y)
    assert all(torch.equal(probe.network_.encoder.state_dict()[k], weights[k]) for k in weights)
    assert probe.probe_C_ in np.logspace(-3, 2, 6)
    emb = probe.embed(X)
    assert emb.shape == (len(X), 32)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=probe.probe_C_, max_iter=5000)).fit(emb, y)
    assert np.allclose(probe.decision_function(X), ref.decision_function(emb), atol=1e-4)


def test_foundation_rejects_an_encoder_of_another_grid(phantom_stacks, phantom_cohort, tmp_path):
    enc = FoundationEncoder(EncoderConfig(img_size=(16, 16, 16), hidden_size=32, mlp_dim=64, num_layers=1,
                                          num_heads=2, voxel_mm=2.0))
    path = save_encoder(enc, tmp_path / "enc2mm.pt")
    X, y = _xy(phantom_stacks, phantom_cohort)
    with pytest.raises(ValueError, match="2 mm"):
        FoundationClassifier(encoder_path=str(path), crop=16, epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="mode"):
        FoundationClassifier(mode="zero-shot").fit(X, y)
    with pytest.raises(ValueError, match="does not exist"):
        FoundationClassifier(encoder_path=str(tmp_path / "none.pt"), crop=16).fit(X, y)


def test_min_steps_adds_epochs_for_small_training_sets(phantom_stacks, phantom_cohort):
    X, y = _xy(phantom_stacks, phantom_cohort)
    clf = CnnClassifier(arch="densenet", crop=16, epochs=1, min_steps=7, batch_size=4, random_state=0).fit(X, y)
    assert len(clf.history_) == 3  # 12 cases / batch 4 = 3 steps per epoch -> 3 epochs for >= 7 steps


def test_lesion_pooling_weights_the_tokens_by_their_share_of_the_tumour_mask(phantom_stacks, encoder_checkpoint):
    from ml.classify.finetune import EncoderClassifierNet
    from ml.foundation.model import load_encoder

    path, _ = encoder_checkpoint
    stack = next(iter(phantom_stacks.values()))
    clf = FoundationClassifier(encoder_path=str(path), crop=16)
    image = clf._input_image(stack)
    assert image.shape[0] == stack.image.shape[0] + 1
    assert np.array_equal(image[-1], (stack.masks["tumor"] > 0).astype(np.float32))
    crops, origins = clf._crops([stack])
    x, o = torch.from_numpy(crops), torch.from_numpy(origins.astype(np.float32))
    mask = crops[0, -1]
    assert 0 < mask.sum() < mask.size  # the crop holds tumour and background
    encoder, _ = load_encoder(path)
    net = EncoderClassifierNet(encoder, 32, pooling="lesion").eval()
    with torch.no_grad():
        got = net.pooled(x, o)[0].numpy()
        tokens = encoder(x[:, :-1], o).tokens[0].numpy()  # (8, 32): 2 x 2 x 2 patches of 8 voxels
        share = mask.reshape(2, 8, 2, 8, 2, 8).mean(axis=(1, 3, 5)).reshape(-1)  # token order d, h, w
        want = (tokens * share[:, None]).sum(0) / share.sum()
        assert np.allclose(got, want, atol=1e-5)
        assert not np.allclose(got, tokens.mean(0), atol=1e-3)  # not the crop mean
        empty = x.clone()
        empty[:, -1] = 0  # no tumour mask: the mean of every token
        assert np.allclose(net.pooled(empty, o)[0].numpy(), tokens.mean(0), atol=1e-5)
    mean_net = EncoderClassifierNet(encoder, 32, pooling="mean")
    assert mean_net.explained_channels is None and net.explained_channels == 5
    with pytest.raises(ValueError, match="pooling"):
        EncoderClassifierNet(encoder, 32, pooling="median")


def test_max_pooling_takes_each_feature_max_over_the_patches_inside_the_brain(phantom_stacks, encoder_checkpoint):
    from ml.classify.finetune import EncoderClassifierNet
    from ml.foundation.model import load_encoder

    path, _ = encoder_checkpoint
    stack = next(iter(phantom_stacks.values()))
    clf = FoundationClassifier(encoder_path=str(path), crop=16, pooling="max")
    image = clf._input_image(stack)
    assert np.array_equal(image[-1], (stack.masks["brain"] > 0).astype(np.float32))
    crops, origins = clf._crops([stack])
    x, o = torch.from_numpy(crops), torch.from_numpy(origins.astype(np.float32))
    encoder, _ = load_encoder(path)
    net = EncoderClassifierNet(encoder, 32, pooling="max").eval()
    assert net.explained_channels == 5
    with torch.no_grad():
        tokens = encoder(x[:, :-1], o).tokens[0].numpy()  # (8, 32): 2 x 2 x 2 patches of 8 voxels
        # a brain mask covering 3 whole patches and a quarter of a fourth: the max of the 3
        part = x.clone()
        part[:, -1] = 0
        part[:, -1, :8, :8, :] = 1  # patches (0, 0, 0) and (0, 0, 1)
        part[:, -1, 8:, :8, :8] = 1  # patch (1, 0, 0)
        part[:, -1, :4, 8:12, 8:] = 1  # a quarter of patch (0, 1, 1)
        share = part[0, -1].numpy().reshape(2, 8, 2, 8, 2, 8).mean(axis=(1, 3, 5)).reshape(-1)
        assert sorted(share.round(3)) == [0, 0, 0, 0, 0.25, 1, 1, 1]
        got = net.pooled(part, o)[0].numpy()
        assert np.allclose(got, tokens[share >= 0.5].max(0), atol=1e-5)
        assert not np.allclose(got, tokens.max(0), atol=1e-4)  # the patch a quarter inside is left out
        tiny = x.clone()
        tiny[:, -1] = 0
        tiny[:, -1, 0, 0, 0] = tiny[:, -1, 15, 15, 15] = 1  # no patch half inside: those it touches
        assert np.allclose(net.pooled(tiny, o)[0].numpy(), tokens[[0, 7]].max(0), atol=1e-5)
        empty = x.clone()
        empty[:, -1] = 0  # no brain mask: every patch
        assert np.allclose(net.pooled(empty, o)[0].numpy(), tokens.max(0), atol=1e-5)
        # the stack's own mask: the max over its patches at least half inside
        share = crops[0, -1].reshape(2, 8, 2, 8, 2, 8).mean(axis=(1, 3, 5)).reshape(-1)
        inside = share >= 0.5 if (share >= 0.5).any() else share > 0
        assert np.allclose(net.pooled(x, o)[0].numpy(), tokens[inside].max(0), atol=1e-5)


def test_augmenter_only_moves_a_mask_riding_along_and_scales_the_images(phantom_stacks):
    stack = next(iter(phantom_stacks.values()))
    image = np.concatenate([np.asarray(stack.image, np.float32), (stack.masks["tumor"] > 0)[None].astype(np.float32)])
    centre = crop_centre(stack)
    geometric = Augmenter(intensity_scale=0, intensity_shift=0, noise_std=0)
    full = Augmenter(intensity_scale=0.2, intensity_shift=0.2, noise_std=0.1)
    for seed in range(4):
        moved, o1 = geometric.crop(image, stack.affine, centre, 16, np.random.default_rng(seed), intensity_channels=-1)
        aug, o2 = full.crop(image, stack.affine, centre, 16, np.random.default_rng(seed), intensity_channels=-1)
        assert np.array_equal(o1, o2)
        assert np.array_equal(aug[-1], moved[-1]) and set(np.unique(aug[-1])) <= {0.0, 1.0}
        assert not np.allclose(aug[:-1], moved[:-1])
    # without intensity_channels every channel is augmented (the CNN's behaviour, unchanged)
    every, _ = full.crop(image, stack.affine, centre, 16, np.random.default_rng(0))
    assert not set(np.unique(every[-1])) <= {0.0, 1.0}


def test_a_foundation_state_saved_before_pooling_existed_restores_mean_pooling(
        phantom_stacks, phantom_cohort, encoder_checkpoint):
    path, _ = encoder_checkpoint
    X, y = _xy(phantom_stacks, phantom_cohort)
    old = FoundationClassifier(encoder_path=str(path), mode="probe", pooling="mean", crop=16, random_state=0).fit(X, y)
    payload = torch.load(io.BytesIO(old.state_bytes()), weights_only=False)
    del payload["params"]["pooling"]  # as version 1 wrote it
    again = FoundationClassifier.from_state(payload)
    assert again.pooling == "mean" and again.network_.pooling == "mean"
    assert np.allclose(again.decision_function(X), old.decision_function(X), atol=1e-5)
    lesion = FoundationClassifier(encoder_path=str(path), mode="probe", crop=16, random_state=0).fit(X, y)
    assert lesion.pooling == "lesion" and lesion.in_channels_ == old.in_channels_ + 1
    assert not np.allclose(lesion.embed(X), old.embed(X), atol=1e-3)
    restored = FoundationClassifier.from_state(torch.load(io.BytesIO(lesion.state_bytes()), weights_only=False))
    assert np.allclose(restored.decision_function(X), lesion.decision_function(X), atol=1e-5)


def test_integrated_gradients_of_lesion_pooling_sum_the_image_channels_only(phantom_stacks, encoder_checkpoint):
    from captum.attr import IntegratedGradients

    from ml.classify.finetune import EncoderClassifierNet
    from ml.explain.attributions import attribution_map
    from ml.foundation.model import load_encoder

    path, _ = encoder_checkpoint
    stack = next(iter(phantom_stacks.values()))
    crops, origins = FoundationClassifier(encoder_path=str(path), crop=16)._crops([stack])
    x, o = torch.from_numpy(crops), torch.from_numpy(origins.astype(np.float32))
    torch.manual_seed(0)
    encoder, _ = load_encoder(path)
    net = EncoderClassifierNet(encoder, 32, pooling="lesion").eval()
    got = attribution_map(net, x, method="integrated_gradients", normalise=False, additional_forward_args=o,
                          n_steps=8)
    attr = IntegratedGradients(lambda a, b: net(a, b)).attribute(
        x, baselines=0.0, n_steps=8, internal_batch_size=4, additional_forward_args=o, method="gausslegendre")[0]
    assert np.allclose(got, attr[:5].sum(0).detach().numpy(), atol=1e-5)
    assert not np.allclose(got, attr.sum(0).detach().numpy(), atol=1e-6)


def test_lp_ft_starts_fine_tuning_from_the_linear_probe(phantom_stacks, phantom_cohort, encoder_checkpoint):
    path, weights = encoder_checkpoint
    X, y = _xy(phantom_stacks, phantom_cohort)
    probe = FoundationClassifier(encoder_path=str(path), mode="probe", crop=16, random_state=0).fit(X, y)
    # a step too small to move anything: LP-FT's model is the probe's
    still = FoundationClassifier(encoder_path=str(path), head_init="probe", crop=16, epochs=1, batch_size=4,
                                 lr=1e-9, augment=False, random_state=0).fit(X, y)
    assert np.allclose(still.decision_function(X), probe.decision_function(X), atol=1e-3)
    assert still.network_.dropout.p == 0.1
    assert all(p.requires_grad for p in still.network_.encoder.parameters())
    tuned = FoundationClassifier(encoder_path=str(path), head_init="probe", crop=16, epochs=2, batch_size=4,
                                 random_state=0).fit(X, y)
    assert any(not torch.equal(tuned.network_.encoder.state_dict()[k], weights[k]) for k in weights)
    assert tuned.probe_C_ == probe.probe_C_  # the head it started from
    with pytest.raises(ValueError, match="head_init"):
        FoundationClassifier(encoder_path=str(path), head_init="zeros", crop=16).fit(X, y)
