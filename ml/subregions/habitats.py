"""Tumour habitats: clusters of tumour voxels in a feature space shared across patients.

Each tumour voxel of a prepared exam (an :class:`ml.foundation.data.ExamStack` on the common grid)
gets a feature vector (:func:`voxel_features`):

* ``emb_0 ... emb_{E-1}``: the WP1 encoder's patch embeddings (``ml.foundation.encode`` ->
  ``Embeddings.patches`` of shape (E, gx, gy, gz) with ``patch_affine`` mapping patch index to
  MNI mm of the patch centre), interpolated trilinearly to the voxel centres;
* the voxel-level PET parameters: ``tbr`` (static SUV over the healthy-brain median, the stack's
  ``suv`` channel), ``suv_rel`` (SUV over the tumour's median SUV: where in *this* tumour uptake is
  high), ``ttp_min`` (time to peak of the voxel TAC) and ``slope`` (late slope, SUV/h).

:class:`HabitatModel` (scikit-learn estimator API) standardises the PET parameters, reduces the
embedding block with PCA (fitted on the cohort), and clusters the pooled tumour voxels of a
cohort with a Gaussian mixture (k by BIC) or k-means (k by silhouette). Habitats are numbered by a
stated rule so that habitat h means the same thing in every patient: by default ascending mean
``ttp_min`` (habitat 0 = the earliest-peaking tissue, the kinetic hotspot of Kunz et al. 2011),
``order_by``/``ascending`` change it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "CONTEXT_FEATURES",
    "DYNAMIC_FEATURES",
    "HabitatModel",
    "StackLike",
    "VoxelFeatures",
    "embeddings_to_voxels",
    "habitat_volume",
    "pooled_frame",
    "voxel_features",
]

#: Voxel-level PET parameters :func:`voxel_features` can add (module docstring).
DYNAMIC_FEATURES = ("tbr", "suv_rel", "ttp_min", "slope")
#: Optional neighbourhood features (Gaussian smoothing inside the tumour, FWHM ``CONTEXT_FWHM_MM``):
#: ``tbr_local`` and ``ttp_local``, the local means of TBR and TTP.
CONTEXT_FEATURES = ("tbr_local", "ttp_local")
CONTEXT_FWHM_MM = 8.0
#: Index of the static TBR channel in ExamStack.image (ml.foundation.data.CHANNELS).
_SUV_CHANNEL = 2


class StackLike(Protocol):
    """What this package reads from an :class:`ml.foundation.data.ExamStack`."""

    key: str
    image: np.ndarray
    affine: np.ndarray
    suv: np.ndarray
    ttp_min: np.ndarray | None
    slope_suv_per_h: np.ndarray | None
    masks: dict[str, np.ndarray]
    meta: dict[str, str]


@dataclass(frozen=True)
class VoxelFeatures:
    """Feature vectors of the voxels inside one exam's mask.

    Attributes:
        key: the exam (``sub-X/ses-Y``).
        frame: (N, F) features, one row per voxel, columns named (module docstring).
        ijk: (N, 3) int voxel indices of the rows on the exam's grid.
        shape: the grid shape (X, Y, Z).
        affine: (4, 4) voxel -> world (MNI) mm.
    """

    key: str
    frame: pd.DataFrame
    ijk: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray

    def to_volume(self, values: np.ndarray, fill: float = 0.0, dtype: Any = np.float32) -> np.ndarray:
        """Scatter per-voxel ``values`` (N,) back onto the grid (X, Y, Z), ``fill`` elsewhere."""
        v = np.asarray(values)
        if v.shape != (len(self.ijk),):
            raise ValueError(f"{self.key}: expected {len(self.ijk)} values, got shape {v.shape}")
        out = np.full(self.shape, fill, dtype=dtype)
        out[tuple(self.ijk.T)] = v
        return out


def embeddings_to_voxels(
    patches: np.ndarray, patch_affine: np.ndarray, ijk: np.ndarray, affine: np.ndarray
) -> np.ndarray:
    """Trilinear interpolation of patch embeddings at voxel centres.

    Args:
        patches: (E, gx, gy, gz) patch embeddings.
        patch_affine: (4, 4) patch index -> world mm of the patch centre.
        ijk: (N, 3) voxel indices on the exam grid.
        affine: (4, 4) voxel index -> world mm of the exam grid.

    Returns:
        (N, E) float32; voxels beyond the outermost patch centres take the nearest patch's values.
    """
    p = np.asarray(patches, dtype=np.float32)
    if p.ndim != 4:
        raise ValueError(f"patches: expected (E, gx, gy, gz), got shape {p.shape}")
    pts = np.c_[np.asarray(ijk, float), np.ones(len(ijk))] @ np.asarray(affine, float).T
    coords = (pts @ np.linalg.inv(np.asarray(patch_affine, float)).T)[:, :3].T
    return np.stack(
        [ndi.map_coordinates(p[e], coords, order=1, mode="nearest") for e in range(p.shape[0])], axis=1
    ).astype(np.float32)


def voxel_features(
    stack: StackLike,
    *,
    embeddings: Any | None = None,
    dynamic: Sequence[str] = DYNAMIC_FEATURES,
    mask: str = "tumor",
    min_tbr: float | None = None,
) -> VoxelFeatures:
    """Feature vectors of the voxels inside ``stack.masks[mask]`` (module docstring).

    Args:
        stack: a prepared exam (ExamStack or anything with the same attributes).
        embeddings: ``ml.foundation.Embeddings`` of the exam (``patches``, ``patch_affine``), or
            None for PET parameters only.
        dynamic: PET parameters to add, from :data:`DYNAMIC_FEATURES` and :data:`CONTEXT_FEATURES`
            (may be empty when embeddings are given).
        mask: the mask whose voxels are described.
        min_tbr: keep only the mask's voxels with a TBR (the stack's ``suv`` channel) at least
            this (e.g. 1.6, the usual amino-acid PET biological tumour volume threshold, Pauleit
            et al. 2005): the metabolically active tumour, without necrosis. None keeps all.

    Raises:
        ValueError: unknown feature, missing/empty mask, a dynamic parameter the exam lacks, or
            no feature at all.
    """
    unknown = sorted(set(dynamic) - set(DYNAMIC_FEATURES) - set(CONTEXT_FEATURES))
    if unknown:
        raise ValueError(f"dynamic: unknown feature(s) {unknown}; choose from {DYNAMIC_FEATURES + CONTEXT_FEATURES}")
    if embeddings is None and not dynamic:
        raise ValueError(f"{stack.key}: no features requested (no embeddings and no dynamic features)")
    if mask not in stack.masks:
        raise ValueError(f"{stack.key}: no {mask!r} mask (has {sorted(stack.masks)})")
    m = np.asarray(stack.masks[mask]) > 0
    if min_tbr is not None:
        m &= np.asarray(stack.image[_SUV_CHANNEL]) >= min_tbr
    if not m.any():
        raise ValueError(f"{stack.key}: the {mask!r} mask is empty"
                         + (f" above TBR {min_tbr:g}" if min_tbr is not None else ""))
    ijk = np.argwhere(m)
    cols: dict[str, np.ndarray] = {}
    if embeddings is not None:
        emb = embeddings_to_voxels(embeddings.patches, embeddings.patch_affine, ijk, stack.affine)
        for e in range(emb.shape[1]):
            cols[f"emb_{e}"] = emb[:, e]
    suv = np.asarray(stack.suv, dtype=np.float64)[m]
    for name in dynamic:
        if name == "tbr":
            cols[name] = np.asarray(stack.image[_SUV_CHANNEL], dtype=np.float64)[m]
        elif name == "suv_rel":
            med = float(np.median(suv))
            if med <= 0:
                raise ValueError(f"{stack.key}: median tumour SUV is {med}, cannot form suv_rel")
            cols[name] = suv / med
        elif name in CONTEXT_FEATURES:
            from ml.subregions.target import smooth_in_mask

            src = stack.image[_SUV_CHANNEL] if name == "tbr_local" else stack.ttp_min
            if src is None:
                raise ValueError(f"{stack.key}: {name} requested but the exam has no dynamic PET")
            src = np.asarray(src, dtype=np.float64)
            filled = np.where(np.isfinite(src), src, np.nanmedian(src[m]))
            cols[name] = smooth_in_mask(filled, m, stack.affine, CONTEXT_FWHM_MM)[m]
        else:
            src = stack.ttp_min if name == "ttp_min" else stack.slope_suv_per_h
            if src is None:
                raise ValueError(f"{stack.key}: {name} requested but the exam has no dynamic PET")
            vals = np.asarray(src, dtype=np.float64)[m]
            if not np.all(np.isfinite(vals)):
                # A voxel TTP can be undefined (flat curve): the tumour median stands in, stated here.
                vals = np.where(np.isfinite(vals), vals, np.nanmedian(vals))
            cols[name] = vals
    frame = pd.DataFrame(cols)
    return VoxelFeatures(
        key=stack.key, frame=frame, ijk=ijk, shape=tuple(int(s) for s in m.shape),
        affine=np.asarray(stack.affine, float),
    )


class HabitatModel(ClusterMixin, BaseEstimator):
    """Habitats: clusters of tumour voxels pooled over a cohort, ordered by a stated rule.

    Args:
        method: ``"gmm"`` (Gaussian mixture, full covariance; k by the lowest BIC) or
            ``"kmeans"`` (k by the highest silhouette).
        k: fixed number of habitats, or None to choose it in ``k_range``.
        k_range: candidate k when ``k`` is None (each >= 2).
        pca_components: the embedding block (columns ``emb_*``) is reduced to this many principal
            components (whitened: unit variance each, so the block does not drown the PET
            parameters); ignored without embedding columns.
        order_by: column (in raw units) whose habitat mean orders the habitats.
        ascending: habitat 0 has the smallest mean of ``order_by`` (default: earliest TTP).
        silhouette_sample: voxels sampled for the silhouette score (k-means selection).
        random_state: seed of the mixture / k-means initialisation and of the sampling.

    Attributes (after fit):
        n_habitats_: chosen k.
        criterion_: {k: BIC (gmm) or silhouette (kmeans)} over the candidates tried.
        means_: (k, F) habitat means of the input columns in raw units, in habitat order.
        feature_names_in_: the input columns.
    """

    def __init__(
        self,
        method: str = "gmm",
        k: int | None = None,
        k_range: Sequence[int] = (2, 3, 4, 5),
        pca_components: int = 4,
        order_by: str = "ttp_min",
        ascending: bool = True,
        silhouette_sample: int = 3000,
        random_state: int | None = 0,
    ) -> None:
        self.method = method
        self.k = k
        self.k_range = k_range
        self.pca_components = pca_components
        self.order_by = order_by
        self.ascending = ascending
        self.silhouette_sample = silhouette_sample
        self.random_state = random_state

    # -- helpers ---------------------------------------------------------------------------
    def _check_frame(self, X: pd.DataFrame | np.ndarray, *, fitting: bool) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            arr = np.asarray(X, dtype=np.float64)
            if arr.ndim != 2:
                raise ValueError(f"X: expected a 2D table (N, F), got shape {arr.shape}")
            X = pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
        if not fitting:
            missing = [c for c in self.feature_names_in_ if c not in X.columns]
            if missing:
                raise ValueError(f"X lacks the columns the model was fitted on: {missing}")
            X = X[list(self.feature_names_in_)]
        values = X.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            bad = [c for c in X.columns if not np.all(np.isfinite(X[c].to_numpy(dtype=float)))]
            raise ValueError(f"X has NaN or infinite values in columns {bad}")
        return X

    def _transform(self, X: pd.DataFrame) -> np.ndarray:
        parts = []
        if self.emb_cols_:
            parts.append(self.pca_.transform(X[self.emb_cols_].to_numpy(np.float64)))
        if self.other_cols_:
            parts.append(self.scaler_.transform(X[self.other_cols_].to_numpy(np.float64)))
        return np.hstack(parts)

    def _cluster(self, Z: np.ndarray, k: int, seed: int) -> Any:
        if self.method == "gmm":
            return GaussianMixture(k, covariance_type="full", n_init=2, reg_covar=1e-4,
                                   random_state=seed).fit(Z)
        return KMeans(k, n_init=4, random_state=seed).fit(Z)

    # -- estimator API ---------------------------------------------------------------------
    def fit(self, X: pd.DataFrame | np.ndarray, y: Any = None) -> HabitatModel:
        """Fit on the pooled tumour voxels of a cohort (rows of :attr:`VoxelFeatures.frame`).

        Raises:
            ValueError: bad method, k, k_range, order column, or fewer voxels than habitats.
        """
        if self.method not in ("gmm", "kmeans"):
            raise ValueError(f"method: 'gmm' or 'kmeans', got {self.method!r}")
        candidates = [int(self.k)] if self.k is not None else sorted({int(v) for v in self.k_range})
        if not candidates or min(candidates) < 1 or (self.k is None and min(candidates) < 2):
            raise ValueError(f"k must be >= 1 and k_range values >= 2, got k={self.k}, k_range={self.k_range}")
        X = self._check_frame(X, fitting=True)
        if self.order_by not in X.columns:
            raise ValueError(f"order_by={self.order_by!r} is not a column of X ({list(X.columns)[:8]}...)")
        if len(X) < 2 * max(candidates):
            raise ValueError(f"{len(X)} voxels are too few for {max(candidates)} habitats")
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        self.emb_cols_ = [c for c in X.columns if str(c).startswith("emb_")]
        self.other_cols_ = [c for c in X.columns if c not in self.emb_cols_]
        seed = np.random.RandomState(self.random_state).randint(2**31 - 1)
        if self.emb_cols_:
            n = min(self.pca_components, len(self.emb_cols_), len(X))
            self.pca_ = PCA(n, whiten=True, random_state=seed).fit(X[self.emb_cols_].to_numpy(np.float64))
        if self.other_cols_:
            self.scaler_ = StandardScaler().fit(X[self.other_cols_].to_numpy(np.float64))
        Z = self._transform(X)
        rng = np.random.RandomState(seed)
        self.criterion_: dict[int, float] = {}
        fitted: dict[int, Any] = {}
        for k in candidates:
            est = self._cluster(Z, k, seed)
            fitted[k] = est
            if len(candidates) == 1:
                continue
            if self.method == "gmm":
                self.criterion_[k] = float(est.bic(Z))
            else:
                labels = est.labels_
                idx = rng.choice(len(Z), size=min(self.silhouette_sample, len(Z)), replace=False)
                ok = len(np.unique(labels[idx])) > 1
                self.criterion_[k] = float(silhouette_score(Z[idx], labels[idx])) if ok else -1.0
        if len(candidates) == 1:
            best = candidates[0]
        elif self.method == "gmm":
            best = min(self.criterion_, key=self.criterion_.get)
        else:
            best = max(self.criterion_, key=self.criterion_.get)
        self.estimator_ = fitted[best]
        raw = self.estimator_.predict(Z)
        means_raw = np.stack([
            X[raw == c].mean(axis=0).to_numpy() if np.any(raw == c) else np.full(X.shape[1], np.nan)
            for c in range(best)
        ])
        key = means_raw[:, list(X.columns).index(self.order_by)]
        key = np.where(np.isfinite(key), key, np.inf if self.ascending else -np.inf)
        order = np.argsort(key if self.ascending else -key, kind="stable")
        self.rank_ = np.empty(best, dtype=int)
        self.rank_[order] = np.arange(best)
        self.order_ = order
        self.means_ = means_raw[order]
        self.n_habitats_ = best
        self.labels_ = self.rank_[raw]
        return self

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Habitat index (0 .. k-1, in the model's order) of each row, shape (N,)."""
        check_is_fitted(self, "estimator_")
        Z = self._transform(self._check_frame(X, fitting=False))
        return self.rank_[self.estimator_.predict(Z)]

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """(N, k) habitat membership: mixture posteriors (gmm) or one-hot labels (kmeans)."""
        check_is_fitted(self, "estimator_")
        Z = self._transform(self._check_frame(X, fitting=False))
        if self.method == "gmm":
            return self.estimator_.predict_proba(Z)[:, self.order_]
        return np.eye(self.n_habitats_)[self.rank_[self.estimator_.predict(Z)]]

    def means_frame(self) -> pd.DataFrame:
        """Habitat means in raw units, one row per habitat (in order), one column per feature."""
        check_is_fitted(self, "estimator_")
        return pd.DataFrame(self.means_, columns=list(self.feature_names_in_)).rename_axis("habitat")


