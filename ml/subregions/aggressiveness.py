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
* :class:`MILMarkerModel` (multiple-instance variant): the marker's logit is a soft maximum
  over the tumour voxels of a linear voxel score, ``logit = b + (1/beta) log mean_v exp(beta s_v)``
  with ``s_v = w . z_v`` (log-sum-exp pooling, Ilse et al. 2018 discuss MIL pooling operators):
  "the most aggressive part of the tumour sets the grade". Its per-voxel attribution is captum
  Integrated Gradients of the logit with respect to every voxel's features (baseline: the
  cohort's mean voxel), summed over features; ``s_v`` itself is the voxel score map. Unlike the
  mean-pooled model, whose weights follow patient-level differences (overall uptake,
  heterogeneity), the soft maximum makes the model find the voxels that look like the
  aggressive class, so the map locates.
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
    "MILMarkerModel",
    "MarkerAttributionModel",
    "encoder_attribution",
    "encoder_attribution_map",
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


class MILMarkerModel(MarkerAttributionModel):
    """Marker model with log-sum-exp pooling of linear voxel scores (module docstring).

    Args:
        columns: feature columns to use (default: all columns of the first exam).
        beta: sharpness of the soft maximum (0 would be the mean, infinity the maximum).
        l2: L2 penalty on the voxel weights.
        max_iter: L-BFGS iterations.
        random_state: seed of the weight initialisation.

    Attributes (after fit):
        coef_: (F,) voxel score weights per SD; intercept_: b; coef_frame_: weights by feature.
    """

    def __init__(self, columns: Sequence[str] | None = None, beta: float = 4.0, l2: float = 1e-2,
                 max_iter: int = 200, random_state: int | None = 0) -> None:
        self.columns = columns
        self.beta = beta
        self.l2 = l2
        self.max_iter = max_iter
        self.random_state = random_state

    def _logit_torch(self, z: Any, w: Any, b: Any) -> Any:
        import torch

        s = z @ w
        return b + (torch.logsumexp(self.beta * s, dim=-1) - np.log(s.shape[-1])) / self.beta

    def fit(self, exams: Sequence[VoxelFeatures], y: Sequence[int]) -> MILMarkerModel:
        """Fit on exams (their tumour voxels) and their binary marker (1 = aggressive class)."""
        import torch

        y = np.asarray(y)
        if len(exams) == 0 or len(exams) != len(y):
            raise ValueError(f"{len(exams)} exams but {len(y)} labels")
        if len(np.unique(y)) != 2:
            raise ValueError(f"the marker needs two classes, got {np.unique(y).tolist()}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        self.columns_ = list(self.columns) if self.columns is not None else list(exams[0].frame.columns)
        means = np.stack([vf.frame[self.columns_].to_numpy(np.float64).mean(0) for vf in exams])
        var = np.stack([vf.frame[self.columns_].to_numpy(np.float64).var(0) for vf in exams])
        self.scaler_ = StandardScaler()
        self.scaler_.mean_ = means.mean(0)
        self.scaler_.scale_ = np.sqrt(np.maximum(var.mean(0) + means.var(0), 1e-12))
        zs = [torch.as_tensor(self._z(vf), dtype=torch.float64) for vf in exams]
        gen = torch.Generator().manual_seed(int(np.random.RandomState(self.random_state).randint(2**31 - 1)))
        w = (0.01 * torch.randn(len(self.columns_), generator=gen, dtype=torch.float64)).requires_grad_()
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        target = torch.as_tensor(y, dtype=torch.float64)
        opt = torch.optim.LBFGS([w, b], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> Any:
            opt.zero_grad()
            logits = torch.stack([self._logit_torch(z, w, b) for z in zs])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + self.l2 * (w @ w)
            loss.backward()
            return loss

        opt.step(closure)
        self.coef_ = w.detach().numpy().copy()
        self.intercept_ = float(b.detach())
        self.classes_ = np.array([0, 1])
        self.reference_ = np.zeros(len(self.columns_))
        self.coef_frame_ = pd.Series(self.coef_, index=self.columns_, name="coef_per_sd")
        self.logistic_ = None  # not used: check_is_fitted looks at coef_
        return self

    def decision_function(self, exams: Sequence[VoxelFeatures]) -> np.ndarray:
        """Logit of the aggressive class per exam, shape (n,)."""
        import torch

        check_is_fitted(self, "coef_")
        w = torch.as_tensor(self.coef_)
        return np.array([float(self._logit_torch(torch.as_tensor(self._z(vf)), w, self.intercept_))
                         for vf in exams])

    def predict_proba(self, exams: Sequence[VoxelFeatures]) -> np.ndarray:
        """(n, 2) class probabilities."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(exams)))
        return np.c_[1 - p, p]

    def predict(self, exams: Sequence[VoxelFeatures]) -> np.ndarray:
        """Predicted class per exam, shape (n,)."""
        return (self.decision_function(exams) > 0).astype(int)

    def voxel_scores(self, vf: VoxelFeatures) -> np.ndarray:
        """``s_v = w . z_v``: how much each voxel looks like the aggressive class, shape (N,)."""
        check_is_fitted(self, "coef_")
        return self._z(vf) @ self.coef_

    def baseline_logit(self) -> float:
        """The logit when every voxel is the cohort's mean voxel (``z_v = 0``): ``b``."""
        check_is_fitted(self, "coef_")
        return float(self.intercept_)

    def voxel_attribution(self, vf: VoxelFeatures, n_steps: int = 32) -> np.ndarray:
        """Integrated Gradients (captum) of the exam's logit per voxel, summed over features,
        baseline ``z = 0`` (the cohort's mean voxel); they add up to ``logit - b`` (within the
        integration error). Shape (N,)."""
        import torch
        from captum.attr import IntegratedGradients

        check_is_fitted(self, "coef_")
        w = torch.as_tensor(self.coef_)

        def forward(z: Any) -> Any:
            return self._logit_torch(z, w, self.intercept_)

        z = torch.as_tensor(self._z(vf))[None]
        attr = IntegratedGradients(forward).attribute(z, baselines=torch.zeros_like(z), n_steps=n_steps)
        return attr[0].sum(-1).detach().numpy()

    def attribution_volume(self, vf: VoxelFeatures, kind: str = "attribution") -> np.ndarray:
        """Map on the exam grid (X, Y, Z) float32, NaN outside the mask: ``kind="attribution"``
        (Integrated Gradients) or ``"score"`` (``s_v``)."""
        if kind not in ("attribution", "score"):
            raise ValueError(f"kind: 'attribution' or 'score', got {kind!r}")
        values = self.voxel_attribution(vf) if kind == "attribution" else self.voxel_scores(vf)
        return vf.to_volume(values, fill=np.nan)


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


def encoder_attribution_map(
    encoder: Any,
    head: Any,
    stack: Any,
    *,
    size: Sequence[int] | None = None,
    mask: str = "tumor",
    n_steps: int = 16,
) -> np.ndarray:
    """:func:`encoder_attribution` on a crop around the exam's tumour, put back on the exam grid.

    Args:
        encoder: the WP1 encoder (``config.img_size`` is the default crop).
        head: (B, E) -> (B, 1) marker logit head (:func:`linear_head`).
        stack: an ``ExamStack`` (``image`` (C, X, Y, Z), ``affine``, ``masks``).
        size: crop size in voxels (default the encoder's ``img_size``).
        mask: the mask the crop is centred on.
        n_steps: integration steps.

    Returns:
        (X, Y, Z) float32 attribution, NaN outside the crop.
    """
    size = tuple(size) if size is not None else tuple(encoder.config.img_size)
    if mask not in stack.masks:
        raise ValueError(f"{stack.key}: no {mask!r} mask")
    sl = tumour_crop(stack.masks[mask], size)
    origin = (np.asarray(stack.affine, float) @ np.array([s.start for s in sl] + [1.0]))[:3]
    attr = encoder_attribution(encoder, head, np.asarray(stack.image)[(slice(None), *sl)],
                               origin_mm=origin, n_steps=n_steps)
    out = np.full(np.shape(stack.image)[1:], np.nan, dtype=np.float32)
    out[sl] = attr
    return out
