"""Per-voxel aggressiveness maps: the marker model's decision attributed back to voxels and habitats.

Two routes, both giving a map on the exam's grid (higher = the voxel pushes the marker model
towards the aggressive class, e.g. WHO grade 4 or IDH-wildtype):

* :class:`MarkerAttributionModel` (the dynamic-features model, no deep network needed): a
  logistic regression of the marker on the tumour-mean of standardised voxel features
  (:func:`ml.subregions.habitats.voxel_features`: TBR, SUV relative to the tumour median, TTP,
  slope, optionally the interpolated encoder embeddings). Because the patient's logit is linear in
  the mean of the voxel features, it splits exactly into voxel contributions:
  ``logit = b + w . z_ref + mean_v a_v`` with ``a_v = w . (z_v - z_ref)`` (``z_ref``: the training
  cohort's mean patient vector); ``a_v`` is the map (completeness holds exactly, as for Integrated
  Gradients on a linear model, Sundararajan et al. 2017), and a habitat's share is
  ``sum_{v in h} a_v / N``.
* :func:`encoder_attribution`: captum Integrated Gradients through the WP1 encoder and a linear
  marker head on its pooled embedding, on a crop around the tumour; the channel-summed attribution
  of each input voxel is the map. Used when a trained encoder is available.

:func:`habitat_attribution` reduces a voxel map to habitats (each habitat's share of the total),
which names the aggressive habitat of an exam.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from ml.subregions.habitats import VoxelFeatures

__all__ = [
    "MarkerAttributionModel",
    "encoder_attribution",
    "habitat_attribution",
    "linear_head",
    "tumour_crop",
]


class MarkerAttributionModel(ClassifierMixin, BaseEstimator):
    """Marker model on tumour-mean voxel features with an exact voxel attribution (module docstring).

    Args:
        columns: feature columns to use (default: all columns of the first exam).
        C: inverse L2 regularisation strength of the logistic regression.
        random_state: seed of the solver.

    Attributes (after fit):
        scaler_: voxel-level standardisation (fitted on all training voxels, exams weighted equally).
        logistic_: the fitted LogisticRegression on the exam-mean standardised features.
        reference_: (F,) ``z_ref``, the mean of the training exams' mean vectors.
        coef_frame_: coefficient per feature (per SD of the voxel feature).
    """

    def __init__(self, columns: Sequence[str] | None = None, C: float = 1.0, random_state: int | None = 0) -> None:
        self.columns = columns
        self.C = C
        self.random_state = random_state

    def _z(self, vf: VoxelFeatures) -> np.ndarray:
        missing = [c for c in self.columns_ if c not in vf.frame.columns]
        if missing:
            raise ValueError(f"{vf.key}: missing feature columns {missing}")
        x = vf.frame[self.columns_].to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{vf.key}: NaN or infinite voxel features")
        return (x - self.scaler_.mean_) / self.scaler_.scale_

    def _exam_matrix(self, exams: Sequence[VoxelFeatures]) -> np.ndarray:
        return np.stack([self._z(vf).mean(axis=0) for vf in exams])

    def fit(self, exams: Sequence[VoxelFeatures], y: Sequence[int]) -> MarkerAttributionModel:
        """Fit on exams (their tumour voxels) and their binary marker (1 = aggressive class).

        Raises:
            ValueError: lengths differ, one class only, or no exam.
        """
        y = np.asarray(y)
        if len(exams) == 0 or len(exams) != len(y):
            raise ValueError(f"{len(exams)} exams but {len(y)} labels")
        if len(np.unique(y)) != 2:
            raise ValueError(f"the marker needs two classes, got {np.unique(y).tolist()}")
        self.columns_ = list(self.columns) if self.columns is not None else list(exams[0].frame.columns)
        # Standardise with the mean of exam means and the pooled within+between SD, exams weighted
        # equally (a large tumour does not set the scale).
        means = np.stack([vf.frame[self.columns_].to_numpy(np.float64).mean(0) for vf in exams])
        var = np.stack([vf.frame[self.columns_].to_numpy(np.float64).var(0) for vf in exams])
        self.scaler_ = StandardScaler()
        self.scaler_.mean_ = means.mean(0)
        self.scaler_.scale_ = np.sqrt(np.maximum(var.mean(0) + means.var(0), 1e-12))
        X = self._exam_matrix(exams)
        self.logistic_ = LogisticRegression(C=self.C, max_iter=1000, random_state=self.random_state).fit(X, y)
        self.classes_ = self.logistic_.classes_
        self.reference_ = X.mean(axis=0)
        self.coef_frame_ = pd.Series(self.logistic_.coef_[0], index=self.columns_, name="coef_per_sd")
        return self

    def decision_function(self, exams: Sequence[VoxelFeatures]) -> np.ndarray:
        """Logit of the aggressive class per exam, shape (n,)."""
        check_is_fitted(self, "logistic_")
        return self.logistic_.decision_function(self._exam_matrix(exams))

    def predict_proba(self, exams: Sequence[VoxelFeatures]) -> np.ndarray:
        """(n, 2) class probabilities."""
        check_is_fitted(self, "logistic_")
        return self.logistic_.predict_proba(self._exam_matrix(exams))

    def predict(self, exams: Sequence[VoxelFeatures]) -> np.ndarray:
        """Predicted class per exam, shape (n,)."""
        check_is_fitted(self, "logistic_")
        return self.logistic_.predict(self._exam_matrix(exams))

    def voxel_attribution(self, vf: VoxelFeatures) -> np.ndarray:
        """``a_v = w . (z_v - z_ref)`` for each voxel of ``vf``, shape (N,); their mean plus
        ``b + w . z_ref`` is the exam's logit (module docstring)."""
        check_is_fitted(self, "logistic_")
        return (self._z(vf) - self.reference_) @ self.logistic_.coef_[0]

    def baseline_logit(self) -> float:
        """``b + w . z_ref``: the logit of the reference exam."""
        check_is_fitted(self, "logistic_")
        return float(self.logistic_.intercept_[0] + self.reference_ @ self.logistic_.coef_[0])

    def attribution_volume(self, vf: VoxelFeatures) -> np.ndarray:
        """The voxel attribution on the exam grid (X, Y, Z) float32, NaN outside the mask."""
        return vf.to_volume(self.voxel_attribution(vf), fill=np.nan)


