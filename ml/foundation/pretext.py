"""Self-supervised pretext tasks trained at once: masked inpainting, cross-modal prediction, contrast.

One training step sees two augmented views of each exam (two random crops of the same stack,
different intensity jitter; see ml.foundation.train):

* **Masked inpainting (MAE)**: view 1 with ``mask_ratio`` of its patches hidden; the encoder sees
  only the visible tokens, a light transformer decoder (mask tokens at the hidden positions, its own
  position embedding of the patch centres' mm) predicts every voxel of every channel; the loss is
  the mean squared error on the hidden patches.
* **Cross-modal prediction**: view 2 with a whole modality hidden, MRI (T1c, FLAIR) for half the
  exams of the batch and PET (the three SUV channels) for the other half; the encoder sees the other
  modality (optionally with ``crossmodal_mask_ratio`` of its patches hidden too, which makes the pass
  cheaper), the same decoder predicts all channels; the loss is the mean squared error on the hidden
  channels, all patches.
* **Contrastive (NT-Xent / InfoNCE)**: the pooled embeddings of the two passes (or, with
  ``contrastive_view="masked"``, of pass 1 and a third pass over view 2 with every modality and
  ``contrastive_mask_ratio`` of its patches hidden), through a projection MLP, are pulled together
  for the same exam and pushed apart from the other exams of the batch (temperature
  ``temperature``). The two views differ by crop, intensity jitter, which patches are
  visible and which modality is present, so the global embedding must carry what PET and MRI of
  one exam share (where and what the lesion is) rather than the crop.

* **Patch statistics** (off unless ``weight_patchstats`` > 0): a linear head on each *visible*
  token of the inpainting pass predicts its own patch's mean and maximum of every channel (the
  statistics of the voxels the token was made from, standardised over the batch's patches); the
  loss is their mean squared error. Inpainting's voxel-wise error is dominated by the bulk of the
  brain, and a lesion embedding of the encoder that it trains carried little of the lesion's
  peak uptake (R^2 0.31 for log TBR max, docs/foundation.md), the quantity every clinical rule
  reads; this task asks each token to say how hot and how bright its patch is (hand-crafted
  targets as in MaskFeat, Wei et al., CVPR 2022).

The weights (``weight_inpainting``, ``weight_crossmodal``, ``weight_contrastive``,
``weight_patchstats``) set the sum;
a task of weight 0 is not computed (a pass no task needs is skipped).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.foundation.model import (
    EncoderConfig,
    FoundationEncoder,
    FourierPositionEmbedding,
    transformer_block,
)

__all__ = [
    "MRI_CHANNELS",
    "PET_CHANNELS",
    "PretextConfig",
    "PretextDecoder",
    "PretrainModel",
    "patchify",
    "unpatchify",
    "random_keep",
    "nt_xent",
    "contrastive_chance",
    "contrastive_at_chance",
]

#: Input channel indices of each modality (ml.foundation.data.CHANNELS order).
MRI_CHANNELS: tuple[int, ...] = (0, 1)
PET_CHANNELS: tuple[int, ...] = (2, 3, 4)
TASKS: tuple[str, ...] = ("inpainting", "crossmodal", "contrastive", "patchstats")
#: What the contrastive loss compares the inpainting view with (PretextConfig.contrastive_view).
CONTRASTIVE_VIEWS: tuple[str, ...] = ("crossmodal", "masked")


@dataclass
class PretextConfig:
    """Pretext tasks and heads (yaml-serialisable with ``asdict``).

    Attributes:
        weight_inpainting, weight_crossmodal, weight_contrastive, weight_patchstats: loss weights (0
            switches a task off; patch statistics are off by default, so older configs train as before).
        mask_ratio: fraction of patches hidden in the inpainting view.
        crossmodal_mask_ratio: fraction of patches also hidden in the cross-modal view (0: none).
        decoder_hidden_size, decoder_layers, decoder_heads, decoder_mlp_dim: the light decoder.
        proj_dim: output of the contrastive projection head.
        temperature: NT-Xent temperature.
        contrastive_view: what the inpainting view's embedding is contrasted with: ``"crossmodal"``
            (the cross-modal pass: one modality, ``crossmodal_mask_ratio`` hidden) or ``"masked"``
            (a third pass over view 2 with every modality and ``contrastive_mask_ratio`` of its
            patches hidden: ~40 % more compute per step). Against the cross-modal pass the loss
            stayed at or near chance in every run checked; against the masked view it learns
            (docs/foundation.md).
        contrastive_mask_ratio: fraction of patches hidden in the ``"masked"`` contrastive view.
    """

    weight_inpainting: float = 1.0
    weight_crossmodal: float = 1.0
    weight_contrastive: float = 0.1
    mask_ratio: float = 0.75
    crossmodal_mask_ratio: float = 0.5
    decoder_hidden_size: int = 96
    decoder_layers: int = 2
    decoder_heads: int = 4
    decoder_mlp_dim: int = 384
    proj_dim: int = 128
    temperature: float = 0.1
    contrastive_view: str = "crossmodal"
    contrastive_mask_ratio: float = 0.5
    weight_patchstats: float = 0.0

    def __post_init__(self) -> None:
        for name in ("weight_inpainting", "weight_crossmodal", "weight_contrastive", "weight_patchstats"):
            if getattr(self, name) < 0:
                raise ValueError(f"PretextConfig.{name} must be >= 0, got {getattr(self, name)}")
        if sum(self.weights().values()) <= 0:
            raise ValueError("PretextConfig: all task weights are 0, nothing to train")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"PretextConfig.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0 <= self.crossmodal_mask_ratio < 1:
            raise ValueError(f"PretextConfig.crossmodal_mask_ratio must be in [0, 1), got "
                             f"{self.crossmodal_mask_ratio}")
        if self.decoder_hidden_size % self.decoder_heads:
            raise ValueError(f"PretextConfig: decoder_hidden_size {self.decoder_hidden_size} is not "
                             f"divisible by decoder_heads {self.decoder_heads}")
        if self.temperature <= 0:
            raise ValueError(f"PretextConfig.temperature must be positive, got {self.temperature}")
        if self.contrastive_view not in CONTRASTIVE_VIEWS:
            raise ValueError(f"PretextConfig.contrastive_view must be one of {CONTRASTIVE_VIEWS}, got "
                             f"{self.contrastive_view!r}")
        if not 0 <= self.contrastive_mask_ratio < 1:
            raise ValueError(f"PretextConfig.contrastive_mask_ratio must be in [0, 1), got "
                             f"{self.contrastive_mask_ratio}")

    def weights(self) -> dict[str, float]:
        """Task -> weight."""
        return {"inpainting": self.weight_inpainting, "crossmodal": self.weight_crossmodal,
                "contrastive": self.weight_contrastive, "patchstats": self.weight_patchstats}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretextConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"PretextConfig: unknown keys {sorted(unknown)} (known: {sorted(names)})")
        return cls(**data)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, N, p^3, C), tokens in the encoder's order (d, h, w row-major)."""
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // patch, patch, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, (d // patch) * (h // patch) * (w // patch), patch ** 3, c)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch: int) -> torch.Tensor:
    """(B, N, p^3, C) -> (B, C, D, H, W); the inverse of :func:`patchify`."""
    b, _, _, c = tokens.shape
    gd, gh, gw = grid
    x = tokens.reshape(b, gd, gh, gw, patch, patch, patch, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, c, gd * patch, gh * patch, gw * patch)


