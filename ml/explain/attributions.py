"""Voxel attribution maps of 3D classifiers (captum): what in the exam drove the model's output.

A model here is any ``torch.nn.Module`` taking ``x`` of shape ``(B, C, D, H, W)`` (the channels of
``ml.foundation.data.CHANNELS`` on the common grid) and returning logits ``(B,)``, ``(B, 1)`` or
``(B, K)``. :func:`attribution_map` gives one ``(D, H, W)`` map per case for:

* ``integrated_gradients``: path integral of the gradient from a baseline (zeros: no uptake, mean
  MRI) to the input (Sundararajan et al., ICML 2017, eq. 1), summed over channels;
* ``occlusion``: drop of the output when a 3D window of all channels is set to the baseline
  (Zeiler & Fergus, ECCV 2014), averaged over the windows covering a voxel: captum's definition,
  computed here in batches and optionally only for the windows touching a mask (the brain), which
  saves the windows over air (captum's ``Occlusion`` evaluates every window);
* ``gradcam``: Grad-CAM (Selvaraju et al., ICCV 2017) on a chosen layer: a conv layer's
  ``(B, E, d, h, w)`` output through captum's ``LayerGradCam``, or a transformer layer's tokens
  ``(B, N, E)`` laid back on their patch grid; upsampled trilinearly to the input grid;
* ``lrp``: layer-wise relevance propagation with the epsilon rule (Bach et al., PLoS ONE 2015)
  through captum's ``LRP``, extended to the 3D layers. LRP needs every operation of the forward
  pass to be a module with a propagation rule: :func:`lrp_blockers` names what blocks it
  (attention, normalisation layers other than batch norm, GELU, residual additions and
  concatenations done as functions) and ``method="lrp"`` then raises
  :class:`UnsupportedLayerError`; :func:`available_methods` says which methods a model allows.

Maps are normalised for display and comparison by :func:`normalise_map`: positive part (evidence
for the target), divided by a high percentile of the positive voxels, clipped to ``[0, 1]``.
:func:`save_map_nifti` writes a map on the common grid's affine.

This module is plain library code (no Django); the platform stores the NIfTI files with the
prediction.
"""
from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LRP, IntegratedGradients, LayerGradCam
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

from ml.explain.methods import METHOD_PREFERENCE, METHOD_WORDING, METHODS, preferred_method
from ml.io.nifti import save_nifti

__all__ = [
    "METHODS",
    "METHOD_PREFERENCE",
    "METHOD_WORDING",
    "preferred_method",
    "UnsupportedLayerError",
    "attribution_map",
    "available_methods",
    "lrp_blockers",
    "normalise_map",
    "save_map_nifti",
]

#: Leaf modules LRP propagates through with the epsilon rule (linear, pooling, eval-mode batch
#: norm, reshaping); captum's own table covers only their 2D versions.
_EPSILON_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.Flatten, nn.Identity, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)
#: Element-wise activations captum passes relevance through unchanged.
_PASS_THROUGH_LAYERS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Dropout, nn.Tanh)
#: Functions and tensor methods in a traced forward that only reshape or select (LRP-neutral).
_NEUTRAL_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, operator.getitem,
                      getattr}
_NEUTRAL_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "size", "contiguous",
                    "dim", "float"}


class UnsupportedLayerError(ValueError):
    """LRP cannot run through the model; ``blockers`` names each layer or operation that blocks it."""

    def __init__(self, blockers: Sequence[str]) -> None:
        self.blockers = tuple(blockers)
        super().__init__(
            "LRP is not available for this model; it is blocked by: " + "; ".join(self.blockers)
            + ". Use integrated_gradients, occlusion or gradcam instead (available_methods(model))."
        )


