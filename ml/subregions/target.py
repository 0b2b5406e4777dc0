"""Biopsy target from a voxel map, the two classical comparators, and their evaluation.

A target is the voxel that maximises a score map among the tumour voxels at least ``margin_mm``
from the tumour border (a safety margin: a needle aimed there stays in tumour despite
registration and brain-shift error), plus a small target region: the ball of ``radius_mm``
around it intersected with the tumour. Distances are Euclidean between voxel centres in mm
(``scipy.ndimage.distance_transform_edt`` with the grid's voxel sizes): the border distance of a
voxel is its distance to the nearest voxel centre outside the tumour mask.

Methods (each gives a score map, a target and a predicted subregion):

* :func:`map_target`: a learned aggressiveness map (ml.subregions.aggressiveness), smoothed
  inside the tumour; subregion: the map above ``level`` of its range in the tumour.
* :func:`suvmax_target`: the routine choice, the static SUVmax voxel; subregion: the
  isocontour at ``iso`` x SUVmax inside the tumour.
* :func:`earliest_ttp_target`: the classical dynamic hotspot (Kunz et al., Neuro-Oncology
  2011;13:307-17): voxel TTPs clustered with k-means, the earliest-TTP cluster's largest connected
  part is the subregion, the target its deepest point.

When no voxel is ``margin_mm`` from the border (a small tumour) the target falls back, stated in
``BiopsyTarget.fallback`` and ``note``, to the best-scoring voxel among the deepest ones
(``on_small="deepest"``), or a ValueError is raised (``on_small="raise"``).

:func:`evaluate_targets` compares methods on generated exams whose true aggressive subregion is
known: hit (target voxel inside it), distance from the target to it (mm, 0 when inside) and Dice
of the predicted subregion, each with percentile bootstrap CIs over exams, and the paired
difference of each method's hit rate from a reference method (bootstrap CI, exact McNemar p).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.stats import binomtest
from sklearn.cluster import KMeans

__all__ = [
    "BiopsyTarget",
    "TargetEvaluation",
    "border_distance_mm",
    "dice",
    "earliest_ttp_cluster",
    "earliest_ttp_target",
    "evaluate_targets",
    "map_target",
    "smooth_in_mask",
    "suvmax_target",
    "target_from_map",
]


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine: expected a finite 4x4 matrix, got shape {a.shape}")
    sizes = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(sizes <= 0):
        raise ValueError("affine: zero voxel size")
    return sizes


def _mask(mask: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"{name}: expected a 3D mask (X, Y, Z), got shape {m.shape}")
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"{name}: shape {m.shape} differs from the map's {tuple(shape)}")
    return m > 0


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice, slice]:
    """Slices of the mask's bounding box grown by ``pad`` voxels (clipped to the grid)."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return tuple(slice(0, n) for n in mask.shape)  # type: ignore[return-value]
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def border_distance_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Distance (mm) of each mask voxel centre to the nearest voxel centre outside the mask
    (0 outside), shape (X, Y, Z). The grid is padded so the array edge counts as outside."""
    m = _mask(mask, "mask")
    out = np.zeros(m.shape, dtype=np.float64)
    box = _bbox(m, 1)  # the nearest outside voxel of a mask voxel is inside its grown bounding box
    padded = np.pad(m[box], 1, constant_values=False)
    out[box] = ndi.distance_transform_edt(padded, sampling=_voxel_sizes(affine))[1:-1, 1:-1, 1:-1]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A n B| / (|A| + |B|) of two masks (nan when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    den = int(a.sum() + b.sum())
    return float(2.0 * np.logical_and(a, b).sum() / den) if den else float("nan")


def smooth_in_mask(values: np.ndarray, mask: np.ndarray, affine: np.ndarray, fwhm_mm: float) -> np.ndarray:
    """Gaussian smoothing restricted to a mask (normalised convolution: ``G*(v m) / G*m``), so
    values outside the mask do not leak in; 0 outside the mask. ``fwhm_mm`` 0 returns a copy."""
    m = _mask(mask, "mask", np.shape(values))
    v = np.where(m, np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0)
    if fwhm_mm <= 0:
        return v
    sigma = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / _voxel_sizes(affine)
    # Only mask voxels contribute: the mask's box grown by the kernel's reach gives the same values.
    box = _bbox(m, int(np.ceil(4.0 * float(sigma.max()))) + 1)
    num = ndi.gaussian_filter(v[box], sigma, mode="constant")
    den = ndi.gaussian_filter(m[box].astype(np.float64), sigma, mode="constant")
    out = np.zeros(m.shape, dtype=np.float64)
    out[box] = np.where(m[box], num / np.maximum(den, 1e-12), 0.0)
    return out


@dataclass(frozen=True)
class BiopsyTarget:
    """A biopsy target.

    Attributes:
        method: the method that chose it (``map``, ``suvmax``, ``earliest_ttp`` ...).
        voxel: (i, j, k) index on the exam's grid.
        point_mm: world (scanner or MNI, whichever the affine maps to) mm of the voxel centre.
        margin_mm: the requested safety margin from the tumour border.
        border_distance_mm: the target's actual distance to the border.
        radius_mm: radius of the target region.
        region: (X, Y, Z) bool, ball of ``radius_mm`` around the target, inside the tumour.
        subregion: (X, Y, Z) bool, the method's predicted aggressive subregion.
        score: the score map's value at the target.
        fallback: True when no voxel met the margin and the deepest voxels were used.
        note: what the fallback did, empty otherwise.
    """

    method: str
    voxel: tuple[int, int, int]
    point_mm: tuple[float, float, float]
    margin_mm: float
    border_distance_mm: float
    radius_mm: float
    region: np.ndarray = field(repr=False)
    subregion: np.ndarray = field(repr=False)
    score: float
    fallback: bool = False
    note: str = ""


def target_from_map(
    score: np.ndarray,
    tumour_mask: np.ndarray,
    affine: np.ndarray,
    *,
    method: str = "map",
    margin_mm: float = 5.0,
    radius_mm: float = 5.0,
    subregion: np.ndarray | None = None,
    on_small: str = "deepest",
) -> BiopsyTarget:
    """The voxel maximising ``score`` among tumour voxels ``margin_mm`` or more from the border.

    Args:
        score: (X, Y, Z) score map (higher = better target); NaN voxels are never chosen.
        tumour_mask: (X, Y, Z) tumour mask on the same grid.
        affine: (4, 4) voxel -> world mm.
        method: name stored in the result.
        margin_mm: safety margin from the tumour border (>= 0).
        radius_mm: radius of the target region (> 0).
        subregion: the method's predicted subregion (default: the target region).
        on_small: ``"deepest"`` (fall back to the deepest voxels, flagged) or ``"raise"``.

    Raises:
        ValueError: shapes, negative margin, empty tumour, all-NaN score, or a tumour too
            small for the margin with ``on_small="raise"``.
    """
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 3:
        raise ValueError(f"score: expected a 3D map (X, Y, Z), got shape {s.shape}")
    m = _mask(tumour_mask, "tumour_mask", s.shape)
    if margin_mm < 0 or radius_mm <= 0:
        raise ValueError(f"margin_mm must be >= 0 and radius_mm > 0, got {margin_mm}, {radius_mm}")
    if on_small not in ("deepest", "raise"):
        raise ValueError(f"on_small: 'deepest' or 'raise', got {on_small!r}")
    if not m.any():
        raise ValueError(f"{method}: the tumour mask is empty")
    valid = m & np.isfinite(s)
    if not valid.any():
        raise ValueError(f"{method}: the score map is NaN everywhere in the tumour")
    dist = border_distance_mm(m, affine)
    allowed = valid & (dist >= margin_mm - 1e-9)
    fallback, note = False, ""
    if not allowed.any():
        deepest = float(dist[valid].max())
        if on_small == "raise":
            raise ValueError(
                f"{method}: no tumour voxel is {margin_mm} mm from the border (deepest {deepest:.1f} mm)"
            )
        allowed = valid & (dist >= deepest - 1e-9)
        fallback = True
        note = (f"tumour too small for a {margin_mm:g} mm margin: target among the deepest voxels "
                f"({deepest:.1f} mm from the border)")
    flat = np.where(allowed, s, -np.inf)
    idx = np.unravel_index(int(np.argmax(flat)), s.shape)
    voxel = tuple(int(v) for v in idx)
    a = np.asarray(affine, dtype=np.float64)
    point = a @ np.array([*voxel, 1.0])
    reach = int(np.ceil(radius_mm / float(_voxel_sizes(a).min()))) + 1
    box = tuple(slice(max(v - reach, 0), min(v + reach + 1, n)) for v, n in zip(voxel, s.shape))
    ijk = np.indices(tuple(b.stop - b.start for b in box), dtype=np.float64).reshape(3, -1)
    ijk += np.array([b.start for b in box], dtype=np.float64)[:, None]
    world = (a[:3, :3] @ ijk).T + a[:3, 3]
    region = np.zeros(s.shape, dtype=bool)
    region[box] = (np.linalg.norm(world - point[:3], axis=1) <= radius_mm).reshape(region[box].shape)
    region &= m
    return BiopsyTarget(
        method=method, voxel=voxel, point_mm=tuple(float(v) for v in point[:3]),
        margin_mm=float(margin_mm), border_distance_mm=float(dist[voxel]), radius_mm=float(radius_mm),
        region=region, subregion=region.copy() if subregion is None else _mask(subregion, "subregion", s.shape),
        score=float(s[voxel]), fallback=fallback, note=note,
    )


def map_target(
    aggressiveness: np.ndarray,
    tumour_mask: np.ndarray,
    affine: np.ndarray,
    *,
    smooth_fwhm_mm: float = 6.0,
    level: float = 0.5,
    aim: str = "peak",
    method: str = "map",
    **kwargs,
) -> BiopsyTarget:
    """Target from an aggressiveness map, smoothed inside the tumour (``smooth_fwhm_mm``);
    predicted subregion: voxels above ``min + level (max - min)`` of the smoothed map in the
    tumour, largest connected part. ``aim="peak"``: the target is the smoothed map's maximum;
    ``"centre"``: the deepest point of the predicted subregion (signed distance to its border,
    the map's value breaking ties), robust when the subregion's edge is uncertain.
    ``kwargs`` go to :func:`target_from_map`."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if aim not in ("peak", "centre"):
        raise ValueError(f"aim: 'peak' or 'centre', got {aim!r}")
    m = _mask(tumour_mask, "tumour_mask", np.shape(aggressiveness))
    # NaN voxels (no map there, e.g. necrosis left out of the model) are neither smoothed in nor chosen
    valid = m & np.isfinite(np.asarray(aggressiveness, dtype=np.float64))
    if not valid.any():
        raise ValueError(f"{method}: the map is NaN everywhere in the tumour")
    sm = smooth_in_mask(aggressiveness, valid, affine, smooth_fwhm_mm)
    vals = sm[valid]
    lo, hi = float(vals.min()), float(vals.max())
    sub = valid & (sm >= lo + level * (hi - lo))
    sub = _largest_component(sub)
    score = sm
    if aim == "centre":
        span = max(hi - lo, 1e-12)
        score = _signed_depth(sub, m, affine) + 1e-3 * (sm - lo) / span
    return target_from_map(np.where(valid, score, np.nan), m, affine, method=method, subregion=sub, **kwargs)


def suvmax_target(
    suv: np.ndarray, tumour_mask: np.ndarray, affine: np.ndarray, *, iso: float = 0.8,
    method: str = "suvmax", **kwargs,
) -> BiopsyTarget:
    """The routine target: the SUVmax voxel (within the margin); subregion: ``SUV >= iso x
    SUVmax`` inside the tumour. ``kwargs`` go to :func:`target_from_map`."""
    if not 0.0 < iso < 1.0:
        raise ValueError(f"iso must be in (0, 1), got {iso}")
    s = np.asarray(suv, dtype=np.float64)
    m = _mask(tumour_mask, "tumour_mask", s.shape)
    if not m.any():
        raise ValueError(f"{method}: the tumour mask is empty")
    sub = m & (s >= iso * float(np.nanmax(np.where(m, s, np.nan))))
    return target_from_map(np.where(m, s, np.nan), m, affine, method=method, subregion=sub, **kwargs)


def _signed_depth(region: np.ndarray, within: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to the border of ``region`` (positive inside: distance to the nearest
    voxel outside it; negative outside: minus the distance to the nearest region voxel), exact on
    the voxels of ``within`` (a mask containing ``region``), computed in ``within``'s box."""
    sizes = _voxel_sizes(affine)
    out = np.zeros(region.shape, dtype=np.float64)
    box = _bbox(within | region, 1)
    r = region[box]
    inside = ndi.distance_transform_edt(np.pad(r, 1), sampling=sizes)[1:-1, 1:-1, 1:-1]
    outside = ndi.distance_transform_edt(~r, sampling=sizes) if r.any() else np.full(r.shape, np.inf)
    out[box] = inside - outside
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def earliest_ttp_cluster(
    ttp_min: np.ndarray, tumour_mask: np.ndarray, *, n_clusters: int = 3, random_state: int | None = 0,
) -> np.ndarray:
    """Kunz et al. (2011) dynamic hotspot: k-means (k = ``n_clusters``) on the voxel TTPs of the
    tumour; the cluster with the earliest mean TTP, its largest connected part. (X, Y, Z) bool.
    Voxels with an undefined TTP (NaN) belong to no cluster."""
    t = np.asarray(ttp_min, dtype=np.float64)
    m = _mask(tumour_mask, "tumour_mask", t.shape) & np.isfinite(t)
    if m.sum() < n_clusters:
        raise ValueError(f"earliest_ttp: {int(m.sum())} tumour voxels with a TTP, fewer than k={n_clusters}")
    vals = t[m].reshape(-1, 1)
    k = min(n_clusters, len(np.unique(vals)))
    if k < 2:
        return _largest_component(m)
    km = KMeans(k, n_init=4, random_state=random_state).fit(vals)
    first = int(np.argmin(km.cluster_centers_[:, 0]))
    cluster = np.zeros(t.shape, bool)
    cluster[m] = km.labels_ == first
    return _largest_component(cluster)


def earliest_ttp_target(
    ttp_min: np.ndarray, tumour_mask: np.ndarray, affine: np.ndarray, *, n_clusters: int = 3,
    random_state: int | None = 0, method: str = "earliest_ttp", **kwargs,
) -> BiopsyTarget:
    """The classical dynamic hotspot target: the deepest point of the earliest-TTP cluster
    (score: signed distance to the cluster's border, mm, so the target is the cluster's most
    central voxel that meets the margin). ``kwargs`` go to :func:`target_from_map`."""
    m = _mask(tumour_mask, "tumour_mask", np.shape(ttp_min))
    hot = earliest_ttp_cluster(ttp_min, m, n_clusters=n_clusters, random_state=random_state)
    score = np.where(m, _signed_depth(hot, m, affine), np.nan)
    return target_from_map(score, m, affine, method=method, subregion=hot, **kwargs)


def _bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int, alpha: float) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    means = v[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


@dataclass(frozen=True)
class TargetEvaluation:
    """Targets of several methods against the true aggressive subregion.

    Attributes:
        per_exam: one row per (exam, method): ``key``, ``method``, ``hit`` (0/1),
            ``distance_mm``, ``dice``, ``border_distance_mm``, ``fallback``.
        summary: one row per method: ``n``, ``hit_rate`` [``hit_lo``, ``hit_hi``],
            ``distance_mm`` (mean) [``distance_lo``, ``distance_hi``], ``median_distance_mm``,
            ``dice`` (mean) [``dice_lo``, ``dice_hi``], ``fallbacks``; CIs are percentile
            bootstrap over exams at level ``1 - alpha``.
        paired: one row per method other than the reference: ``hit_diff`` (method minus
            reference) [``diff_lo``, ``diff_hi``] (paired bootstrap), ``method_only`` and
            ``reference_only`` (discordant exams), ``mcnemar_p`` (exact, two-sided binomial on
            the discordant pairs).
        reference: the reference method (the routine SUVmax target).
        alpha: 1 - confidence level.
        n_boot: bootstrap resamples.
    """

    per_exam: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    reference: str
    alpha: float
    n_boot: int

    def summary_frame(self) -> pd.DataFrame:
        """The per-method summary joined with the paired comparison to the reference."""
        return self.summary.join(self.paired, how="left")

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`summary_frame` to ``path`` (CSV) and return it."""
        p = Path(path)
        self.summary_frame().to_csv(p)
        return p


def evaluate_targets(
    targets: Mapping[str, Sequence[BiopsyTarget]],
    truths: Sequence[np.ndarray],
    affines: Sequence[np.ndarray],
    *,
    keys: Sequence[str] | None = None,
    reference: str = "suvmax",
    n_boot: int = 2000,
    alpha: float = 0.05,
    random_state: int | None = 0,
) -> TargetEvaluation:
    """Hit rate, distance and Dice of each method's targets (module docstring).

    Args:
        targets: {method: one target per exam, in the order of ``truths``}.
        truths: the true aggressive subregion of each exam, (X, Y, Z) masks.
        affines: each exam's voxel -> world affine (for the distances).
        keys: exam names (default ``exam0``...).
        reference: method the others are compared with (must be in ``targets``).
        n_boot: bootstrap resamples; alpha: 1 - confidence level.
        random_state: seed of the bootstrap.

    Raises:
        ValueError: lengths differ, an empty truth mask, or an unknown reference.
    """
    n = len(truths)
    if len(affines) != n:
        raise ValueError(f"{n} truths but {len(affines)} affines")
    keys = list(keys) if keys is not None else [f"exam{i}" for i in range(n)]
    if len(keys) != n:
        raise ValueError(f"{n} truths but {len(keys)} keys")
    if reference not in targets:
        raise ValueError(f"reference {reference!r} is not one of the methods {sorted(targets)}")
    rows = []
    dist_to_truth = []
    for i, t in enumerate(truths):
        tm = _mask(t, f"truth of {keys[i]}")
        if not tm.any():
            raise ValueError(f"{keys[i]}: the true subregion is empty (leave such exams out)")
        dist_to_truth.append(ndi.distance_transform_edt(~tm, sampling=_voxel_sizes(affines[i])))
    for method, tlist in targets.items():
        if len(tlist) != n:
            raise ValueError(f"{method}: {len(tlist)} targets for {n} exams")
        for i, tg in enumerate(tlist):
            tm = np.asarray(truths[i]) > 0
            if tg.subregion.shape != tm.shape:
                raise ValueError(f"{method} on {keys[i]}: grid {tg.subregion.shape} != truth {tm.shape}")
            rows.append({
                "key": keys[i], "method": method, "hit": int(tm[tg.voxel]),
                "distance_mm": float(dist_to_truth[i][tg.voxel]), "dice": dice(tg.subregion, tm),
                "border_distance_mm": tg.border_distance_mm, "fallback": bool(tg.fallback),
            })
    per_exam = pd.DataFrame(rows)
    rng = np.random.default_rng(random_state)
    summ = []
    for method, g in per_exam.groupby("method", sort=False):
        hit_lo, hit_hi = _bootstrap_ci(g["hit"].to_numpy(), rng, n_boot, alpha)
        d_lo, d_hi = _bootstrap_ci(g["distance_mm"].to_numpy(), rng, n_boot, alpha)
        c_lo, c_hi = _bootstrap_ci(g["dice"].to_numpy(), rng, n_boot, alpha)
        summ.append({
            "method": method, "n": len(g), "hit_rate": g["hit"].mean(), "hit_lo": hit_lo, "hit_hi": hit_hi,
            "distance_mm": g["distance_mm"].mean(), "distance_lo": d_lo, "distance_hi": d_hi,
            "median_distance_mm": g["distance_mm"].median(),
            "dice": g["dice"].mean(), "dice_lo": c_lo, "dice_hi": c_hi, "fallbacks": int(g["fallback"].sum()),
        })
    summary = pd.DataFrame(summ).set_index("method")
    ref = per_exam[per_exam["method"] == reference].set_index("key")["hit"].reindex(keys).to_numpy()
    paired = []
    idx = rng.integers(0, n, size=(n_boot, n))
    for method in targets:
        if method == reference:
            continue
        h = per_exam[per_exam["method"] == method].set_index("key")["hit"].reindex(keys).to_numpy()
        diff = (h - ref).astype(np.float64)
        boots = diff[idx].mean(axis=1)
        b, c = int(((h == 1) & (ref == 0)).sum()), int(((h == 0) & (ref == 1)).sum())
        p = float(binomtest(b, b + c, 0.5).pvalue) if b + c > 0 else 1.0
        paired.append({
            "method": method, "hit_diff": float(diff.mean()), "diff_lo": float(np.quantile(boots, alpha / 2)),
            "diff_hi": float(np.quantile(boots, 1 - alpha / 2)), "method_only": b, "reference_only": c,
            "mcnemar_p": p,
        })
    paired_df = (pd.DataFrame(paired).set_index("method") if paired else
                 pd.DataFrame(columns=["hit_diff", "diff_lo", "diff_hi", "method_only", "reference_only",
                                       "mcnemar_p"]))
    return TargetEvaluation(per_exam=per_exam, summary=summary, paired=paired_df, reference=reference,
                            alpha=alpha, n_boot=n_boot)
