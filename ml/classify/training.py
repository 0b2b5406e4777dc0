"""The training loop shared by the deep WP3 classifiers (scratch CNN, fine-tuned foundation model).

:class:`DeepClassifier` is a scikit-learn style estimator over lists of
:class:`ml.foundation.data.ExamStack`: ``fit(stacks, y, X_val=..., y_val=...)`` returns self,
``predict_proba(stacks)`` gives (N, 2). Subclasses only build the network
(:meth:`DeepClassifier._build_network`, a module ``(x (B, C, D, H, W), origin_mm (B, 3)) -> logits
(B,)``) and may give parameter groups (:meth:`DeepClassifier._param_groups`).

Training: AdamW, binary cross-entropy with the positive class weighted by ``n_neg / n_pos`` of the
training labels, the same :class:`~ml.classify.inputs.Augmenter` for every family, cosine learning
rate. With validation data, the epoch of lowest validation loss is kept (early stopping with
``patience``); the validation cases never enter a gradient step. Seeds: ``random_state`` seeds
torch, the crop augmentations and the batch order, so a run on CPU is reproducible.
"""
from __future__ import annotations

import copy
import io
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ml.classify.inputs import Augmenter, crop_centre, crop_stack, stack_crops

if TYPE_CHECKING:
    from ml.foundation.data import ExamStack

__all__ = ["DeepClassifier", "check_labels"]


def check_labels(stacks: Sequence[Any], y: Any, what: str = "y") -> np.ndarray:
    """0/1 labels (N,) matching ``stacks`` (ValueError otherwise)."""
    arr = np.asarray(y).ravel()
    if arr.size != len(stacks):
        raise ValueError(f"{what}: {arr.size} labels for {len(stacks)} stacks")
    if arr.size == 0:
        raise ValueError(f"{what}: no case")
    if not np.all(np.isin(arr, (0, 1))):
        raise ValueError(f"{what}: labels must be 0/1")
    return arr.astype(int)