class _TargetLogit(nn.Module):
    """The model's logit for one target as a ``(B,)`` tensor (what captum attributes)."""

    def __init__(self, model: nn.Module, target: int | None) -> None:
        super().__init__()
        self.model = model
        self.target = target

    def forward(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        out = self.model(x, *args)
        if not torch.is_tensor(out):
            raise ValueError(f"the model must return a tensor of logits, got {type(out).__name__}")
        if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
            if self.target not in (None, 0):
                raise ValueError(f"the model has one output; target must be None or 0, got {self.target}")
            return out.reshape(out.shape[0])
        if out.ndim == 2:
            if self.target is None or not 0 <= self.target < out.shape[1]:
                raise ValueError(f"the model returns {out.shape[1]} logits; give target in "
                                 f"0..{out.shape[1] - 1}, got {self.target}")
            return out[:, self.target]
        raise ValueError(f"the model must return logits (B,), (B, 1) or (B, K), got shape {tuple(out.shape)}")


def _as_input(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).float()
    if t.ndim == 4:
        t = t.unsqueeze(0)
    if t.ndim != 5 or t.shape[0] != 1:
        raise ValueError(f"x must be one case (C, D, H, W) or (1, C, D, H, W), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"x holds {int((~torch.isfinite(t)).sum())} NaN or infinite values")
    return t


def _resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("layer is not a module of the model")
        return layer
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as exc:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"the model has no layer {layer!r}; layers: {', '.join(names[:40])}") from exc
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise ValueError("the model has no Conv3d layer; pass layer= (a conv or transformer layer)")
    return convs[-1]


def normalise_map(attribution: np.ndarray, *, percentile: float = 99.5, sign: str = "positive") -> np.ndarray:
    """Scale a raw attribution map to ``[0, 1]`` for display and comparison.

    Args:
        attribution: raw map of any shape (e.g. ``(D, H, W)``), finite.
        percentile: the value at this percentile of the positive voxels maps to 1 (higher ones are
            clipped), so that one extreme voxel does not wash out the rest.
        sign: ``positive`` keeps evidence for the target (negative values become 0); ``absolute``
            ranks by magnitude whatever the sign.

    Returns:
        float32 map of the same shape in ``[0, 1]``; all zeros when no voxel is positive.

    Raises:
        ValueError: non-finite values, bad percentile or sign.
    """
    a = np.asarray(attribution, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"attribution holds {int((~np.isfinite(a)).sum())} NaN or infinite values")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if sign == "positive":
        a = np.maximum(a, 0.0)
    elif sign == "absolute":
        a = np.abs(a)
    else:
        raise ValueError(f"sign must be 'positive' or 'absolute', got {sign!r}")
    positive = a[a > 0]
    if positive.size == 0:
        return np.zeros(a.shape, dtype=np.float32)
    scale = float(np.percentile(positive, percentile))
    return np.clip(a / scale, 0.0, 1.0).astype(np.float32)


def _explained(f: nn.Module) -> slice:
    """The input channels a summed map covers: ``model.explained_channels`` first ones when the model
    declares them (a channel that is not an image, e.g. a pooling mask, is left out), else all."""
    n = getattr(getattr(f, "model", f), "explained_channels", None)
    return slice(None) if n is None else slice(0, int(n))


def _integrated_gradients(f: nn.Module, x: torch.Tensor, *, baseline: float | torch.Tensor = 0.0,
                          n_steps: int = 16, internal_batch_size: int = 4,
                          additional_forward_args: object = None) -> torch.Tensor:
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    attr = IntegratedGradients(f).attribute(
        x, baselines=baseline, n_steps=n_steps, internal_batch_size=internal_batch_size,
        additional_forward_args=additional_forward_args, method="gausslegendre")
    return attr[0][_explained(f)].sum(0)


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    t = (int(value),) * 3 if np.isscalar(value) else tuple(int(v) for v in value)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return t  # type: ignore[return-value]


def _window_starts(n: int, w: int, s: int) -> list[int]:
    return list(range(0, n - w + 1, s))  # as captum's Occlusion: the tail past the last stride is not occluded


def _repeat_args(args: tuple, n: int) -> tuple:
    """Extra forward arguments of one case (e.g. ``origin_mm`` (1, 3)) repeated for a batch of ``n``."""
    return tuple(a.expand(n, *a.shape[1:]) if torch.is_tensor(a) and a.ndim > 0 and a.shape[0] == 1 else a
                 for a in args)


def _occlusion(f: nn.Module, x: torch.Tensor, *, window: int | Sequence[int] = 8,
               stride: int | Sequence[int] | None = None, baseline: float | torch.Tensor = 0.0,
               mask: np.ndarray | None = None, perturbations_per_eval: int = 8,
               additional_forward_args: object = None) -> torch.Tensor:
    """Occlusion as captum's ``Occlusion`` defines it (tested equal), with windows over all channels.

    Written directly because captum builds full-size masks per window and cannot skip windows:
    with ``mask`` only the windows touching the mask (the brain) are evaluated.
    """
    win = _triple(window, "window")
    step = win if stride is None else _triple(stride, "stride")
    spatial = tuple(x.shape[2:])
    if any(w > n for w, n in zip(win, spatial)):
        raise ValueError(f"occlusion window {win} is larger than the input {spatial}")
    if perturbations_per_eval < 1:
        raise ValueError(f"perturbations_per_eval must be >= 1, got {perturbations_per_eval}")
    base = torch.as_tensor(baseline, dtype=x.dtype)
    if base.ndim not in (0, 5) or (base.ndim == 5 and base.shape != x.shape):
        raise ValueError(f"occlusion baseline must be a number or a tensor like x {tuple(x.shape)}")
    base = base.expand_as(x)
    positions = [(a, b, c) for a in _window_starts(spatial[0], win[0], step[0])
                 for b in _window_starts(spatial[1], win[1], step[1])
                 for c in _window_starts(spatial[2], win[2], step[2])]
    if mask is not None:
        m = np.asarray(mask) > 0
        if m.shape != spatial:
            raise ValueError(f"mask shape {m.shape} differs from the input's spatial shape {spatial}")
        if not m.any():
            raise ValueError("mask is empty: no voxel to occlude")
        positions = [p for p in positions
                     if m[p[0]:p[0] + win[0], p[1]:p[1] + win[1], p[2]:p[2] + win[2]].any()]
    args = () if additional_forward_args is None else (additional_forward_args,)
    total = torch.zeros(spatial, dtype=torch.float64)
    count = torch.zeros(spatial, dtype=torch.float64)
    with torch.no_grad():
        y0 = f(x, *args)[0]
        for i in range(0, len(positions), perturbations_per_eval):
            chunk = positions[i:i + perturbations_per_eval]
            batch = x.repeat(len(chunk), 1, 1, 1, 1)
            boxes = [(slice(a, a + win[0]), slice(b, b + win[1]), slice(c, c + win[2])) for a, b, c in chunk]
            for j, box in enumerate(boxes):
                batch[(j, slice(None), *box)] = base[(0, slice(None), *box)]
            drop = (y0 - f(batch, *_repeat_args(args, len(chunk)))).double()
            for j, box in enumerate(boxes):
                total[box] += drop[j]
                count[box] += 1
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total)).float()


