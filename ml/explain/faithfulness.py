"""Is an attribution map faithful to the model, and does it point at the right tissue?

Two families of measures, both on one case:

* **Perturbation curves** (Petsiuk et al., RISE, BMVC 2018, sec. 4.1; Samek et al., IEEE TNNLS
  2017): *deletion* replaces the most-attributed voxels (all channels) by a baseline in steps and
  follows the model's output: a faithful map makes it fall fast (low area under the curve);
  *insertion* starts from the baseline image and puts the most-attributed voxels back: the output
  should rise fast (high area). Each is compared with the same curve for random attributions
  (:func:`random_curves`), so ``deletion_gain = AUC_random - AUC`` and
  ``insertion_gain = AUC - AUC_random`` are positive for a map better than chance. Voxels are
  ranked inside a mask (the brain), and the fractions count those voxels only.
* **Overlap with a true region** (:func:`mask_overlap`; on generated data the aggressive
  subregion the generator drew): pointing game (Zhang et al., ECCV 2016: does the maximum fall in
  the region), the share of the top-k % voxels inside it, Dice of the top-k % region and of the
  region of the mask's own size, and the ROC AUC of the map's values for membership.

Plain library code (no Django); results are frozen dataclasses.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import rankdata
from torch import nn

__all__ = [
    "PerturbationCurve",
    "FaithfulnessResult",
    "MaskOverlap",
    "perturbation_curve",
    "random_curves",
    "faithfulness",
    "mask_overlap",
    "model_score",
]

_KINDS = ("deletion", "insertion")
_DEFAULT_BASELINE = {"deletion": "zero", "insertion": "blur"}  # as in RISE


@dataclass(frozen=True)
class PerturbationCurve:
    """Model output along a deletion or insertion of voxels.

    Attributes:
        kind: ``deletion`` or ``insertion``.
        fractions: ``(S + 1,)`` share of the ranked voxels removed (deletion) or put back
            (insertion), from 0 to 1.
        scores: ``(S + 1,)`` model output at each fraction (probability of the target unless
            ``output="logit"`` was asked).
    """

    kind: str
    fractions: np.ndarray
    scores: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the curve, ``trapz(scores, fractions)`` (fractions span [0, 1])."""
        return float(np.trapezoid(self.scores, self.fractions))


@dataclass(frozen=True)
class FaithfulnessResult:
    """Deletion and insertion curves of one map on one case, with the random-attribution curves."""

    deletion: PerturbationCurve
    insertion: PerturbationCurve
    deletion_random: PerturbationCurve
    insertion_random: PerturbationCurve

    @property
    def deletion_gain(self) -> float:
        """``AUC_del(random) - AUC_del(map)``: > 0 when the map's voxels matter more than random ones."""
        return self.deletion_random.auc - self.deletion.auc

    @property
    def insertion_gain(self) -> float:
        """``AUC_ins(map) - AUC_ins(random)``: > 0 when the map's voxels restore the output faster."""
        return self.insertion.auc - self.insertion_random.auc


@dataclass(frozen=True)
class MaskOverlap:
    """Agreement of one map with a true region (e.g. the aggressive subregion).

    Attributes:
        pointing: share of the voxels holding the map's maximum that lie in the region (dilated by
            ``tolerance_vox``); 1.0 or 0.0 for a unique maximum (pointing-game hit or miss).
        top_percent: ``k`` of the top-k % region (percent of the voxels considered).
        top_in_mask: share of the top-k % voxels inside the region (precision of the top region).
        dice_top: Dice of the top-k % region with the region.
        dice_matched: Dice of the top ``|region|`` voxels with the region (the map given the
            region's size; equals its precision and recall).
        auc: ROC AUC of the map's values for region membership over the voxels considered
            (Mann-Whitney, ties counted half).
        mask_voxels: voxels of the region considered.
    """

    pointing: float
    top_percent: float
    top_in_mask: float
    dice_top: float
    dice_matched: float
    auc: float
    mask_voxels: int


def _check_case(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).float()
    if t.ndim == 4:
        t = t.unsqueeze(0)
    if t.ndim != 5 or t.shape[0] != 1:
        raise ValueError(f"x must be one case (C, D, H, W) or (1, C, D, H, W), got shape {tuple(t.shape)}")
    return t


@torch.no_grad()
def model_score(model: nn.Module, x: torch.Tensor, *, target: int | None = None,
                output: str = "probability") -> torch.Tensor:
    """Model output per case ``(B,)``: probability of ``target`` (sigmoid of a single logit,
    softmax otherwise) or the raw logit (``output="logit"``)."""
    out = model(x)
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim == 1:
        if target not in (None, 0):
            raise ValueError(f"the model has one output; target must be None or 0, got {target}")
        return torch.sigmoid(out) if output == "probability" else out
    if out.ndim != 2 or target is None or not 0 <= target < out.shape[1]:
        raise ValueError(f"model output shape {tuple(out.shape)} needs target in 0..{out.shape[-1] - 1}, "
                         f"got {target}")
    if output == "probability":
        return torch.softmax(out, dim=1)[:, target]
    return out[:, target]