def habitat_attribution(attribution: np.ndarray, habitats: np.ndarray, n_habitats: int) -> np.ndarray:
    """Each habitat's share ``sum_{v in h} a_v / N`` of the mean voxel attribution, shape (k,).

    Args:
        attribution: (N,) voxel attributions.
        habitats: (N,) habitat index 0..k-1 of the same voxels.
        n_habitats: k.
    """
    a = np.asarray(attribution, dtype=np.float64)
    h = np.asarray(habitats)
    if a.shape != h.shape or a.ndim != 1:
        raise ValueError(f"attribution {a.shape} and habitats {h.shape} must be (N,) alike")
    if len(h) and (h.min() < 0 or h.max() >= n_habitats):
        raise ValueError(f"habitat indices must be in 0..{n_habitats - 1}")
    return np.bincount(h, weights=a, minlength=n_habitats) / max(len(a), 1)


def tumour_crop(mask: np.ndarray, size: Sequence[int]) -> tuple[slice, slice, slice]:
    """Slices of a ``size`` box centred on the mask's bounding box, shifted to lie in the grid.

    Raises:
        ValueError: empty mask or a box larger than the grid.
    """
    m = np.asarray(mask) > 0
    if not m.any():
        raise ValueError("tumour_crop: empty mask")
    if any(s > n for s, n in zip(size, m.shape)):
        raise ValueError(f"tumour_crop: box {tuple(size)} larger than the grid {m.shape}")
    idx = np.argwhere(m)
    centre = (idx.min(0) + idx.max(0)) // 2
    out = []
    for c, s, n in zip(centre, size, m.shape):
        lo = int(np.clip(c - s // 2, 0, n - s))
        out.append(slice(lo, lo + int(s)))
    return tuple(out)  # type: ignore[return-value]


def linear_head(logistic: LogisticRegression, scaler: StandardScaler | None = None) -> Any:
    """A ``torch.nn.Linear(E, 1)`` computing a fitted logistic regression's logit from the raw
    pooled embedding (the scaler, if any, folded into the weights)."""
    import torch

    w = np.asarray(logistic.coef_[0], dtype=np.float64)
    b = float(logistic.intercept_[0])
    if scaler is not None:
        w = w / scaler.scale_
        b = b - float(w @ scaler.mean_)
    layer = torch.nn.Linear(len(w), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w, dtype=torch.float32)[None])
        layer.bias.fill_(b)
    return layer


def encoder_attribution(
    encoder: Any,
    head: Any,
    image: np.ndarray,
    *,
    origin_mm: np.ndarray | None = None,
    n_steps: int = 16,
    baseline: float = 0.0,
) -> np.ndarray:
    """Integrated Gradients (captum) of ``head(encoder(x).pooled)`` with respect to the input.

    Args:
        encoder: a ``ml.foundation.FoundationEncoder`` (or any module whose output has ``pooled``
            (B, E)); put in eval mode here.
        head: module mapping (B, E) to a (B, 1) logit (e.g. :func:`linear_head`).
        image: (C, D, H, W) input crop, the encoder's ``img_size``.
        origin_mm: (3,) MNI mm of the crop's first voxel, passed to the encoder.
        n_steps: integration steps.
        baseline: constant baseline input (0 = the z-scored / TBR-normalised "average" input).

    Returns:
        (D, H, W) float32 attribution summed over channels; its total approximates
        ``logit(image) - logit(baseline)`` (captum's convergence delta measures the gap).
    """
    import torch
    from captum.attr import IntegratedGradients

    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
    if x.ndim != 5:
        raise ValueError(f"image: expected (C, D, H, W), got shape {tuple(np.shape(image))}")
    origin = None if origin_mm is None else torch.as_tensor(np.asarray(origin_mm, np.float32))[None]

    class _Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.head = encoder, head

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            o = None if origin is None else origin.expand(inp.shape[0], 3)
            out = self.encoder(inp) if o is None else self.encoder(inp, o)
            return self.head(out.pooled)[:, 0]

    model = _Wrapped().eval()
    ig = IntegratedGradients(model)
    attr = ig.attribute(x, baselines=torch.full_like(x, baseline), n_steps=n_steps, internal_batch_size=4)
    return attr[0].sum(0).detach().numpy().astype(np.float32)
