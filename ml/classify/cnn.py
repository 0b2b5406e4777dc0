"""3D CNN trained from scratch on the channel stacks (the WP3 baseline without pretraining).

Networks are MONAI's (:class:`monai.networks.nets.ResNet`, :class:`monai.networks.nets.DenseNet`);
the training loop, inputs and augmentations are those of every deep family
(:class:`ml.classify.training.DeepClassifier`), so the comparison with the fine-tuned foundation
model differs only in the network and its initialisation.

Architectures (``arch``):

* ``"resnet"`` (default): ResNet with basic blocks, layers (1, 1, 1, 1), widths
  ``width * (1, 2, 4, 8)`` (``width=16``: 0.9 M parameters), small enough for CPU at 4 mm.
* ``"densenet"``: DenseNet, blocks (2, 4, 4), growth 12, 24 initial features (0.2 M parameters).
* ``"densenet121"``: MONAI's DenseNet121 (11 M parameters; for the GPU).
"""
from __future__ import annotations

import torch
from monai.networks.nets import DenseNet, DenseNet121, ResNet
from torch import nn

from ml.classify.training import DeepClassifier

__all__ = ["ARCHITECTURES", "CnnClassifier", "build_cnn"]

ARCHITECTURES: tuple[str, ...] = ("resnet", "densenet", "densenet121")


class _Net(nn.Module):
    """Wraps a MONAI classifier so it takes ``(x, origin_mm)`` and returns logits (B,)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor, origin_mm: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, D, H, W) -> logits (B,); ``origin_mm`` is ignored (a CNN is translation-equivariant)."""
        return self.body(x).reshape(-1)


def build_cnn(arch: str, in_channels: int, *, width: int = 16, dropout: float = 0.2) -> nn.Module:
    """A 3D CNN ``(x (B, C, D, H, W), origin_mm) -> logits (B,)`` (module docstring).

    Raises:
        ValueError: unknown ``arch``, non-positive width.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: one of {ARCHITECTURES}, got {arch!r}")
    if width < 1 or in_channels < 1:
        raise ValueError(f"width and in_channels: must be >= 1, got {width}, {in_channels}")
    if arch == "resnet":
        body = ResNet(block="basic", layers=(1, 1, 1, 1), block_inplanes=[width, 2 * width, 4 * width, 8 * width],
                      spatial_dims=3, n_input_channels=in_channels, conv1_t_size=3, conv1_t_stride=1,
                      num_classes=1)
        # dropout before the final linear layer
        body.fc = nn.Sequential(nn.Dropout(dropout), body.fc)
    elif arch == "densenet":
        body = DenseNet(spatial_dims=3, in_channels=in_channels, out_channels=1, init_features=24,
                        growth_rate=12, block_config=(2, 4, 4), bn_size=2, dropout_prob=dropout)
    else:
        body = DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=1, dropout_prob=dropout)
    return _Net(body)


class CnnClassifier(DeepClassifier):
    """A MONAI 3D CNN from scratch on lesion-centred crops (sklearn estimator API).

    Args:
        arch: ``"resnet"``, ``"densenet"`` or ``"densenet121"``.
        width: first-stage channels of the ResNet.
        dropout: dropout before the classifier.
        **kwargs: the training options of :class:`~ml.classify.training.DeepClassifier`
            (crop, epochs, batch_size, lr, weight_decay, augment, patience, device, random_state).

    Example:
        >>> clf = CnnClassifier(epochs=20, random_state=1).fit(train_stacks, y, X_val=val, y_val=yv)
        >>> p = clf.predict_proba(test_stacks)[:, 1]
    """

    def __init__(self, *, arch: str = "resnet", width: int = 16, dropout: float = 0.2, crop: int = 48,
                 epochs: int = 30, batch_size: int = 8, lr: float = 1e-3, weight_decay: float = 1e-4,
                 augment: bool = True, patience: int = 8, min_steps: int = 0, device: str = "cpu",
                 random_state: int = 0,
                 verbose: bool = False) -> None:
        super().__init__(crop=crop, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         augment=augment, patience=patience, min_steps=min_steps, device=device,
                         random_state=random_state,
                         verbose=verbose)
        self.arch = arch
        self.width = width
        self.dropout = dropout

    def _build_network(self, in_channels: int) -> nn.Module:
        return build_cnn(self.arch, in_channels, width=self.width, dropout=self.dropout)