def random_keep(batch: int, num_tokens: int, mask_ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random visible tokens for MAE.

    Returns:
        ``keep_idx`` (B, n) indices of the visible tokens (n = round(N (1 - ratio)), at least 1) and
        ``masked`` (B, N) bool, True where a token is hidden.
    """
    n_keep = max(1, int(round(num_tokens * (1.0 - mask_ratio))))
    noise = torch.rand(batch, num_tokens, generator=generator)
    keep_idx = noise.argsort(dim=1)[:, :n_keep]
    masked = torch.ones(batch, num_tokens, dtype=torch.bool)
    masked.scatter_(1, keep_idx, False)
    return keep_idx.to(device), masked.to(device)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR) loss between two batches of embeddings (B, P); positives are the pairs (i, i)."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def contrastive_chance(batch_size: int) -> float:
    """The :func:`nt_xent` loss of embeddings that tell the exams of a batch apart no better than
    chance: ``log(2B - 1)`` (each view's positive is one of the 2B - 1 other views). A contrastive
    loss that ends near it has not learned (docs/foundation.md)."""
    if batch_size < 2:
        raise ValueError(f"batch_size: the contrastive loss needs at least 2 exams per batch, got {batch_size}")
    return math.log(2 * batch_size - 1)


def contrastive_at_chance(loss: float, batch_size: int) -> bool:
    """Whether a (last epoch's) contrastive loss is within 2 % of :func:`contrastive_chance`: the
    runs that ended there (2.705-2.708 of 2.708) had pooled embeddings that told no exam apart,
    one that ended at 2.63 had begun to."""
    return bool(loss >= 0.98 * contrastive_chance(batch_size))


class PretextDecoder(nn.Module):
    """Light transformer decoder from (visible) encoder tokens to voxels of all channels.

    Args:
        encoder_config: the encoder's config (token width, patch, channels, voxel size).
        config: the pretext config (decoder width, depth, heads).
    """

    def __init__(self, encoder_config: EncoderConfig, config: PretextConfig):
        super().__init__()
        e, d = encoder_config.hidden_size, config.decoder_hidden_size
        self.patch = encoder_config.patch_size
        self.channels = encoder_config.in_channels
        self.embed = nn.Linear(e, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.mask_token, std=0.02)
        min_wl = encoder_config.pos_min_wavelength_mm or 2.0 * encoder_config.patch_size * encoder_config.voxel_mm
        self.pos_embed = FourierPositionEmbedding(d, encoder_config.pos_num_freqs, min_wl,
                                                  encoder_config.pos_max_wavelength_mm)
        self.blocks = nn.ModuleList([
            transformer_block(d, config.decoder_mlp_dim, config.decoder_heads)
            for _ in range(config.decoder_layers)
        ])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.patch ** 3 * self.channels)

    def forward(self, tokens: torch.Tensor, keep_idx: torch.Tensor | None, centres_mm: torch.Tensor) -> torch.Tensor:
        """Predict every patch.

        Args:
            tokens: (B, n, E) encoder output (visible tokens, or all N when ``keep_idx`` is None).
            keep_idx: (B, n) positions of ``tokens`` among the N patches, or ``None``.
            centres_mm: (B, N, 3) MNI mm of the patch centres.

        Returns:
            (B, N, p^3, C) predicted voxels.
        """
        b, n_all = centres_mm.shape[:2]
        x = self.embed(tokens)
        if keep_idx is not None:
            full = self.mask_token.to(x.dtype).expand(b, n_all, -1).clone()
            full.scatter_(1, keep_idx[:, :, None].expand(-1, -1, x.shape[2]), x)
            x = full
        x = x + self.pos_embed(centres_mm).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        out = self.head(self.norm(x))
        return out.reshape(b, n_all, self.patch ** 3, self.channels)


class PretrainModel(nn.Module):
    """Encoder + decoder + projection head; :meth:`forward` returns the weighted pretext losses.

    Args:
        encoder_config: the encoder's hyper-parameters.
        config: the pretext tasks.
    """

    def __init__(self, encoder_config: EncoderConfig, config: PretextConfig):
        super().__init__()
        if encoder_config.in_channels != len(MRI_CHANNELS) + len(PET_CHANNELS) and config.weight_crossmodal > 0:
            raise ValueError(f"cross-modal prediction needs the {len(MRI_CHANNELS) + len(PET_CHANNELS)} channels "
                             f"of ml.foundation.data.CHANNELS, the encoder has {encoder_config.in_channels}")
        self.config = config
        self.encoder = FoundationEncoder(encoder_config)
        self.decoder = PretextDecoder(encoder_config, config)
        e = encoder_config.hidden_size
        # SimCLR-style head; the BatchNorm centres the batch, removing the component that all exams'
        # pooled embeddings share (without it the loss sat at log(2B - 1), chance, on the cohort).
        # Batch statistics only (the head is used in training only): no running buffers that would
        # differ between DDP ranks.
        self.projector = nn.Sequential(nn.Linear(e, e), nn.BatchNorm1d(e, track_running_stats=False), nn.GELU(),
                                       nn.Linear(e, config.proj_dim))
        # per visible token: its patch's mean and max of every channel (only when the task is on, so
        # checkpoints of configs without it keep their state-dict keys)
        self.stats_head = nn.Linear(e, 2 * encoder_config.in_channels) if config.weight_patchstats > 0 else None

    def _modality_mask(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """(B, C) bool channel availability: alternately MRI or PET hidden, random start."""
        c = self.encoder.config.in_channels
        start = int(torch.randint(0, 2, (1,), generator=generator))
        avail = torch.ones(batch, c, dtype=torch.bool)
        for i in range(batch):
            hidden = MRI_CHANNELS if (i + start) % 2 == 0 else PET_CHANNELS
            avail[i, list(hidden)] = False
        return avail.to(device)

    def patch_stats(self, view: torch.Tensor) -> torch.Tensor:
        """(B, N, 2C): each patch's mean then max of every channel, standardised over the batch's
        patches (per statistic; the target of the patch-statistics task)."""
        patches = patchify(view.float(), self.encoder.config.patch_size)  # (B, N, p^3, C)
        stats = torch.cat([patches.mean(dim=2), patches.amax(dim=2)], dim=-1)
        flat = stats.reshape(-1, stats.shape[-1])
        return (stats - flat.mean(dim=0)) / flat.std(dim=0).clamp_min(1e-6)

    def _patchstats_loss(self, view: torch.Tensor, keep_idx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        target = self.patch_stats(view)
        target = torch.gather(target, 1, keep_idx[:, :, None].expand(-1, -1, target.shape[-1]))
        pred = self.stats_head(tokens)
        return (pred.float() - target).pow(2).mean()

    def forward(self, view1: torch.Tensor, origin1: torch.Tensor, view2: torch.Tensor | None = None,
                origin2: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Pretext losses of one batch.

        Args:
            view1, view2: (B, C, D, H, W) two augmented crops of the same exams (``view2`` may be
                ``None`` when neither cross-modal nor contrastive task is on).
            origin1, origin2: (B, 3) MNI mm of each crop's first voxel.
            generator: CPU random generator of the masks (reproducible runs).

        Returns:
            ``{"loss": weighted sum, "inpainting": ..., "crossmodal": ..., "contrastive": ...,
            "patchstats": ...}``
            (scalar tensors; a task of weight 0 is absent).
        """
        cfg = self.config
        weights = cfg.weights()
        enc = self.encoder
        patch = enc.config.patch_size
        b = view1.shape[0]
        device = view1.device
        losses: dict[str, torch.Tensor] = {}
        contrast_masked = weights["contrastive"] > 0 and cfg.contrastive_view == "masked"
        need_pass2 = weights["crossmodal"] > 0 or (weights["contrastive"] > 0 and not contrast_masked)
        if (need_pass2 or contrast_masked) and (view2 is None or origin2 is None):
            raise ValueError("PretrainModel: cross-modal and contrastive tasks need a second view")
        # pass 1: MAE on view 1
        n_tokens = math.prod(s // patch for s in view1.shape[2:])
        keep1, masked1 = random_keep(b, n_tokens, cfg.mask_ratio, generator, device)
        out1 = enc(view1, origin1, keep_idx=keep1)
        grid = out1.grid_size
        pooled = [out1.pooled]
        if weights["inpainting"] > 0:
            centres = enc.patch_centres_mm(grid, origin1)
            pred = self.decoder(out1.tokens, keep1, centres)
            target = patchify(view1, patch)
            err = (pred.float() - target.float()).pow(2).mean(dim=(2, 3))  # (B, N)
            losses["inpainting"] = (err * masked1).sum() / masked1.sum().clamp(min=1)
        if weights["patchstats"] > 0:
            assert self.stats_head is not None
            losses["patchstats"] = self._patchstats_loss(view1, keep1, out1.tokens)
        if need_pass2:
            assert view2 is not None and origin2 is not None
            avail = self._modality_mask(b, generator, device) if weights["crossmodal"] > 0 else None
            keep2 = None
            if cfg.crossmodal_mask_ratio > 0:
                keep2, _ = random_keep(b, math.prod(grid), cfg.crossmodal_mask_ratio, generator, device)
            out2 = enc(view2, origin2, keep_idx=keep2, channel_mask=avail)
            pooled.append(out2.pooled)
            if weights["crossmodal"] > 0:
                assert avail is not None
                centres = enc.patch_centres_mm(grid, origin2)
                pred = self.decoder(out2.tokens, keep2, centres)
                target = patchify(view2, patch)
                hidden = (~avail).float()[:, None, None, :]  # (B, 1, 1, C)
                err = (pred.float() - target.float()).pow(2) * hidden
                losses["crossmodal"] = err.sum() / (hidden.sum() * pred.shape[1] * pred.shape[2]).clamp(min=1)
        if weights["contrastive"] > 0:
            if b < 2:
                raise ValueError("PretrainModel: the contrastive loss needs at least 2 exams per batch")
            if contrast_masked:  # pass 3: view 2, every modality, some patches hidden
                assert view2 is not None and origin2 is not None
                keep3 = None
                if cfg.contrastive_mask_ratio > 0:
                    keep3, _ = random_keep(b, math.prod(grid), cfg.contrastive_mask_ratio, generator, device)
                pooled.append(enc(view2, origin2, keep_idx=keep3).pooled)
            z1, z2 = self.projector(pooled[0]), self.projector(pooled[-1])
            losses["contrastive"] = nt_xent(z1, z2, cfg.temperature)
        total = sum(weights[k] * v for k, v in losses.items())
        return {"loss": total, **losses}
