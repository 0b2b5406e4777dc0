"""Pretraining configuration: one YAML file (plus its seed) reproduces a run.

```yaml
seed: 0
epochs: 20
batch_size: 8
encoder: {img_size: [32, 32, 32], patch_size: 8, hidden_size: 96, ...}   # EncoderConfig
pretext: {weight_inpainting: 1.0, weight_crossmodal: 1.0, weight_contrastive: 0.1, ...}  # PretextConfig
```

Unknown keys are an error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ml.foundation.model import EncoderConfig
from ml.foundation.pretext import PretextConfig

__all__ = ["PretrainConfig", "load_config", "save_config"]


@dataclass
class PretrainConfig:
    """Everything a pretraining run depends on.

    Attributes:
        seed: seeds the weights, the exam order, the crops and augmentations and the masks.
        epochs: passes over the exams.
        batch_size: exams per step and process (two views each; >= 2 for the contrastive loss).
        lr: peak AdamW learning rate (scaled by nothing: set it for the global batch).
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up before the cosine decay (may be fractional).
        grad_clip: gradient-norm clip (0: none).
        max_minutes: stop after this wall time (the run is then not resumable identically); None: no limit.
        intensity_scale: random per-channel scale factor range (+-) of the views.
        intensity_shift: random per-channel offset range (+-) of the views.
        noise_std: standard deviation of the Gaussian noise added to half the views.
        pet_blur_mm: scanner-resolution augmentation: half the views get their PET channels blurred
            by a Gaussian of FWHM uniform in [0, pet_blur_mm] mm (sites' PSFs differ by a few mm);
            0: off.
        mri_bias_field: MRI-coil augmentation: half the views get a smooth multiplicative bias field
            (MONAI RandBiasField, degree 3, coefficients in [-x, x]) on their MRI channels; 0: off.
        cache_rate: fraction of the exams kept in memory (MONAI CacheDataset).
        num_workers: DataLoader workers (0: in the training process).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: ``auto`` (bf16 autocast on CUDA, float32 on CPU), ``bf16`` or ``none``.
        compile: wrap the model in ``torch.compile``.
        checkpoint_every: epochs between checkpoints (the last epoch always writes one).
        encoder: :class:`~ml.foundation.model.EncoderConfig`.
        pretext: :class:`~ml.foundation.pretext.PretextConfig`.
    """

    seed: int = 0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    max_minutes: float | None = None
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.05
    pet_blur_mm: float = 0.0
    mri_bias_field: float = 0.0
    cache_rate: float = 1.0
    num_workers: int = 0
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False
    checkpoint_every: int = 1
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig.from_dict(self.encoder)
        if isinstance(self.pretext, dict):
            self.pretext = PretextConfig.from_dict(self.pretext)
        if self.epochs < 1:
            raise ValueError(f"PretrainConfig.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"PretrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size < 2 and self.pretext.weight_contrastive > 0:
            raise ValueError("PretrainConfig.batch_size must be >= 2 for the contrastive loss")
        if self.lr <= 0:
            raise ValueError(f"PretrainConfig.lr must be positive, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"PretrainConfig.device must be auto, cpu or cuda, got {self.device!r}")
        if self.amp not in ("auto", "bf16", "none"):
            raise ValueError(f"PretrainConfig.amp must be auto, bf16 or none, got {self.amp!r}")
        if not 0 <= self.cache_rate <= 1:
            raise ValueError(f"PretrainConfig.cache_rate must be in [0, 1], got {self.cache_rate}")
        if self.checkpoint_every < 1:
            raise ValueError(f"PretrainConfig.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"PretrainConfig.max_minutes must be positive, got {self.max_minutes}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, yaml-safe dict."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """Build from a dict (nested ``encoder`` / ``pretext`` dicts); unknown keys: ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"PretrainConfig: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"PretrainConfig: unknown keys {sorted(unknown)} (known: {sorted(names)})")
        return cls(**data)


def load_config(path: str | Path) -> PretrainConfig:
    """Read a YAML config (ValueError with the file name when it is missing or invalid)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML ({exc})") from exc
    try:
        return PretrainConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{p}: {exc}") from exc


def save_config(config: PretrainConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return p
