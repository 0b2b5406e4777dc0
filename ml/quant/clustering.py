"""Voxel-wise TAC clustering: k-means on normalised curves, dynamic hotspots (Kunz et al. 2011).

Kunz et al. (Neuro-Oncology 2011;13:307-17) showed that "dynamic hotspots", tumour parts whose
time-activity curves peak early and then decrease, mark the malignant parts of gliomas that look
low-grade on static uptake. Here every tumour voxel's TAC is normalised to its shape, then
clustered with k-means (Lloyd's algorithm, scikit-learn):

* ``normalization="mean"``: ``y / mean_t(y)`` (shape only; default);
* ``"max"``: ``y / max_t(y)``;
* ``"zscore"``: ``(y - mean_t(y)) / std_t(y)``.

Clusters are numbered by kinetic aggressiveness: cluster 0 is the one whose centre peaks
earliest (smallest argmax frame), ties broken by the most negative late change
(mean of the last third of frames minus the peak). The hotspot is cluster 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from sklearn.utils.validation import check_is_fitted

from ml.quant._checks import check_mask, check_volume, voxel_volume_ml
from ml.quant.kinetics import late_slope_suv_per_h, time_to_peak_min

__all__ = ["TACKMeans", "HotspotResult", "normalize_curves", "dynamic_hotspots"]

_NORMALIZATIONS = ("mean", "max", "zscore")


def normalize_curves(curves: np.ndarray, normalization: str = "mean") -> np.ndarray:
    """Normalise curves (N, T) row-wise (see module docstring); flat/zero curves become 0."""
    y = np.asarray(curves, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"curves: expected shape (N, T), got {y.shape}")
    if normalization == "mean":
        den = y.mean(axis=1, keepdims=True)
        num = y
    elif normalization == "max":
        den = y.max(axis=1, keepdims=True)
        num = y
    elif normalization == "zscore":
        den = y.std(axis=1, keepdims=True)
        num = y - y.mean(axis=1, keepdims=True)
    else:
        raise ValueError(f"normalization: one of {_NORMALIZATIONS}, got {normalization!r}")
    safe = np.where(np.abs(den) > 1e-12, den, 1.0)
    return np.where(np.abs(den) > 1e-12, num / safe, 0.0)


class TACKMeans(ClusterMixin, BaseEstimator):
    """k-means on normalised voxel TACs, clusters ordered from most to least aggressive.

    Args:
        n_clusters: number of kinetic clusters k.
        normalization: ``"mean"``, ``"max"`` or ``"zscore"`` (module docstring).
        n_init: k-means restarts.
        random_state: seed or ``numpy.random.Generator``-compatible int, for reproducibility.

    Attributes:
        n_clusters_: clusters used: ``min(n_clusters, number of distinct normalised curves)``.
        cluster_centers_: (k, T) centres in normalised space, ordered (0 = hotspot).
        labels_: (N,) cluster of each training curve.
        inertia_: k-means inertia.
    """

    def __init__(
        self,
        n_clusters: int = 3,
        *,
        normalization: str = "mean",
        n_init: int = 10,
        random_state: int | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.normalization = normalization
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: None = None) -> TACKMeans:
        """Cluster curves ``X`` (N voxels, T frames); returns self."""
        Xn = normalize_curves(X, self.normalization)
        if Xn.shape[0] < self.n_clusters:
            raise ValueError(
                f"X: {Xn.shape[0]} curves for n_clusters={self.n_clusters}; need at least as many"
            )
        # Identical curves (noise-free phantoms, flat regions) can hold fewer distinct shapes
        # than k: use that many clusters instead of returning empty ones.
        n_distinct = len(np.unique(np.round(Xn, 9), axis=0))
        self.n_clusters_ = min(self.n_clusters, n_distinct)
        km = KMeans(n_clusters=self.n_clusters_, n_init=self.n_init, random_state=self.random_state)
        raw_labels = km.fit_predict(Xn)
        centers = km.cluster_centers_
        n_t = centers.shape[1]
        tail = centers[:, -max(1, n_t // 3):].mean(axis=1) - centers.max(axis=1)
        order = np.lexsort((tail, centers.argmax(axis=1)))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        self.cluster_centers_ = centers[order]
        self.labels_ = rank[raw_labels]
        self.inertia_ = float(km.inertia_)
        self._rank = rank
        self.kmeans_ = km
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Ordered cluster index of each curve in ``X`` (N, T)."""
        check_is_fitted(self, "cluster_centers_")
        return self._rank[self.kmeans_.predict(normalize_curves(X, self.normalization))]