def _gradcam(f: nn.Module, x: torch.Tensor, *, layer: nn.Module | str | None = None,
             token_grid: Sequence[int] | None = None, prefix_tokens: int = 0,
             additional_forward_args: object = None) -> torch.Tensor:
    module = _resolve_layer(f.model, layer)  # type: ignore[arg-type]
    captured: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        t = out if torch.is_tensor(out) else getattr(out, "patches", None)
        if t is None or not torch.is_tensor(t):
            raise ValueError(f"gradcam layer {type(_m).__name__} returns {type(out).__name__}, "
                             "not a tensor (or an object with a .patches tensor)")
        captured["out"] = t
        captured["tensor"] = torch.is_tensor(out)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            f(x, *(() if additional_forward_args is None else (additional_forward_args,)))
    finally:
        handle.remove()
    act = captured["out"]
    if act.ndim == 5 and captured["tensor"]:
        cam = LayerGradCam(f, module).attribute(
            x, additional_forward_args=additional_forward_args, relu_attributions=True)
    elif act.ndim in (3, 5):
        cam = _manual_gradcam(f, x, module, token_grid=token_grid, prefix_tokens=prefix_tokens,
                              additional_forward_args=additional_forward_args)
    else:
        raise ValueError(f"gradcam needs a layer output (B, E, d, h, w) or tokens (B, N, E), got "
                         f"shape {tuple(act.shape)} from {type(module).__name__}")
    up = F.interpolate(cam.float(), size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)
    return up[0, 0].detach()