def _baseline_image(x: torch.Tensor, baseline: str | float | np.ndarray, blur_sigma: float) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline == "zero":
            return torch.zeros_like(x)
        if baseline == "blur":
            arr = x[0].numpy()
            out = np.stack([ndimage.gaussian_filter(c, blur_sigma) for c in arr])
            return torch.from_numpy(out).unsqueeze(0).float()
        raise ValueError(f"baseline must be 'zero', 'blur', a number or an array like x, got {baseline!r}")
    if np.isscalar(baseline):
        return torch.full_like(x, float(baseline))
    b = _check_case(baseline)
    if b.shape != x.shape:
        raise ValueError(f"baseline shape {tuple(b.shape)} differs from x {tuple(x.shape)}")
    return b


def _ranked_voxels(attribution: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of the voxels considered, most-attributed first (ties in random order)."""
    a = np.asarray(attribution, dtype=np.float64).ravel()
    if not np.isfinite(a).all():
        raise ValueError("attribution holds NaN or infinite values")
    idx = np.arange(a.size) if mask is None else np.flatnonzero(np.asarray(mask).ravel() > 0)
    if idx.size == 0:
        raise ValueError("mask is empty: no voxel to rank")
    perm = rng.permutation(idx)  # random tie-breaking, then a stable sort by value
    return perm[np.argsort(-a[perm], kind="stable")]


def perturbation_curve(model: nn.Module, x: torch.Tensor | np.ndarray, attribution: np.ndarray, *,
                       kind: str, target: int | None = None, mask: np.ndarray | None = None,
                       baseline: str | float | np.ndarray | None = None, steps: int = 20,
                       blur_sigma: float = 2.0, output: str = "probability", batch_size: int = 4,
                       random_state: int | None = 0) -> PerturbationCurve:
    """Deletion or insertion curve of one map (module docstring).

    Args:
        model: ``forward(x (B, C, D, H, W)) -> logits``; run in eval mode without gradients.
        x: the case ``(C, D, H, W)`` or ``(1, C, D, H, W)``.
        attribution: ``(D, H, W)``; larger = more important.
        kind: ``deletion`` or ``insertion``.
        target: logit index for a multi-output model.
        mask: ``(D, H, W)``; only its voxels are ranked and perturbed (e.g. the brain).
        baseline: value of a removed voxel: ``zero``, ``blur`` (Gaussian of ``blur_sigma`` voxels
            per channel), a number or an array like ``x``; default ``zero`` for deletion and
            ``blur`` for insertion (RISE).
        steps: number of equal steps from 0 to all voxels considered.
        output: ``probability`` or ``logit``.
        batch_size: perturbed inputs per forward pass.
        random_state: seed of the tie-breaking order.

    Returns:
        The :class:`PerturbationCurve`.

    Raises:
        ValueError: bad kind, shapes, baseline or steps.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if output not in ("probability", "logit"):
        raise ValueError(f"output must be 'probability' or 'logit', got {output!r}")
    xt = _check_case(x)
    spatial = tuple(xt.shape[2:])
    if np.shape(attribution) != spatial:
        raise ValueError(f"attribution shape {np.shape(attribution)} differs from x's spatial shape {spatial}")
    if mask is not None and np.shape(mask) != spatial:
        raise ValueError(f"mask shape {np.shape(mask)} differs from x's spatial shape {spatial}")
    base = _baseline_image(xt, _DEFAULT_BASELINE[kind] if baseline is None else baseline, blur_sigma)
    order = _ranked_voxels(attribution, mask, np.random.default_rng(random_state))
    counts = np.round(np.linspace(0, order.size, steps + 1)).astype(int)
    start, fill = (xt, base) if kind == "deletion" else (base, xt)
    start_flat, fill_flat = start.reshape(1, xt.shape[1], -1), fill.reshape(1, xt.shape[1], -1)
    was_training = model.training
    model.eval()
    scores = []
    try:
        for b0 in range(0, counts.size, batch_size):
            batch = []
            for n in counts[b0:b0 + batch_size]:
                img = start_flat.clone()
                sel = torch.from_numpy(order[:n])
                img[:, :, sel] = fill_flat[:, :, sel]
                batch.append(img.reshape(xt.shape))
            scores.append(model_score(model, torch.cat(batch), target=target, output=output))
    finally:
        model.train(was_training)
    return PerturbationCurve(kind, counts / order.size, torch.cat(scores).numpy().astype(np.float64))


def _mean_curve(curves: Sequence[PerturbationCurve]) -> PerturbationCurve:
    return PerturbationCurve(curves[0].kind, curves[0].fractions,
                             np.mean([c.scores for c in curves], axis=0))


def random_curves(model: nn.Module, x: torch.Tensor | np.ndarray, *, n_random: int = 3,
                  mask: np.ndarray | None = None, random_state: int | None = 0,
                  **kw: object) -> tuple[PerturbationCurve, PerturbationCurve]:
    """Deletion and insertion curves of random attributions, averaged over ``n_random`` draws.

    The same for every method on a case, so compute it once per case and pass it to
    :func:`faithfulness`. ``kw``: options of :func:`perturbation_curve`.
    """
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}")
    xt = _check_case(x)
    rng = np.random.default_rng(random_state)
    out = []
    for kind in _KINDS:
        curves = [perturbation_curve(model, xt, rng.random(tuple(xt.shape[2:])), kind=kind, mask=mask,
                                     random_state=int(rng.integers(2**31)), **kw)
                  for _ in range(n_random)]
        out.append(_mean_curve(curves))
    return out[0], out[1]


