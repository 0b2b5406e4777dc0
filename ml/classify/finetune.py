"""The WP1 foundation encoder with a classification head: fine-tuned, or linear-probed (frozen).

The encoder is :class:`ml.foundation.model.FoundationEncoder` read from a WP1 checkpoint
(:func:`ml.foundation.model.load_encoder`); ``encoder_path=None`` starts from a randomly initialised
encoder of the default configuration (the "no pretraining" control, and the stand-in until a
pretrained checkpoint exists). Input: the lesion-centred crop of every deep family
(:mod:`ml.classify.inputs`) with the MNI mm of its first voxel, so the encoder's position embedding
sees where in the brain the crop lies. The head is one linear layer on the pooled embedding: by
default the tokens weighted by their patch's share of the tumour mask (``pooling="lesion"``, the
representation on which a WP1 probe generalised to an unseen site, docs/results.md), each feature's
maximum over the crop's patches lying at least half inside the brain (``pooling="max"``, the WP1
global max embedding, ``ml.foundation.model.Embeddings.peak``, read from a crop as wide as the
brain; on the external site it scored below the lesion mean, docs/results.md 2026-12-04), or the
mean of all the crop's tokens (``pooling="mean"``, version 1).

Modes:

* ``"finetune"``: encoder and head trained together by the shared loop
  (:class:`ml.classify.training.DeepClassifier`: same augmentations, loss, early stopping as the
  scratch CNN), the encoder at ``lr * encoder_lr_mult`` (a smaller step keeps the pretrained
  features; Howard & Ruder, ACL 2018 "discriminative fine-tuning").
* ``"probe"``: the encoder frozen; pooled embeddings of the un-augmented crops feed an L2 logistic
  regression (standardised features) whose ``C`` is chosen by stratified inner CV on the training
  cases only (AUC); the scaler and regression are folded into the linear head, so the probe is a
  torch module like the fine-tuned one (same explanations, same persistence).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ml.classify.training import DeepClassifier, check_labels

if TYPE_CHECKING:
    from ml.foundation.data import ExamStack

__all__ = ["HEAD_INITS", "MODES", "POOLINGS", "POOLING_MASKS", "FoundationClassifier", "EncoderClassifierNet"]

MODES: tuple[str, ...] = ("finetune", "probe")
#: How fine-tuning starts its head: ``"random"`` (a fresh linear layer) or ``"probe"`` (the linear probe's
#: solution on the frozen encoder, then everything fine-tuned: LP-FT, Kumar et al., ICLR 2022).
HEAD_INITS: tuple[str, ...] = ("random", "probe")
#: How the head pools the encoder's tokens (:class:`EncoderClassifierNet`).
POOLINGS: tuple[str, ...] = ("lesion", "max", "mean")
#: The mask each pooling reads from the crop's last channel (``mean`` reads none).
POOLING_MASKS: dict[str, str] = {"lesion": "tumor", "max": "brain"}
_PROBE_CS = tuple(float(c) for c in np.logspace(-3, 2, 6))


class EncoderClassifierNet(nn.Module):
    """Encoder + dropout + linear head: ``(x (B, C, D, H, W), origin_mm (B, 3)) -> logits (B,)``.

    ``pooling="mean"``: the head reads the mean of all the crop's tokens. ``pooling="lesion"``: the
    last channel of ``x`` is the tumour mask (0/1), not an image: the encoder sees the other
    channels, and the head reads the mean of the tokens weighted by the share of each patch inside
    the mask (the mean of all tokens when the mask is empty), as ``ml.foundation.probe``'s lesion
    embedding does. ``pooling="max"``: the last channel is the brain mask, and the head reads each
    feature's maximum over the patches at least half inside it (those it touches when none is;
    every patch when the mask is empty), as the WP1 global max embedding does.
    ``explained_channels``: the channels of ``x`` an attribution map sums (the images, not the mask).
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, dropout: float = 0.0, *, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: one of {POOLINGS}, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, 1)
        in_channels = int(encoder.config.in_channels)
        self.explained_channels = in_channels if pooling in POOLING_MASKS else None

    def pooled(self, x: torch.Tensor, origin_mm: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled embedding (B, E)."""
        if self.pooling == "mean":
            return self.encoder(x, origin_mm).pooled
        image, mask = x[:, :-1], x[:, -1:]
        out = self.encoder(image, origin_mm)
        p = int(self.encoder.config.patch_size)
        share = nn.functional.avg_pool3d(mask.clamp(0, 1), p).flatten(1)  # (B, N), token order (d, h, w)
        if self.pooling == "max":
            inside = share >= 0.5
            inside = torch.where(inside.any(dim=1, keepdim=True), inside, share > 0)
            inside = torch.where(inside.any(dim=1, keepdim=True), inside, torch.ones_like(inside))
            return out.tokens.masked_fill(~inside[:, :, None], float("-inf")).amax(dim=1)
        total = share.sum(dim=1, keepdim=True)
        weights = torch.where(total > 0, share / total.clamp_min(1e-12), torch.full_like(share, 1.0 / share.shape[1]))
        return (out.tokens * weights[:, :, None]).sum(dim=1)

    def forward(self, x: torch.Tensor, origin_mm: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,)."""
        return self.head(self.dropout(self.pooled(x, origin_mm))).reshape(-1)


class FoundationClassifier(DeepClassifier):
    """Foundation encoder + linear head (module docstring); sklearn estimator API.

    Args:
        encoder_path: WP1 encoder checkpoint (``.pt`` of :func:`ml.foundation.model.save_encoder`);
            ``None``: a random encoder with ``EncoderConfig(img_size=crop, voxel_mm=<the data's>)``.
        mode: ``"finetune"`` or ``"probe"``.
        encoder_lr_mult: encoder learning rate / head learning rate (fine-tuning).
        dropout: dropout before the head (fine-tuning).
        head_init: fine-tuning's start (:data:`HEAD_INITS`): the linear probe's head (default; LP-FT: a
            fine-tuned encoder drifts less from its pretrained features when the head is already right;
            on the external site 0.72 vs 0.55 AUC at 25 % of the labels, docs/results.md) or a random one.
        pooling: ``"lesion"`` (tokens weighted by the tumour mask; the mean of all tokens for an exam
            without a tumour mask), ``"max"`` (each feature's maximum over the crop's patches inside
            the brain mask; use a crop as wide as the brain, 48 at 4 mm) or ``"mean"`` (all the crop's
            tokens, the version-1 behaviour).
        **kwargs: the training options of :class:`~ml.classify.training.DeepClassifier`.

    Attributes:
        encoder_config_: the encoder's configuration (dict). probe_C_: the regularisation chosen
        by the inner CV (probe). probe_inner_auc_: its inner-CV AUC.
    """

    def __init__(self, *, encoder_path: str | None = None, mode: str = "finetune", encoder_lr_mult: float = 0.1,
                 dropout: float = 0.1, pooling: str = "lesion", head_init: str = "probe", crop: int = 48,
                 epochs: int = 30, batch_size: int = 8, lr: float = 1e-3,
                 weight_decay: float = 1e-4, augment: bool = True, patience: int = 8, min_steps: int = 0,
                 device: str = "cpu",
                 random_state: int = 0, verbose: bool = False) -> None:
        super().__init__(crop=crop, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         augment=augment, patience=patience, min_steps=min_steps, device=device,
                         random_state=random_state,
                         verbose=verbose)
        self.encoder_path = encoder_path
        self.mode = mode
        self.encoder_lr_mult = encoder_lr_mult
        self.dropout = dropout
        self.pooling = pooling
        self.head_init = head_init

    # --- inputs -------------------------------------------------------------------------------
    def _input_image(self, stack: ExamStack) -> np.ndarray:
        """The stack's channels, and with lesion (max) pooling its tumour (brain) mask as one more
        channel (zeros without a mask: then the head pools every token)."""
        image = np.asarray(stack.image, dtype=np.float32)
        if self.pooling not in POOLING_MASKS:
            return image
        name = POOLING_MASKS[self.pooling]
        found = (stack.masks or {}).get(name)
        mask = (np.asarray(found) > 0).astype(np.float32) if found is not None else np.zeros(image.shape[1:], np.float32)
        if mask.shape != image.shape[1:]:
            raise ValueError(f"stack {getattr(stack, 'key', '?')!r}: {name} mask {mask.shape} does not match the "
                             f"image grid {image.shape[1:]}")
        return np.concatenate([image, mask[None]])

    @property
    def _intensity_channels(self) -> int | None:  # the mask channel is shifted and mirrored, never scaled
        return -1 if self.pooling in POOLING_MASKS else None

    # --- network ------------------------------------------------------------------------------
    def _load_encoder(self, in_channels: int, voxel_mm: float | None) -> nn.Module:
        from ml.foundation.model import EncoderConfig, FoundationEncoder, load_encoder

        restored = getattr(self, "_restored_encoder_config", None)
        if restored is not None:
            return FoundationEncoder(EncoderConfig.from_dict(restored))
        if self.encoder_path is not None:
            encoder, _ = load_encoder(Path(self.encoder_path), map_location="cpu")
        else:
            torch.manual_seed(self.random_state)
            encoder = FoundationEncoder(EncoderConfig(in_channels=in_channels, img_size=(self.crop,) * 3,
                                                      voxel_mm=voxel_mm or 4.0))
        cfg = encoder.config
        if cfg.in_channels != in_channels:
            raise ValueError(f"encoder {self.encoder_path}: {cfg.in_channels} input channels, the stacks have "
                             f"{in_channels}")
        if voxel_mm is not None and abs(cfg.voxel_mm - voxel_mm) > 1e-6:
            raise ValueError(f"encoder {self.encoder_path}: trained at {cfg.voxel_mm:g} mm, the stacks are at "
                             f"{voxel_mm:g} mm")
        if self.crop % cfg.patch_size:
            raise ValueError(f"crop: {self.crop} is not divisible by the encoder's patch size {cfg.patch_size}")
        return encoder

    def _build_network(self, in_channels: int) -> nn.Module:
        """``in_channels``: the channels of the crops (the mask channel included with lesion pooling)."""
        warm = getattr(self, "_warm_network", None)
        if warm is not None:  # LP-FT: the linear probe's network, its encoder unfrozen for fine-tuning
            for p in warm.encoder.parameters():
                p.requires_grad_(True)
            warm.dropout.p = self.dropout
            return warm
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: one of {POOLINGS}, got {self.pooling!r}")
        image_channels = in_channels - 1 if self.pooling in POOLING_MASKS else in_channels
        encoder = self._load_encoder(image_channels, getattr(self, "_voxel_mm", None))
        self.encoder_config_ = encoder.config.to_dict()
        net = EncoderClassifierNet(encoder, encoder.config.hidden_size,
                                   dropout=self.dropout if self.mode == "finetune" else 0.0, pooling=self.pooling)
        if self.mode == "probe":
            for p in net.encoder.parameters():
                p.requires_grad_(False)
        return net

    def _param_groups(self, network: nn.Module) -> list[dict[str, Any]]:
        return [
            {"params": [p for p in network.encoder.parameters() if p.requires_grad],
             "lr": self.lr * self.encoder_lr_mult},
            {"params": list(network.head.parameters()), "lr": self.lr},
        ]

    def _extra_state(self) -> dict[str, Any]:
        return {"encoder_config": self.encoder_config_,
                "probe_C": getattr(self, "probe_C_", None)}

    @classmethod
    def from_state(cls, payload: dict[str, Any], *, device: str = "cpu") -> FoundationClassifier:
        """:meth:`DeepClassifier.from_state`; a version saved before ``pooling`` existed pooled the mean."""
        payload = dict(payload) | {"params": {"pooling": "mean", **dict(payload.get("params") or {})}}
        return super().from_state(payload, device=device)

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        self._restored_encoder_config = extra.get("encoder_config")
        if extra.get("probe_C") is not None:
            self.probe_C_ = extra["probe_C"]

    # --- training -----------------------------------------------------------------------------
    def fit(self, X: Sequence[ExamStack], y: Any, *, X_val: Sequence[ExamStack] | None = None,
            y_val: Any = None) -> FoundationClassifier:
        """Fine-tune (validation data: early stopping) or linear-probe (validation data unused).

        Raises:
            ValueError: unknown mode, encoder/data mismatch, one class in ``y``.
        """
        if self.mode not in MODES:
            raise ValueError(f"mode: one of {MODES}, got {self.mode!r}")
        if self.encoder_lr_mult < 0:
            raise ValueError(f"encoder_lr_mult: must be >= 0, got {self.encoder_lr_mult}")
        if len(X) == 0:
            raise ValueError("X: no training stack")
        self._voxel_mm = float(X[0].voxel_mm) if hasattr(X[0], "voxel_mm") else float(abs(X[0].affine[0, 0]))
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init: one of {HEAD_INITS}, got {self.head_init!r}")
        if self.mode == "probe":
            return self._fit_probe(X, y)
        if self.head_init == "probe":  # LP-FT: the probe's head first, then everything fine-tuned from it
            self._fit_probe(X, y)
            self._warm_network = self.network_
        try:
            return super().fit(X, y, X_val=X_val, y_val=y_val)
        finally:
            self._warm_network = None

    def embed(self, X: Sequence[ExamStack], network: nn.Module | None = None) -> np.ndarray:
        """Pooled embeddings (N, E) of the un-augmented crops."""
        net = network if network is not None else self.network_
        net.eval()
        crops, origins = self._crops(X)
        out = []
        with torch.no_grad():
            for i in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(crops[i:i + self.batch_size]).to(self.device)
                o = torch.from_numpy(origins[i:i + self.batch_size].astype(np.float32)).to(self.device)
                out.append(net.pooled(x, o).float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def _fit_probe(self, X: Sequence[ExamStack], y: Any) -> FoundationClassifier:
        import time
        self._validate()
        yy = check_labels(X, y)
        if yy.min() == yy.max():
            raise ValueError("y: training labels hold one class only")
        t0 = time.perf_counter()
        in_channels = int(self._input_image(X[0]).shape[0])
        network = self._build_network(in_channels).to(self.device)
        emb = self.embed(X, network)
        n_min = int(min(yy.sum(), (1 - yy).sum()))
        pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        if n_min >= 2:
            inner = StratifiedKFold(min(3, n_min), shuffle=True, random_state=self.random_state)
            search = GridSearchCV(pipe, {"logisticregression__C": list(_PROBE_CS)}, cv=inner,
                                  scoring="roc_auc", refit=True, n_jobs=1).fit(emb, yy)
            best, c_best, inner_auc = search.best_estimator_, search.best_params_["logisticregression__C"], \
                float(search.best_score_)
        else:
            best, c_best, inner_auc = pipe.fit(emb, yy), 1.0, float("nan")
        scaler, lr = best.named_steps["standardscaler"], best.named_steps["logisticregression"]
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        w = lr.coef_[0] / scale
        b = float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scale))
        with torch.no_grad():
            network.head.weight.copy_(torch.from_numpy(w[None].astype(np.float32)))
            network.head.bias.fill_(b)
        network.eval()
        self.network_ = network
        self.probe_C_ = float(c_best)
        self.probe_inner_auc_ = inner_auc
        self.history_ = [{"C": float(c_best), "inner_auc": inner_auc}]
        self.best_epoch_ = 0
        self.in_channels_ = in_channels
        self.n_train_ = len(X)
        self.classes_ = np.array([0, 1])
        self.train_seconds_ = time.perf_counter() - t0
        return self