class DeepClassifier(ClassifierMixin, BaseEstimator):
    """Base of the deep classifiers (module docstring).

    Args:
        crop: edge of the lesion-centred crop (voxels).
        epochs: maximal epochs.
        batch_size: crops per step.
        lr: AdamW learning rate (of the head; subclasses may scale groups).
        weight_decay: AdamW weight decay.
        augment: apply :class:`Augmenter` during training.
        patience: epochs without a lower validation loss before stopping (with validation data).
        min_steps: at least this many optimiser steps (more epochs when the training set is small,
            so 10 % of the labels still get a comparable number of updates); 0: ``epochs`` only.
        device: torch device string.
        random_state: seed (int).
        verbose: print one line per epoch.

    Attributes:
        network_: the trained module. history_: one dict per epoch (train_loss, val_loss,
        val_auc, seconds). best_epoch_: the kept epoch. train_seconds_: wall time of ``fit``.
        n_train_: training cases. classes_: ``[0, 1]``.
    """

    def __init__(self, *, crop: int = 48, epochs: int = 30, batch_size: int = 8, lr: float = 1e-3,
                 weight_decay: float = 1e-4, augment: bool = True, patience: int = 8, min_steps: int = 0,
                 device: str = "cpu", random_state: int = 0, verbose: bool = False) -> None:
        self.crop = crop
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.augment = augment
        self.patience = patience
        self.min_steps = min_steps
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # --- to be provided by subclasses -------------------------------------------------------
    def _build_network(self, in_channels: int) -> nn.Module:
        raise NotImplementedError

    def _param_groups(self, network: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in network.parameters() if p.requires_grad], "lr": self.lr}]

    # --- training -------------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.crop < 8:
            raise ValueError(f"crop: must be >= 8 voxels, got {self.crop}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size: must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")

    def _input_image(self, stack: ExamStack) -> np.ndarray:
        """The (C, X, Y, Z) float32 array the crops come from (the stack's channels; a subclass may add
        channels the network reads otherwise, see :attr:`_intensity_channels`)."""
        return np.asarray(stack.image, dtype=np.float32)

    #: Channels of :meth:`_input_image` the intensity augmentations touch (None: all).
    _intensity_channels: int | None = None

    def _crops(self, X: Sequence[ExamStack]) -> tuple[np.ndarray, np.ndarray]:
        """Un-augmented lesion-centred crops and origins of ``X``."""
        return stack_crops(X, self.crop, image_of=self._input_image)

    def _forward(self, network: nn.Module, crops: np.ndarray, origins: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        o = torch.from_numpy(np.asarray(origins, dtype=np.float32)).to(self.device)
        return network(x, o).reshape(-1)

    def _eval_logits(self, network: nn.Module, crops: np.ndarray, origins: np.ndarray) -> np.ndarray:
        network.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(crops), self.batch_size):
                out.append(self._forward(network, crops[i:i + self.batch_size],
                                         origins[i:i + self.batch_size]).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def fit(self, X: Sequence[ExamStack], y: Any, *, X_val: Sequence[ExamStack] | None = None,
            y_val: Any = None) -> DeepClassifier:
        """Train on stacks ``X`` (N,) with 0/1 labels ``y`` (N,); validation data for early stopping.

        Raises:
            ValueError: bad hyper-parameters, label count, a single class in ``y``.
        """
        self._validate()
        yy = check_labels(X, y)
        if yy.min() == yy.max():
            raise ValueError("y: training labels hold one class only")
        has_val = X_val is not None and len(X_val) > 0
        yv = check_labels(X_val, y_val, "y_val") if has_val else None
        t0 = time.perf_counter()
        torch.manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        images = [self._input_image(s) for s in X]
        affines = [np.asarray(s.affine) for s in X]
        centres = [crop_centre(s) for s in X]
        in_channels = images[0].shape[0]
        network = self._build_network(in_channels).to(self.device)
        optimiser = torch.optim.AdamW(self._param_groups(network), weight_decay=self.weight_decay)
        per_epoch = int(np.ceil(len(X) / self.batch_size))
        n_epochs = max(self.epochs, int(np.ceil(self.min_steps / per_epoch)))
        steps = n_epochs * per_epoch
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, steps))
        pos_weight = torch.tensor([(yy == 0).sum() / max(1, (yy == 1).sum())], dtype=torch.float32,
                                  device=self.device)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        augmenter = Augmenter() if self.augment else Augmenter(flip_prob=0, shift_vox=0, intensity_scale=0,
                                                               intensity_shift=0, noise_std=0)
        if has_val:
            val_crops, val_origins = self._crops(X_val)
            val_loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        history: list[dict[str, float]] = []
        best_state, best_loss, best_epoch, since_best = None, np.inf, 0, 0
        for epoch in range(n_epochs):
            te = time.perf_counter()
            network.train()
            order = rng.permutation(len(X))
            losses = []
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                pairs = [augmenter.crop(images[j], affines[j], centres[j], self.crop, rng,
                                        intensity_channels=self._intensity_channels) for j in idx]
                crops = np.stack([p[0] for p in pairs])
                origins = np.stack([p[1] for p in pairs])
                target = torch.tensor(yy[idx], dtype=torch.float32, device=self.device)
                optimiser.zero_grad(set_to_none=True)
                loss = loss_fn(self._forward(network, crops, origins), target)
                loss.backward()
                optimiser.step()
                scheduler.step()
                losses.append(float(loss.detach()) * len(idx))
            row = {"epoch": epoch + 1, "train_loss": float(np.sum(losses) / len(X))}
            if has_val:
                logits = self._eval_logits(network, val_crops, val_origins)
                row["val_loss"] = float(val_loss_fn(torch.from_numpy(logits),
                                                    torch.tensor(yv, dtype=torch.float32)))
                row["val_auc"] = _auc(yv, logits)
                if row["val_loss"] < best_loss - 1e-6:
                    best_loss, best_epoch, since_best = row["val_loss"], epoch + 1, 0
                    best_state = copy.deepcopy(network.state_dict())
                else:
                    since_best += 1
            row["seconds"] = time.perf_counter() - te
            history.append(row)
            if self.verbose:
                print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
            if has_val and since_best >= self.patience:
                break
        if best_state is not None:
            network.load_state_dict(best_state)
        else:
            best_epoch = len(history)
        network.eval()
        self.network_ = network
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.in_channels_ = in_channels
        self.n_train_ = len(X)
        self.classes_ = np.array([0, 1])
        self.train_seconds_ = time.perf_counter() - t0
        return self

    def decision_function(self, X: Sequence[ExamStack]) -> np.ndarray:
        """Logits (N,) on the un-augmented lesion-centred crops."""
        check_is_fitted(self, "network_")
        if len(X) == 0:
            return np.zeros(0)
        crops, origins = self._crops(X)
        return self._eval_logits(self.network_, crops, origins).astype(np.float64)

    def predict_proba(self, X: Sequence[ExamStack]) -> np.ndarray:
        """(N, 2) class probabilities."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Sequence[ExamStack]) -> np.ndarray:
        """0/1 at probability 0.5."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def crop_input(self, stack: ExamStack) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The model input of one stack, for explanations.

        Returns:
            ``(x (1, C, s, s, s), origin_mm (1, 3), start_vox (3,))``: ``start_vox`` is the grid
            index of the crop's voxel (0, 0, 0) (to put a crop-sized map back on the grid).
        """
        centre = crop_centre(stack)
        crop, origin = crop_stack(self._input_image(stack), stack.affine, centre, self.crop)
        start = np.round(centre - (self.crop - 1) / 2).astype(int)
        return (torch.from_numpy(crop[None]).to(self.device),
                torch.from_numpy(origin[None].astype(np.float32)).to(self.device), start)

    # --- persistence ----------------------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """The fitted estimator (parameters + network weights) as torch-serialised bytes."""
        check_is_fitted(self, "network_")
        buf = io.BytesIO()
        torch.save({"class": type(self).__name__, "params": self.get_params(),
                    "state": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()},
                    "in_channels": self.in_channels_, "history": self.history_,
                    "best_epoch": self.best_epoch_, "n_train": self.n_train_,
                    "extra": self._extra_state()}, buf)
        return buf.getvalue()

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _restore_extra(self, extra: dict[str, Any]) -> None:
        pass

    @classmethod
    def from_state(cls, payload: dict[str, Any], *, device: str = "cpu") -> DeepClassifier:
        """Rebuild a fitted estimator from :meth:`state_bytes` (already ``torch.load``-ed)."""
        if payload.get("class") != cls.__name__:
            raise ValueError(f"checkpoint holds a {payload.get('class')}, not a {cls.__name__}")
        params = dict(payload["params"]) | {"device": device}
        est = cls(**params)
        est._restore_extra(payload.get("extra") or {})
        network = est._build_network(int(payload["in_channels"]))
        network.load_state_dict(payload["state"])
        est.network_ = network.to(device).eval()
        est.in_channels_ = int(payload["in_channels"])
        est.history_ = list(payload.get("history") or [])
        est.best_epoch_ = int(payload.get("best_epoch") or 0)
        est.n_train_ = int(payload.get("n_train") or 0)
        est.classes_ = np.array([0, 1])
        return est


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from ml.classical.metrics import mann_whitney_auc
    return mann_whitney_auc(y, score)
