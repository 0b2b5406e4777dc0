"""The foundation encoder: a 3D vision transformer over PET + MRI channel stacks.

Architecture (see docs/foundation.md for the reasons): a strided convolution embeds
``patch_size``^3 voxels per token (the projection of MONAI's ``PatchEmbeddingBlock``, whose position
table is tied to one crop size and so is not used), followed by ``num_layers`` MONAI
:class:`~monai.networks.blocks.TransformerBlock` (pre-norm, fused scaled-dot-product attention) and a
final LayerNorm. There is no class token: the global embedding is the mean of the output tokens.

Position embedding in common-grid coordinates: every token gets a learned linear map of fixed
Fourier features (sin/cos at ``pos_num_freqs`` geometric frequencies per axis) of the MNI mm of its
patch centre. A crop therefore "knows" where in the brain it lies, crops of any size and position on
the grid share one embedding, and sliding-window encoding of a whole exam needs no interpolation.

Masked modelling: ``forward(x, keep_idx=...)`` embeds only the visible tokens (MAE), so masking 75 %
of the patches runs the transformer on a quarter of the tokens. ``channel_mask`` zeroes whole input
channels (cross-modal pretext task) and adds a learned "channel missing" embedding per absent channel.

:func:`encode` turns an :class:`~ml.foundation.data.ExamStack` into :class:`Embeddings` (a grid of
patch embeddings with the affine of the patch centres, and a pooled vector) by sliding windows.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.networks.blocks import TransformerBlock
from torch import nn

if TYPE_CHECKING:
    from ml.foundation.data import ExamStack

__all__ = [
    "CHECKPOINT_FORMAT",
    "EncoderConfig",
    "EncoderOutput",
    "FoundationEncoder",
    "Embeddings",
    "default_origin_mm",
    "encode",
    "load_encoder",
    "save_encoder",
    "file_sha256",
    "transformer_block",
]

#: ``format`` key of the checkpoints written by :func:`save_encoder` and ml.foundation.train.
CHECKPOINT_FORMAT = "aminopet-foundation/1"
#: Centre of the common grid's bounding box (MNI mm): where a crop without origin is assumed to lie.
GRID_CENTRE_MM = (0.0, -20.0, 18.0)


@dataclass
class EncoderConfig:
    """Hyper-parameters of :class:`FoundationEncoder` (yaml-serialisable with ``asdict``).

    Attributes:
        in_channels: input channels (``len(ml.foundation.data.CHANNELS)``).
        img_size: training crop (voxels); the encoder accepts any size divisible by ``patch_size``.
        patch_size: patch edge (voxels).
        hidden_size: token width E.
        mlp_dim: width of the transformer MLPs.
        num_layers: transformer blocks.
        num_heads: attention heads (divides ``hidden_size``).
        dropout_rate: dropout in the blocks.
        qkv_bias: bias in the attention projections.
        voxel_mm: voxel edge of the common grid the model works on (2 or 4 mm).
        pos_num_freqs: Fourier frequencies per axis of the position embedding.
        pos_min_wavelength_mm: shortest wavelength (mm); default two patches at ``voxel_mm``.
        pos_max_wavelength_mm: longest wavelength (mm), about twice the brain's extent.
    """

    in_channels: int = 5
    img_size: tuple[int, int, int] = (48, 48, 48)
    patch_size: int = 8
    hidden_size: int = 192
    mlp_dim: int = 768
    num_layers: int = 6
    num_heads: int = 6
    dropout_rate: float = 0.0
    qkv_bias: bool = True
    voxel_mm: float = 4.0
    pos_num_freqs: int = 16
    pos_min_wavelength_mm: float | None = None
    pos_max_wavelength_mm: float = 512.0

    def __post_init__(self) -> None:
        self.img_size = tuple(int(s) for s in (
            self.img_size if isinstance(self.img_size, Sequence) else (self.img_size,) * 3))
        if len(self.img_size) != 3:
            raise ValueError(f"EncoderConfig.img_size: expected 3 sizes, got {self.img_size}")
        if self.in_channels < 1:
            raise ValueError(f"EncoderConfig.in_channels must be >= 1, got {self.in_channels}")
        if self.patch_size < 1 or any(s % self.patch_size for s in self.img_size):
            raise ValueError(f"EncoderConfig: img_size {self.img_size} is not divisible by "
                             f"patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"EncoderConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.voxel_mm <= 0:
            raise ValueError(f"EncoderConfig.voxel_mm must be positive, got {self.voxel_mm}")
        if self.pos_num_freqs < 1:
            raise ValueError(f"EncoderConfig.pos_num_freqs must be >= 1, got {self.pos_num_freqs}")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Tokens per axis of a training crop."""
        return tuple(s // self.patch_size for s in self.img_size)  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        """Tokens of a training crop."""
        return int(np.prod(self.grid_size))

    def to_dict(self) -> dict[str, Any]:
        """Plain, yaml-safe dict (tuples as lists)."""
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Build from a dict; unknown keys are a ValueError (typos do not pass silently)."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"EncoderConfig: unknown keys {sorted(unknown)} (known: {sorted(names)})")
        return cls(**data)


@dataclass
class EncoderOutput:
    """What :meth:`FoundationEncoder.forward` returns.

    Attributes:
        tokens: (B, N, E) output tokens (after the final norm); N = visible tokens under ``keep_idx``.
        pooled: (B, E) mean of ``tokens``.
        patches: (B, E, d, h, w) the tokens on the patch grid; ``None`` under ``keep_idx``.
        grid_size: (d, h, w) patch grid of the input.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    patches: torch.Tensor | None
    grid_size: tuple[int, int, int] = field(default=(0, 0, 0))


def default_origin_mm(size: Sequence[int], voxel_mm: float) -> np.ndarray:
    """MNI mm of the first voxel of a crop of ``size`` voxels centred on the common grid, (3,)."""
    centre = np.asarray(GRID_CENTRE_MM, dtype=np.float64)
    return centre - (np.asarray(size, dtype=np.float64) - 1) / 2.0 * voxel_mm


def transformer_block(hidden_size: int, mlp_dim: int, num_heads: int, *, dropout_rate: float = 0.0,
                      qkv_bias: bool = True) -> TransformerBlock:
    """A MONAI pre-norm transformer block with fused attention (``F.scaled_dot_product_attention``).

    MONAI builds a cross-attention LayerNorm even without cross-attention; it is frozen here so that
    every trainable parameter gets a gradient (DistributedDataParallel requires it).
    """
    block = TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate=dropout_rate, qkv_bias=qkv_bias,
                             use_flash_attention=True)
    if not block.with_cross_attention and hasattr(block, "norm_cross_attn"):
        block.norm_cross_attn.requires_grad_(False)
    return block


class FourierPositionEmbedding(nn.Module):
    """Learned linear map of fixed sin/cos features of MNI mm coordinates.

    Args:
        hidden_size: output width E.
        num_freqs: frequencies per axis (geometric between the two wavelengths).
        min_wavelength_mm, max_wavelength_mm: wavelength range (mm).
    """

    def __init__(self, hidden_size: int, num_freqs: int, min_wavelength_mm: float, max_wavelength_mm: float):
        super().__init__()
        if not 0 < min_wavelength_mm < max_wavelength_mm:
            raise ValueError(f"position embedding: need 0 < min wavelength ({min_wavelength_mm}) < "
                             f"max wavelength ({max_wavelength_mm})")
        wavelengths = torch.logspace(math.log10(min_wavelength_mm), math.log10(max_wavelength_mm), num_freqs)
        self.register_buffer("omega", (2 * math.pi / wavelengths).float(), persistent=False)
        self.proj = nn.Linear(6 * num_freqs, hidden_size)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def features(self, coords_mm: torch.Tensor) -> torch.Tensor:
        """(..., 3) mm -> (..., 6 F) fixed sin/cos features."""
        angles = coords_mm.float().unsqueeze(-1) * self.omega  # (..., 3, F)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)

    def forward(self, coords_mm: torch.Tensor) -> torch.Tensor:
        """(..., 3) mm -> (..., E)."""
        return self.proj(self.features(coords_mm))


class FoundationEncoder(nn.Module):
    """3D ViT encoder (module docstring).

    Args:
        config: the hyper-parameters.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if not isinstance(config, EncoderConfig):
            raise ValueError(f"FoundationEncoder needs an EncoderConfig, got {type(config).__name__}")
        self.config = config
        c = config
        # the strided convolution of MONAI's PatchEmbeddingBlock, without its grid-bound position table
        self.patch_embed = nn.Conv3d(c.in_channels, c.hidden_size, kernel_size=c.patch_size,
                                     stride=c.patch_size)
        min_wl = c.pos_min_wavelength_mm or 2.0 * c.patch_size * c.voxel_mm
        self.pos_embed = FourierPositionEmbedding(c.hidden_size, c.pos_num_freqs, min_wl, c.pos_max_wavelength_mm)
        self.missing_channel = nn.Parameter(torch.zeros(c.in_channels, c.hidden_size))
        nn.init.normal_(self.missing_channel, std=0.02)
        self.blocks = nn.ModuleList([
            transformer_block(c.hidden_size, c.mlp_dim, c.num_heads, dropout_rate=c.dropout_rate,
                              qkv_bias=c.qkv_bias)
            for _ in range(c.num_layers)
        ])
        self.norm = nn.LayerNorm(c.hidden_size)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def patch_centres_mm(self, grid_size: Sequence[int], origin_mm: torch.Tensor) -> torch.Tensor:
        """MNI mm of the patch centres, (B, N, 3) in token order (d, h, w row-major).

        Args:
            grid_size: (d, h, w) patches per axis.
            origin_mm: (B, 3) MNI mm of the crop's first voxel (centre of voxel 0, 0, 0).
        """
        p, v = self.config.patch_size, self.config.voxel_mm
        axes = [torch.arange(n, device=origin_mm.device, dtype=torch.float32) * p + (p - 1) / 2.0
                for n in grid_size]
        idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (N, 3) voxels
        return origin_mm.float()[:, None, :] + idx[None] * v

    def _check_input(self, x: torch.Tensor) -> tuple[int, int, int]:
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"FoundationEncoder: expected input (B, {c.in_channels}, D, H, W), got "
                             f"{tuple(x.shape)}")
        if any(s % c.patch_size for s in x.shape[2:]):
            raise ValueError(f"FoundationEncoder: spatial size {tuple(x.shape[2:])} is not divisible by "
                             f"patch_size {c.patch_size}")
        return tuple(s // c.patch_size for s in x.shape[2:])  # type: ignore[return-value]

    def embed(self, x: torch.Tensor, origin_mm: torch.Tensor | None = None,
              channel_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Patch tokens with position (and missing-channel) embeddings, before the transformer.

        Returns:
            (B, N, E) tokens and the (d, h, w) patch grid.
        """
        grid = self._check_input(x)
        b = x.shape[0]
        if origin_mm is None:
            origin = default_origin_mm(x.shape[2:], self.config.voxel_mm)
            origin_mm = torch.as_tensor(origin, dtype=torch.float32, device=x.device).expand(b, 3)
        else:
            origin_mm = torch.as_tensor(origin_mm, dtype=torch.float32, device=x.device)
            if origin_mm.shape != (b, 3):
                raise ValueError(f"FoundationEncoder: origin_mm must be (B, 3) = ({b}, 3), got "
                                 f"{tuple(origin_mm.shape)}")
        if channel_mask is not None:
            channel_mask = torch.as_tensor(channel_mask, device=x.device).bool()
            if channel_mask.shape != (b, self.config.in_channels):
                raise ValueError(f"FoundationEncoder: channel_mask must be (B, C) = ({b}, "
                                 f"{self.config.in_channels}), got {tuple(channel_mask.shape)}")
            x = x * channel_mask[:, :, None, None, None].to(x.dtype)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, E)
        tokens = tokens + self.pos_embed(self.patch_centres_mm(grid, origin_mm)).to(tokens.dtype)
        if channel_mask is not None:
            missing = (~channel_mask).to(tokens.dtype) @ self.missing_channel.to(tokens.dtype)  # (B, E)
            tokens = tokens + missing[:, None, :]
        return tokens, grid

    def forward(self, x: torch.Tensor, origin_mm: torch.Tensor | None = None, *,
                keep_idx: torch.Tensor | None = None,
                channel_mask: torch.Tensor | None = None) -> EncoderOutput:
        """Encode a batch of crops.

        Args:
            x: (B, C, D, H, W) channel stack crops; D, H, W divisible by ``patch_size``.
            origin_mm: (B, 3) MNI mm of each crop's first voxel; ``None``: crops centred on the
                common grid (:func:`default_origin_mm`).
            keep_idx: (B, n) indices of the visible tokens (MAE); only those go through the
                transformer, and ``patches`` is ``None``.
            channel_mask: (B, C) bool, False for channels hidden from the encoder (zeroed, with a
                learned missing-channel embedding added to every token).

        Returns:
            :class:`EncoderOutput` with ``tokens`` (B, N|n, E), ``pooled`` (B, E), ``patches``
            (B, E, d, h, w).
        """
        tokens, grid = self.embed(x, origin_mm, channel_mask)
        if keep_idx is not None:
            keep_idx = torch.as_tensor(keep_idx, device=x.device).long()
            if keep_idx.ndim != 2 or keep_idx.shape[0] != x.shape[0]:
                raise ValueError(f"FoundationEncoder: keep_idx must be (B, n), got {tuple(keep_idx.shape)}")
            if keep_idx.numel() and (keep_idx.min() < 0 or keep_idx.max() >= tokens.shape[1]):
                raise ValueError(f"FoundationEncoder: keep_idx outside 0..{tokens.shape[1] - 1}")
            tokens = torch.gather(tokens, 1, keep_idx[:, :, None].expand(-1, -1, tokens.shape[2]))
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        pooled = tokens.mean(dim=1)
        patches = None
        if keep_idx is None:
            b, _, e = tokens.shape
            patches = tokens.transpose(1, 2).reshape(b, e, *grid)
        return EncoderOutput(tokens=tokens, pooled=pooled, patches=patches, grid_size=grid)


# --- whole-exam embeddings ----------------------------------------------------------------------

@dataclass(frozen=True)
class Embeddings:
    """Embeddings of one exam.

    Attributes:
        patches: (E, gx, gy, gz) float32 patch embeddings on the exam's patch grid.
        patch_affine: (4, 4) patch index (i, j, k) -> MNI mm of that patch's centre.
        pooled: (E,) float32 global embedding: mean of the patch embeddings inside the brain.
        lesion: (E,) float32 lesion embedding: mean of the patch embeddings weighted by the share of
            each patch inside the tumour mask; ``None`` when the stack has no (non-empty) tumour mask.
        peak: (E,) float32 global max embedding: each feature's maximum over the patches lying
            mostly inside the brain (every patch without a brain mask). A lesion covers a few of a
            brain's ~150 patches at 4 mm: the mean dilutes what marks it, the maximum keeps it, and
            it needs no tumour mask (multiple-instance pooling). ``None`` only when built by hand.
    """

    patches: np.ndarray
    patch_affine: np.ndarray
    pooled: np.ndarray
    lesion: np.ndarray | None = None
    peak: np.ndarray | None = None

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(self.patches.shape[1:])  # type: ignore[return-value]


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def _crop_box(crop: Any, shape: Sequence[int], patch: int) -> tuple[list[int], list[int]]:
    """Voxel box (start, stop) of ``crop`` (None, slices or (start, stop) pairs), outward to the patch grid."""
    if crop is None:
        return [0, 0, 0], list(shape)
    if len(crop) != 3:
        raise ValueError(f"encode: crop must give 3 axes (slices or (start, stop)), got {crop!r}")
    start, stop = [], []
    for axis, (c, n) in enumerate(zip(crop, shape)):
        if isinstance(c, slice):
            if c.step not in (None, 1):
                raise ValueError(f"encode: crop axis {axis} has a step ({c.step})")
            a, b = c.start or 0, n if c.stop is None else c.stop
        else:
            a, b = c
        a, b = int(a), int(b)
        if not 0 <= a < b <= n:
            raise ValueError(f"encode: crop axis {axis} ({a}, {b}) outside the volume 0..{n}")
        a = a // patch * patch
        b = min(a + -(-(b - a) // patch) * patch, n)
        start.append(a)
        stop.append(b)
    return start, stop


@torch.no_grad()
def encode(encoder: FoundationEncoder, stack: ExamStack, *, crop: Any = None, overlap: float = 0.5,
           batch_size: int = 4) -> Embeddings:
    """Patch and global embeddings of one exam by sliding windows of the training crop.

    Windows of ``config.img_size`` step by ``(1 - overlap)`` of the window, rounded to whole
    patches, so each patch's embedding is the mean over the windows that contain it. Volumes (or
    crops) not divisible by the patch size are zero-padded at the far end (the padded patches are
    kept, their centres are still given by ``patch_affine``).

    Args:
        encoder: a :class:`FoundationEncoder` (put in eval mode here, and restored).
        stack: the exam; its voxel size must be the encoder's ``voxel_mm``.
        crop: ``None`` (whole volume) or three slices / (start, stop) voxel ranges; rounded
            outward to the patch grid.
        overlap: window overlap fraction in [0, 1).
        batch_size: windows per forward pass.

    Returns:
        :class:`Embeddings`.

    Raises:
        ValueError: channels or voxel size differ from the encoder's, bad crop or overlap.
    """
    cfg = encoder.config
    image = np.asarray(stack.image)
    if image.ndim != 4 or image.shape[0] != cfg.in_channels:
        raise ValueError(f"encode: {stack.key or 'stack'} has image {image.shape}, the encoder expects "
                         f"({cfg.in_channels}, X, Y, Z)")
    if not math.isclose(stack.voxel_mm, cfg.voxel_mm, rel_tol=1e-3):
        raise ValueError(f"encode: {stack.key or 'stack'} is on a {stack.voxel_mm:g} mm grid, the encoder "
                         f"was built for {cfg.voxel_mm:g} mm")
    if not 0 <= overlap < 1:
        raise ValueError(f"encode: overlap must be in [0, 1), got {overlap}")
    p = cfg.patch_size
    start, stop = _crop_box(crop, image.shape[1:], p)
    region = image[:, start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
    size = [-(-s // p) * p for s in region.shape[1:]]  # pad to the patch grid
    window = [min(w, s) for w, s in zip(cfg.img_size, size)]
    padded_size = [max(s, w) for s, w in zip(size, window)]
    padded = np.zeros((image.shape[0], *padded_size), dtype=np.float32)
    padded[:, :region.shape[1], :region.shape[2], :region.shape[3]] = region
    grid = [s // p for s in padded_size]
    wgrid = [w // p for w in window]
    strides = [max(1, int(round(w * (1 - overlap)))) for w in wgrid]
    starts = [[s * p for s in _window_starts(g, w, st)] for g, w, st in zip(grid, wgrid, strides)]
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]

    affine = np.asarray(stack.affine, dtype=np.float64)
    param = next(encoder.parameters())
    device = param.device
    acc = torch.zeros(cfg.hidden_size, *grid, dtype=torch.float32, device=device)
    count = torch.zeros(*grid, dtype=torch.float32, device=device)
    was_training = encoder.training
    encoder.eval()
    try:
        for i in range(0, len(corners), batch_size):
            chunk = corners[i:i + batch_size]
            x = torch.from_numpy(np.stack([
                padded[:, a:a + window[0], b:b + window[1], c:c + window[2]] for a, b, c in chunk
            ])).to(device=device, dtype=param.dtype)
            first = np.array([[start[0] + a, start[1] + b, start[2] + c, 1.0] for a, b, c in chunk])
            origin = torch.as_tensor((first @ affine.T)[:, :3], dtype=torch.float32, device=device)
            out = encoder(x, origin)
            for (a, b, c), patches in zip(chunk, out.patches.float()):
                sl = (slice(a // p, a // p + wgrid[0]), slice(b // p, b // p + wgrid[1]),
                      slice(c // p, c // p + wgrid[2]))
                acc[(slice(None), *sl)] += patches
                count[sl] += 1
    finally:
        encoder.train(was_training)
    patches = (acc / count.clamp(min=1)).cpu().numpy().astype(np.float32)
    # patch index -> voxel of its centre -> MNI mm
    to_voxel = np.diag([float(p), float(p), float(p), 1.0])
    to_voxel[:3, 3] = np.asarray(start, dtype=np.float64) + (p - 1) / 2.0
    patch_affine = affine @ to_voxel

    def patch_share(mask: np.ndarray | None) -> np.ndarray | None:
        """Share of each patch's voxels inside ``mask`` (None without a mask or with an empty one)."""
        if mask is None:
            return None
        m = np.zeros(padded_size, dtype=np.float32)
        inside = np.asarray(mask)[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] > 0
        m[:inside.shape[0], :inside.shape[1], :inside.shape[2]] = inside
        share = m.reshape(grid[0], p, grid[1], p, grid[2], p).mean(axis=(1, 3, 5))
        return share if share.sum() > 0 else None

    def weighted_mean(weights: np.ndarray) -> np.ndarray:
        return ((patches * weights[None]).reshape(cfg.hidden_size, -1).sum(axis=1) / weights.sum()).astype(np.float32)

    brain, tumour = patch_share(stack.masks.get("brain")), patch_share(stack.masks.get("tumor"))
    flat = patches.reshape(cfg.hidden_size, -1)
    pooled = flat.mean(axis=1).astype(np.float32) if brain is None else weighted_mean(brain)
    inside = np.ones(flat.shape[1], dtype=bool) if brain is None else brain.reshape(-1) >= 0.5
    if not inside.any():  # no patch is half inside a (tiny) brain mask: every patch it touches
        inside = brain.reshape(-1) > 0
    peak = flat[:, inside].max(axis=1).astype(np.float32)
    return Embeddings(patches=patches, patch_affine=patch_affine, pooled=pooled,
                      lesion=None if tumour is None else weighted_mean(tumour), peak=peak)


# --- checkpoints -------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_encoder(encoder: FoundationEncoder, path: str | Path, *, config: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write an encoder-only checkpoint that :func:`load_encoder` reads.

    Args:
        encoder: the encoder.
        path: output ``.pt`` file.
        config: the run configuration to store (its ``encoder`` section is set from the encoder).
        extra: more entries for the checkpoint (e.g. pretext heads' ``state_dict``).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = dict(config or {})
    cfg["encoder"] = encoder.config.to_dict()
    payload = {"format": CHECKPOINT_FORMAT, "config": cfg,
               "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}
    payload.update(extra or {})
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(out)
    return out


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[FoundationEncoder, dict]:
    """Read a checkpoint of :func:`save_encoder` / ml.foundation.train into an encoder.

    Returns:
        ``(encoder, config)``: the encoder in eval mode with its weights, and the checkpoint's run
        configuration (a dict; ``config["encoder"]`` is the :class:`EncoderConfig` as a dict).

    Raises:
        ValueError: the file is missing, not a foundation checkpoint, or its weights do not match.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"load_encoder: {p} does not exist")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"load_encoder: {p} is not a readable torch checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"load_encoder: {p} is not an AminoPET foundation checkpoint "
                         f"(format {payload.get('format') if isinstance(payload, dict) else type(payload)})")
    config = dict(payload.get("config") or {})
    if "encoder" not in config or "encoder" not in payload:
        raise ValueError(f"load_encoder: {p} holds no encoder")
    encoder = FoundationEncoder(EncoderConfig.from_dict(config["encoder"]))
    try:
        encoder.load_state_dict(payload["encoder"])
    except RuntimeError as exc:
        raise ValueError(f"load_encoder: {p}: weights do not match the stored config ({exc})") from exc
    encoder.to(map_location).eval()
    return encoder, config
