"""Images in world space and spatial transforms between them (RAS+ mm, ITK's pull convention)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["Image", "Transform", "as_image", "compose", "landmarks_in_mask", "target_registration_error"]

TRANSFORM_KINDS = ("identity", "rigid", "affine")


@dataclass(frozen=True)
class Image:
    """A 3D or 4D array ``(X, Y, Z[, T])`` on a voxel-to-world (RAS+ mm) affine."""

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if np.ndim(self.array) not in (3, 4):
            raise ValueError(f"expected a 3D or 4D array, got shape {np.shape(self.array)}")
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-9:
            raise ValueError("affine: expected a finite, invertible 4x4 voxel-to-world matrix")
        object.__setattr__(self, "affine", aff)


def as_image(obj: Any) -> Image:
    """An :class:`Image` from an ``Image``, an ``(array, affine)`` pair, or any object with
    ``array``/``data`` and ``affine`` attributes (:class:`ml.io.nifti.NiftiVolume`, phantom volumes)."""
    if isinstance(obj, Image):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2:
        return Image(np.asarray(obj[0]), obj[1])
    array = getattr(obj, "array", None)
    if array is None:
        array = getattr(obj, "data", None)
    if array is None or not hasattr(obj, "affine"):
        raise TypeError(f"cannot read an image (array + affine) from {type(obj).__name__}")
    return Image(np.asarray(array), obj.affine)


@dataclass(frozen=True)
class Transform:
    """An affine map of fixed-space world points to moving-space world points (mm, RAS+):
    ``moving = matrix @ fixed`` (homogeneous). ``kind`` says how it was found."""

    matrix: np.ndarray
    kind: str = "affine"

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or not np.allclose(m[3], [0, 0, 0, 1]):
            raise ValueError("matrix: expected a finite homogeneous 4x4 matrix")
        if abs(np.linalg.det(m[:3, :3])) < 1e-6:
            raise ValueError("matrix: singular linear part")
        if self.kind not in TRANSFORM_KINDS:
            raise ValueError(f"kind: one of {TRANSFORM_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "matrix", m)

    @classmethod
    def identity(cls) -> Transform:
        return cls(np.eye(4), kind="identity")

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map world points ``(N, 3)`` of the fixed space to the moving space."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        return pts @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def inverse(self) -> Transform:
        return Transform(np.linalg.inv(self.matrix), kind=self.kind)

    def rotation_deg(self) -> float:
        """Angle (degrees) of the rotation closest to the linear part (polar decomposition)."""
        u, _, vt = np.linalg.svd(self.matrix[:3, :3])
        r = u @ vt
        return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ``{"kind", "matrix"}`` (4x4 list)."""
        return {"kind": self.kind, "matrix": np.round(self.matrix, 8).tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transform:
        return cls(np.asarray(data["matrix"], dtype=np.float64), kind=data.get("kind", "affine"))


def compose(first: Transform, second: Transform) -> Transform:
    """The map ``x -> second(first(x))``: ``compose(t1c_from_template, pet_from_t1c)`` is
    ``pet_from_template``."""
    kinds = {first.kind, second.kind} - {"identity"}
    kind = "identity" if not kinds else ("rigid" if kinds == {"rigid"} else "affine")
    return Transform(second.matrix @ first.matrix, kind=kind)


def landmarks_in_mask(mask: np.ndarray, affine: np.ndarray, *, n: int = 200, erode_mm: float = 10.0,
                      seed: int = 0) -> np.ndarray:
    """``n`` world points (N, 3) drawn uniformly inside ``mask`` eroded by ``erode_mm`` (so that
    they lie well inside the brain), reproducibly from ``seed``."""
    m = np.asarray(mask) > 0
    vox = float(np.abs(np.linalg.det(np.asarray(affine)[:3, :3])) ** (1 / 3))
    it = max(0, int(round(erode_mm / vox)))
    inner = ndimage.binary_erosion(m, iterations=it) if it else m
    idx = np.argwhere(inner if inner.any() else m)
    if idx.size == 0:
        raise ValueError("landmarks_in_mask: the mask is empty")
    rng = np.random.default_rng(seed)
    pick = idx[rng.choice(len(idx), size=min(n, len(idx)), replace=False)]
    return pick @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def target_registration_error(true: Transform, estimated: Transform, points: np.ndarray) -> np.ndarray:
    """Distance (mm) between where ``true`` and ``estimated`` send each point ``(N, 3)``.

    The points are in the fixed space of both transforms (e.g. template landmarks for a
    ``t1c_from_template`` registration, MRI landmarks for ``pet_from_t1c``).
    """
    return np.linalg.norm(true.apply(points) - estimated.apply(points), axis=1)
