"""Healthy anatomy of the synthetic patients: MNI152 template, striatum, deformation, grids.

The template is the MNI ICBM152 2009 brain that nilearn ships inside its package (T1, grey and
white matter probability maps, brain mask; no download). The striatum is not in those files and
no atlas may be downloaded, so caudate and putamen are placed from their MNI coordinates as smooth
ellipsoids (centres and semi-axes from the Harvard-Oxford / AAL atlases' extents, see
``docs/phantoms.md``) restricted to grey matter; they are warped together with the brain.

Every patient gets a global anisotropic scaling and a smooth random displacement field (a few mm),
and every exam a rigid head pose. Output images are sampled on their own grid (voxel size,
orientation, small obliquity) by pulling each output voxel back into template space.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "Template",
    "load_template",
    "Warp",
    "draw_warp",
    "Grid",
    "make_grid",
    "rotation",
    "trilinear",
    "upsample_linear",
]

#: Striatal structures in MNI mm: (centre for the right side, semi-axes, rotation deg about z, x).
_STRIATUM = (
    ("caudate_head", (12.5, 13.0, 8.0), (6.0, 10.0, 9.0), (0.0, 0.0)),
    ("caudate_body", (15.5, -4.0, 18.0), (4.0, 11.0, 4.5), (0.0, 25.0)),
    ("putamen", (25.0, 2.0, 1.0), (6.5, 16.0, 10.0), (12.0, 0.0)),
)


@dataclass(frozen=True)
class Template:
    """Template-space maps on the MNI grid (all float32 in [0, 1], same shape).

    Attributes:
        affine: template voxel-to-MNI-mm affine.
        voxel_mm: template voxel size (mm).
        t1: T1 template, normalised to white matter = 1.
        gm, wm, csf: tissue probabilities (csf = brain - gm - wm, clipped).
        brain: brain mask (0/1).
        head: soft tissue shell around the brain (scalp, 0/1).
        striatum_left, striatum_right: caudate + putamen probability per side.
        mni_x: MNI x coordinate of each voxel (mm), for hemispheres.
    """

    affine: np.ndarray
    voxel_mm: float
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    head: np.ndarray
    striatum_left: np.ndarray
    striatum_right: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return self.t1.shape  # type: ignore[return-value]

    def mm(self, ijk: np.ndarray) -> np.ndarray:
        """MNI mm of voxel indices ``(..., 3)``."""
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


def _ellipsoid(mm: np.ndarray, centre: tuple, semi: tuple, rot_deg: tuple, edge_mm: float) -> np.ndarray:
    r = rotation(0.0, np.deg2rad(rot_deg[1]), np.deg2rad(rot_deg[0]))
    d = (mm - np.asarray(centre)) @ r  # into the ellipsoid's frame
    rho = np.sqrt(((d / np.asarray(semi)) ** 2).sum(axis=-1))
    mean_semi = float(np.mean(semi))
    # Smooth edge: logistic over about edge_mm.
    return 1.0 / (1.0 + np.exp((rho - 1.0) * mean_semi / edge_mm))


@lru_cache(maxsize=2)
def load_template(resolution: int = 2) -> Template:
    """Load the nilearn MNI152 template and build the derived maps (cached per process).

    Args:
        resolution: 1 or 2 (mm).

    Raises:
        ValueError: unsupported resolution.
    """
    if resolution not in (1, 2):
        raise ValueError(f"resolution must be 1 or 2 (mm), got {resolution}")
    from nilearn import datasets  # heavy import kept local

    t1_img = datasets.load_mni152_template(resolution=resolution)
    affine = np.asarray(t1_img.affine, dtype=float)
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).dataobj).astype(np.float32)
    gm = np.clip(gm, 0, 1) * brain
    wm = np.clip(wm, 0, 1) * brain
    csf = np.clip(brain - gm - wm, 0, 1).astype(np.float32)
    wm_level = float(np.median(t1[wm > 0.9]))
    t1 = np.clip(t1 / wm_level, 0, 1.5).astype(np.float32)
    vox = float(abs(affine[0, 0]))
    # Scalp shell: brain dilated by ~10 mm, minus brain dilated by ~4 mm (skull is dark on MR
    # and cold on PET).
    inner = ndi.binary_dilation(brain > 0, iterations=max(1, round(4 / vox)))
    outer = ndi.binary_dilation(brain > 0, iterations=max(1, round(10 / vox)))
    head = (outer & ~inner).astype(np.float32)
    ijk = np.indices(t1.shape).reshape(3, -1).T.astype(np.float32)
    mm = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*t1.shape, 3)
    sides = []
    for sign in (-1.0, 1.0):
        s = np.zeros(t1.shape, dtype=np.float32)
        for _, centre, semi, rot in _STRIATUM:
            c = (sign * centre[0], centre[1], centre[2])
            r = (sign * rot[0], rot[1])
            s = np.maximum(s, _ellipsoid(mm, c, semi, r, edge_mm=1.2).astype(np.float32))
        sides.append((s * brain * np.clip(gm + 0.3, 0, 1)).astype(np.float32))
    return Template(
        affine=affine, voxel_mm=vox, t1=t1, gm=gm, wm=wm, csf=csf, brain=brain, head=head,
        striatum_left=sides[0], striatum_right=sides[1],
    )


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix ``Rz @ Ry @ Rx`` for angles in radians."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Warp:
    """A patient's brain shape and an exam's head pose.

    World (scanner) mm ``w`` relates to template mm ``m`` by ``w = R (s * m') + t`` where
    ``m' = m - d(m)`` for a smooth displacement ``d`` given on a coarse grid.

    Attributes:
        scale: anisotropic brain size factor (x, y, z).
        disp: coarse displacement field, shape ``(3, nx, ny, nz)`` in mm.
        disp_origin_mm: MNI mm of the coarse grid's first node.
        disp_step_mm: spacing of the coarse grid (mm).
        pose_rotation: head rotation in the scanner (3x3).
        pose_translation: head translation (mm).
    """

    scale: np.ndarray
    disp: np.ndarray
    disp_origin_mm: np.ndarray
    disp_step_mm: float
    pose_rotation: np.ndarray
    pose_translation: np.ndarray

    def with_pose(
        self, rng: np.random.Generator, *, max_rotation_deg: float = 4.0, max_shift_mm: float = 8.0,
    ) -> Warp:
        """The same brain in a new random head pose (rotation <= 4 deg, shift <= 8 mm by default)."""
        ang = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, size=3))
        return Warp(self.scale, self.disp, self.disp_origin_mm, self.disp_step_mm,
                    rotation(*ang), rng.uniform(-max_shift_mm, max_shift_mm, size=3))

    def mni_to_world_exact(self, mni: np.ndarray, *, iterations: int = 6) -> np.ndarray:
        """Template mm ``(3, N)`` to world mm, the exact inverse of :meth:`world_to_mni` (the
        fixed point ``m0 = m - d(m0)`` by iteration; the displacement is smooth and small, so it
        converges to well under 0.01 mm)."""
        m0 = np.array(mni, dtype=np.float64)
        for _ in range(iterations):
            node = (m0 - self.disp_origin_mm[:, None]) / self.disp_step_mm
            d = np.stack([ndi.map_coordinates(self.disp[k], node, order=1, mode="nearest") for k in range(3)])
            m0 = mni - d
        return self.pose_rotation @ (m0 * self.scale[:, None]) + self.pose_translation[:, None]

    def pose_affine(self) -> np.ndarray:
        """4x4 map of template mm to world mm without the anatomical displacement:
        ``w = R diag(scale) m + t`` (the head pose and brain size; the displacement ``d`` is the
        patient's anatomy, which an affine registration is not meant to remove)."""
        out = np.eye(4)
        out[:3, :3] = self.pose_rotation @ np.diag(self.scale)
        out[:3, 3] = self.pose_translation
        return out

    def world_to_mni(self, world: np.ndarray) -> np.ndarray:
        """Pull world mm ``(3, N)`` back to template mm ``(3, N)``."""
        p = self.pose_rotation.T @ (world - self.pose_translation[:, None])
        m = p / self.scale[:, None]
        node = (m - self.disp_origin_mm[:, None]) / self.disp_step_mm
        d = np.stack([ndi.map_coordinates(self.disp[k], node, order=1, mode="nearest")
                      for k in range(3)])
        return m + d

    def mni_to_world(self, mni: np.ndarray) -> np.ndarray:
        """Approximate forward map of template mm ``(3, N)`` to world mm (displacement ignored
        except to first order), for field-of-view planning and centroids."""
        node = (mni - self.disp_origin_mm[:, None]) / self.disp_step_mm
        d = np.stack([ndi.map_coordinates(self.disp[k], node, order=1, mode="nearest")
                      for k in range(3)])
        return self.pose_rotation @ ((mni - d) * self.scale[:, None]) + self.pose_translation[:, None]


def draw_warp(rng: np.random.Generator, template: Template) -> Warp:
    """Draw a patient's brain shape: scaling ~N(1, 0.04) per axis, displacement up to ~4 mm."""
    step = 16.0
    lo = template.mm(np.zeros(3))
    hi = template.mm(np.asarray(template.shape, dtype=float) - 1)
    n = np.ceil((hi - lo) / step).astype(int) + 1
    raw = rng.standard_normal((3, *n))
    disp = np.stack([ndi.gaussian_filter(raw[k], 1.0, mode="nearest") for k in range(3)])
    disp *= 2.5 / max(float(disp.std()), 1e-6)
    return Warp(
        scale=np.clip(rng.normal(1.0, 0.04, size=3), 0.9, 1.1),
        disp=disp.astype(np.float64),
        disp_origin_mm=lo,
        disp_step_mm=step,
        pose_rotation=np.eye(3),
        pose_translation=np.zeros(3),
    )


_AXIS_SIGN = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True)
class Grid:
    """An output voxel grid: shape and voxel-to-world affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def world(self) -> np.ndarray:
        """World mm of every voxel centre, shape ``(3, N)`` (C order of ``shape``)."""
        ijk = np.indices(self.shape, dtype=np.float32).reshape(3, -1)
        return self.affine[:3, :3] @ ijk + self.affine[:3, 3:4]


def make_grid(
    *,
    orientation: str,
    voxel_mm: tuple[float, float, float],
    obliquity: np.ndarray,
    world_points: np.ndarray,
    margin_mm: float,
) -> Grid:
    """A grid with axis codes ``orientation`` (e.g. ``"LPS"``), rotated by ``obliquity``, whose
    field of view covers ``world_points`` ``(3, N)`` plus a margin.

    Raises:
        ValueError: orientation that is not a permutation-free code of R/L, A/P, S/I.
    """
    if len(orientation) != 3 or any(c not in _AXIS_SIGN for c in orientation):
        raise ValueError(f"orientation must be 3 letters from RLAPSI, got {orientation!r}")
    axes = [_AXIS_SIGN[c] for c in orientation]
    if [a for a, _ in axes] != [0, 1, 2]:
        raise ValueError(f"orientation {orientation!r} must list x, y, z axes in order")
    direction = obliquity @ np.diag([s for _, s in axes])  # columns: unit axis directions
    local = direction.T @ world_points  # coordinates along the grid axes
    lo = local.min(axis=1) - margin_mm
    hi = local.max(axis=1) + margin_mm
    vox = np.asarray(voxel_mm, dtype=float)
    shape = tuple(int(v) for v in np.ceil((hi - lo) / vox).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(vox)
    affine[:3, 3] = direction @ lo
    return Grid(shape=shape, affine=affine)  # type: ignore[arg-type]


def trilinear(stack: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample a channels-first volume ``(C, X, Y, Z)`` at voxel coordinates ``(3, N)``.

    Trilinear interpolation (``scipy.ndimage.map_coordinates``, order 1), zero outside.

    Returns:
        ``(C, N)`` float32.
    """
    out = np.empty((stack.shape[0], coords.shape[1]), np.float32)
    for k in range(stack.shape[0]):
        ndi.map_coordinates(stack[k], coords, output=out[k], order=1, mode="constant", cval=0.0,
                            prefilter=False)
    return out


def upsample_linear(coarse: np.ndarray, step: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Linearly interpolate ``(C, a, b, c)`` values given at every ``step``-th voxel of a grid to
    the full grid ``shape`` (separable, exact for fields that are linear in the voxel index)."""
    out = coarse
    for axis, n in enumerate(shape):
        pos = np.arange(n, dtype=np.float32) / step
        i0 = np.minimum(np.floor(pos).astype(int), out.shape[axis + 1] - 2)
        f = (pos - i0).reshape([-1 if k == axis else 1 for k in range(3)])
        a = np.take(out, i0, axis=axis + 1)
        b = np.take(out, i0 + 1, axis=axis + 1)
        out = a + (b - a) * f
    return out.astype(np.float32)