def _manual_gradcam(f: nn.Module, x: torch.Tensor, module: nn.Module, *,
                    token_grid: Sequence[int] | None, prefix_tokens: int,
                    additional_forward_args: object) -> torch.Tensor:
    """Grad-CAM from hooks: for transformer tokens ``(B, N, E)`` or a layer returning ``.patches``."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        t = out if torch.is_tensor(out) else out.patches  # type: ignore[union-attr]
        t.retain_grad()
        store["act"] = t

    handle = module.register_forward_hook(hook)
    try:
        xx = x.clone().requires_grad_(True)
        y = f(xx, *(() if additional_forward_args is None else (additional_forward_args,)))
        y.sum().backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach(), store["act"].grad
    if grad is None:
        raise ValueError(f"the model's output does not depend on layer {type(module).__name__}")
    if act.ndim == 5:  # (B, E, d, h, w)
        weights = grad.mean(dim=(2, 3, 4), keepdim=True)
        return torch.relu((weights * act).sum(1, keepdim=True))
    if token_grid is None:
        raise ValueError("gradcam on tokens (B, N, E) needs token_grid=(d, h, w), the patch grid")
    grid = _triple(token_grid, "token_grid")
    act, grad = act[:, prefix_tokens:], grad[:, prefix_tokens:]
    if act.shape[1] != int(np.prod(grid)):
        raise ValueError(f"layer has {act.shape[1]} tokens after {prefix_tokens} prefix tokens, "
                         f"token_grid {grid} needs {int(np.prod(grid))}")
    weights = grad.mean(dim=1, keepdim=True)  # (B, 1, E): channel weights, as for a conv layer
    cam = torch.relu((weights * act).sum(-1))  # (B, N)
    return cam.reshape(cam.shape[0], 1, *grid)


def lrp_blockers(model: nn.Module) -> list[str]:
    """What prevents LRP through ``model``; an empty list when LRP can run.

    Checks (1) every leaf module has a propagation rule (linear, pooling, batch-norm, reshaping
    layers: epsilon rule; ReLU/Tanh/Dropout: pass-through) and (2) the forward pass, traced with
    ``torch.fx``, calls no function outside the modules (a residual ``+`` or ``torch.cat`` is
    invisible to LRP's module hooks and would silently break relevance conservation), and uses no
    module twice. A model ``torch.fx`` cannot trace is reported as a blocker, since its
    operations cannot be checked.
    """
    blockers = []
    for name, module in model.named_modules():
        if len(list(module.children())) == 0 and not isinstance(module, _EPSILON_LAYERS + _PASS_THROUGH_LAYERS):
            blockers.append(f"layer {name or '<model>'} ({type(module).__name__}): no LRP rule")
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure means the ops cannot be checked
        blockers.append(f"forward pass not traceable by torch.fx ({type(exc).__name__}: {str(exc)[:120]})")
        return blockers
    calls: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] += 1
        elif node.op == "call_function" and node.target not in _NEUTRAL_FUNCTIONS:
            fname = getattr(node.target, "__name__", str(node.target))
            blockers.append(f"operation {fname} at node {node.name}: a function, not a module")
        elif node.op == "call_method" and node.target not in _NEUTRAL_METHODS:
            blockers.append(f"operation .{node.target}() at node {node.name}: a function, not a module")
    blockers += [f"layer {n}: used {k} times in one forward pass" for n, k in calls.items() if k > 1]
    return blockers


def available_methods(model: nn.Module) -> dict[str, str]:
    """Methods of :data:`METHODS` usable on ``model``: ``{method: ""}`` or the reason it is not."""
    out = {m: "" for m in METHODS}
    if not any(isinstance(m, nn.Conv3d) for m in model.modules()):
        out["gradcam"] = "no Conv3d layer: pass layer= and token_grid= for a transformer layer"
    blockers = lrp_blockers(model)
    if blockers:
        out["lrp"] = "; ".join(blockers)
    return out


def _lrp(f: _TargetLogit, x: torch.Tensor, *, epsilon: float = 1e-6,
         additional_forward_args: object = None) -> torch.Tensor:
    blockers = lrp_blockers(f.model)
    if blockers:
        raise UnsupportedLayerError(blockers)
    inplace = [m for m in f.model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    for m in f.model.modules():
        if isinstance(m, _EPSILON_LAYERS):
            m.rule = EpsilonRule(epsilon=epsilon)  # captum removes the rules after attribute()
    try:
        for m in inplace:
            m.inplace = False  # captum's hooks need the activations kept
        attr = LRP(f).attribute(x.clone().requires_grad_(True), additional_forward_args=additional_forward_args)
    finally:
        for m in inplace:
            m.inplace = True
        for m in f.model.modules():
            if hasattr(m, "rule"):
                del m.rule
    return attr[0][_explained(f)].sum(0)


_IMPLEMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "integrated_gradients": _integrated_gradients,
    "occlusion": _occlusion,
    "gradcam": _gradcam,
    "lrp": _lrp,
}


def attribution_map(model: nn.Module, x: torch.Tensor | np.ndarray, *, method: str,
                    target: int | None = None, normalise: bool = True, percentile: float = 99.5,
                    **kw: object) -> np.ndarray:
    """Voxel attribution map of one case for one model output.

    Args:
        model: classifier, ``forward(x (B, C, D, H, W)) -> logits (B,), (B, 1) or (B, K)``. It is
            run in eval mode (its training flag is restored afterwards).
        x: the case, ``(C, D, H, W)`` or ``(1, C, D, H, W)``, finite.
        method: one of :data:`METHODS`.
        target: logit index for a ``(B, K)`` model; ``None`` (or 0) for a single logit.
        normalise: return :func:`normalise_map` of the map (``[0, 1]``, positive evidence); when
            ``False``, the raw signed map (IG, LRP: summed over channels; occlusion: output drop;
            Grad-CAM: non-negative by construction).
        percentile: see :func:`normalise_map`.
        **kw: method options:
            integrated_gradients: ``baseline`` (float or tensor like ``x``, 0), ``n_steps`` (16),
            ``internal_batch_size`` (4);
            occlusion: ``window`` (voxels, 8), ``stride`` (voxels, = window), ``baseline`` (0.0 or a
            tensor like ``x``), ``mask`` ((D, H, W): only windows touching it, e.g. the brain),
            ``perturbations_per_eval`` (8);
            gradcam: ``layer`` (module or dotted name; default the last ``Conv3d``),
            ``token_grid`` ((d, h, w) for a transformer layer's tokens), ``prefix_tokens`` (0);
            lrp: ``epsilon`` (1e-6).
            All: ``additional_forward_args`` passed to ``model`` after ``x``.

    Returns:
        float32 map ``(D, H, W)``, finite; in ``[0, 1]`` when ``normalise``.

    Raises:
        ValueError: unknown method, bad input shape or values, bad target or options.
        UnsupportedLayerError: ``method="lrp"`` on a model LRP cannot run through (names the layers).
    """
    if method not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    inp = _as_input(x)
    f = _TargetLogit(model, target)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            f(inp, *(() if kw.get("additional_forward_args") is None else (kw["additional_forward_args"],)))
        try:
            raw = _IMPLEMENTATIONS[method](f, inp, **kw)
        except TypeError as exc:
            if "unexpected keyword argument" in str(exc):
                raise ValueError(f"{method}: {exc}") from exc
            raise
    finally:
        model.train(was_training)
    arr = raw.detach().cpu().numpy().astype(np.float32)
    if arr.shape != tuple(inp.shape[2:]):
        raise ValueError(f"{method} returned a map of shape {arr.shape}, expected {tuple(inp.shape[2:])}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{method} produced {int((~np.isfinite(arr)).sum())} non-finite values")
    return normalise_map(arr, percentile=percentile) if normalise else arr


def save_map_nifti(attribution: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a ``(D, H, W)`` map as float32 NIfTI on ``affine`` (the common grid's), deterministically.

    Raises:
        ValueError: the map is not 3D or not finite, or the affine is not a 4x4 invertible matrix.
    """
    a = np.asarray(attribution)
    if a.ndim != 3:
        raise ValueError(f"an attribution map is (D, H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"attribution map holds {int((~np.isfinite(a)).sum())} NaN or infinite values")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError(f"affine must be an invertible 4x4 matrix, got shape {aff.shape}")
    return save_nifti(a.astype(np.float32), aff, path)