def habitat_volume(model: HabitatModel, features: VoxelFeatures) -> np.ndarray:
    """Habitat label volume (X, Y, Z) int16: 0 outside the mask, ``h + 1`` for habitat h."""
    labels = model.predict(features.frame)
    return features.to_volume(labels + 1, fill=0, dtype=np.int16)


def pooled_frame(features: Sequence[VoxelFeatures], *, max_voxels: int | None = 2000,
                 random_state: int | None = 0) -> pd.DataFrame:
    """Rows of several exams stacked for :meth:`HabitatModel.fit`, at most ``max_voxels`` per exam
    (sampled without replacement, so that large tumours do not dominate the habitats)."""
    if not features:
        raise ValueError("pooled_frame: no exams given")
    rng = np.random.default_rng(random_state)
    parts = []
    for f in features:
        n = len(f.frame)
        if max_voxels is not None and n > max_voxels:
            parts.append(f.frame.iloc[np.sort(rng.choice(n, max_voxels, replace=False))])
        else:
            parts.append(f.frame)
    cols = list(parts[0].columns)
    for f, p in zip(features, parts):
        if list(p.columns) != cols:
            raise ValueError(f"pooled_frame: {f.key} has columns {list(p.columns)}, expected {cols}")
    return pd.concat(parts, ignore_index=True)