def faithfulness(model: nn.Module, x: torch.Tensor | np.ndarray, attribution: np.ndarray, *,
                 mask: np.ndarray | None = None,
                 random: tuple[PerturbationCurve, PerturbationCurve] | None = None,
                 n_random: int = 3, random_state: int | None = 0, **kw: object) -> FaithfulnessResult:
    """Deletion and insertion curves of ``attribution`` with the random-attribution baseline.

    Args:
        random: the result of :func:`random_curves` for this case (computed when ``None``).
        kw: options of :func:`perturbation_curve` (``target``, ``baseline``, ``steps``, ...),
            used for the map's and the random curves alike.
    """
    if random is None:
        random = random_curves(model, x, n_random=n_random, mask=mask, random_state=random_state, **kw)
    deletion = perturbation_curve(model, x, attribution, kind="deletion", mask=mask,
                                  random_state=random_state, **kw)
    insertion = perturbation_curve(model, x, attribution, kind="insertion", mask=mask,
                                   random_state=random_state, **kw)
    for cur, ref in zip((deletion, insertion), random):
        if ref.kind != cur.kind or ref.fractions.shape != cur.fractions.shape:
            raise ValueError(f"random curves do not match: {ref.kind} with {ref.fractions.size} points "
                             f"for {cur.kind} with {cur.fractions.size}")
    return FaithfulnessResult(deletion, insertion, random[0], random[1])


def mask_overlap(attribution: np.ndarray, mask: np.ndarray, *, within: np.ndarray | None = None,
                 top_percent: float = 5.0, tolerance_vox: int = 0) -> MaskOverlap:
    """Overlap of a map with a true region (module docstring for the measures).

    Args:
        attribution: ``(D, H, W)`` map, larger = more important.
        mask: ``(D, H, W)`` true region (non-zero inside).
        within: ``(D, H, W)`` voxels considered (e.g. the brain); all voxels when ``None``.
        top_percent: size of the top region in percent of the voxels considered.
        tolerance_vox: the pointing game counts a maximum within this many voxels of the region.

    Raises:
        ValueError: shapes differ, the map is not finite, the region is empty or fills all the
            voxels considered, or ``top_percent`` is outside (0, 100].
    """
    a = np.asarray(attribution, dtype=np.float64)
    m = np.asarray(mask) > 0
    if a.shape != m.shape or a.ndim != 3:
        raise ValueError(f"attribution {a.shape} and mask {m.shape} must be the same 3D shape")
    if not np.isfinite(a).all():
        raise ValueError("attribution holds NaN or infinite values")
    w = np.ones(a.shape, bool) if within is None else np.asarray(within) > 0
    if w.shape != a.shape:
        raise ValueError(f"within {w.shape} differs from the attribution's shape {a.shape}")
    if not 0.0 < top_percent <= 100.0:
        raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
    vals, inside = a[w], m[w]
    n_pos = int(inside.sum())
    if n_pos == 0 or n_pos == inside.size:
        raise ValueError(f"the region holds {n_pos} of the {inside.size} voxels considered: "
                         "it must hold some but not all")
    region = ndimage.binary_dilation(m, iterations=tolerance_vox) if tolerance_vox > 0 else m
    peak = vals.max()
    pointing = float(region[w][vals == peak].mean())
    order = np.argsort(-vals, kind="stable")
    n_top = max(1, int(round(top_percent / 100.0 * vals.size)))
    top_hits = int(inside[order[:n_top]].sum())
    matched_hits = int(inside[order[:n_pos]].sum())
    ranks = rankdata(vals)
    auc = (ranks[inside].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * (inside.size - n_pos))
    return MaskOverlap(
        pointing=pointing, top_percent=float(top_percent), top_in_mask=top_hits / n_top,
        dice_top=2.0 * top_hits / (n_top + n_pos), dice_matched=matched_hits / n_pos,
        auc=float(auc), mask_voxels=n_pos,
    )