@dataclass(frozen=True)
class HotspotResult:
    """Kinetic clusters of a tumour.

    Attributes:
        labels: (X, Y, Z) int16, 0 outside the mask, ``c + 1`` for cluster c (1 = hotspot).
        hotspot_mask: (X, Y, Z) bool, voxels of cluster 0.
        cluster_tacs: (k, T) mean SUV TAC of each cluster.
        cluster_ttp_min: (k,) TTP of each cluster's mean TAC.
        cluster_slope_suv_per_h: (k,) late slope of each mean TAC.
        cluster_volume_ml: (k,) volume of each cluster.
    """

    labels: np.ndarray
    hotspot_mask: np.ndarray
    cluster_tacs: np.ndarray
    cluster_ttp_min: np.ndarray
    cluster_slope_suv_per_h: np.ndarray
    cluster_volume_ml: np.ndarray

    def to_dict(self) -> dict[str, list]:
        """JSON-safe per-cluster summary (not the label volume)."""
        return {
            "cluster_tacs": self.cluster_tacs.tolist(),
            "cluster_ttp_min": self.cluster_ttp_min.tolist(),
            "cluster_slope_suv_per_h": self.cluster_slope_suv_per_h.tolist(),
            "cluster_volume_ml": self.cluster_volume_ml.tolist(),
        }


def dynamic_hotspots(
    pet_dynamic: np.ndarray,
    tumor_mask: np.ndarray,
    mid_times_s: np.ndarray,
    *,
    affine: np.ndarray,
    n_clusters: int = 3,
    normalization: str = "mean",
    slope_window_min: tuple[float, float] = (10.0, 30.0),
    random_state: int | None = 0,
) -> HotspotResult:
    """Cluster the tumour's voxel TACs and return the kinetic subregions (module docstring).

    Args:
        pet_dynamic: dynamic SUV (X, Y, Z, T).
        tumor_mask: tumour mask (X, Y, Z), at least ``n_clusters`` voxels.
        mid_times_s: frame mid-times (T,), s.
        affine: voxel-to-world affine, for the cluster volumes.
        n_clusters: k (fewer when the tumour holds fewer distinct curve shapes).
        normalization: curve normalisation.
        slope_window_min: late window of the per-cluster slopes.
        random_state: k-means seed.
    """
    arr = check_volume(pet_dynamic, "pet_dynamic", ndim=4)
    m = check_mask(tumor_mask, "tumor_mask", arr.shape[:3])
    curves = arr[m]
    est = TACKMeans(n_clusters, normalization=normalization, random_state=random_state).fit(curves)
    labels = np.zeros(arr.shape[:3], dtype=np.int16)
    labels[m] = est.labels_ + 1
    k = est.n_clusters_
    tacs = np.stack([curves[est.labels_ == c].mean(axis=0) for c in range(k)])
    counts = np.bincount(est.labels_, minlength=k)
    return HotspotResult(
        labels=labels,
        hotspot_mask=labels == 1,
        cluster_tacs=tacs,
        cluster_ttp_min=np.asarray(time_to_peak_min(tacs, mid_times_s)),
        cluster_slope_suv_per_h=np.asarray(
            late_slope_suv_per_h(tacs, mid_times_s, window_min=slope_window_min)
        ),
        cluster_volume_ml=counts * voxel_volume_ml(affine),
    )
