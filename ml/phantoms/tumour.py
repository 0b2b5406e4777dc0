"""Glioma geometry in template space: irregular lesion, aggressive subregion, necrosis, oedema.

Shapes are level sets of smoothed Gaussian noise added to a distance field (never spheres), drawn
in a local box of the template grid. Volumes follow those of amino-acid PET metabolic tumour
volumes (median about 15-30 mL, Ginet et al. 2020; Zaragori et al. 2020). The aggressive subregion
is the part of the lesion that a biopsy should target: a connected blob covering 8-30 % of the
metabolic tumour (Kunz et al. 2011 found dynamic hot spots of this kind in about half of the
suspected low-grade gliomas). Necrosis is central and frequent in glioblastoma; oedema is a
shell of mostly white matter around the lesion; enhancement is a rim around necrosis or patches
in the aggressive part, mostly in high grade.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ml.phantoms.anatomy import Template

__all__ = ["Lesion", "COMPARTMENTS", "draw_centre", "draw_lesion"]

#: Compartment names, in the order of :attr:`Lesion.fractions`.
COMPARTMENTS = ("tumour", "aggressive", "necrosis", "oedema", "cavity", "enhancing")


@dataclass(frozen=True)
class Lesion:
    """Lesion compartments on a box of the template grid.

    Attributes:
        box_origin: template voxel index of the box corner.
        fractions: ``(6, bx, by, bz)`` float32 0/1 maps, see :data:`COMPARTMENTS`; tumour,
            aggressive, necrosis, oedema and cavity are disjoint; ``enhancing`` overlaps them.
        centre_mni: lesion centre (MNI mm).
        side: ``"left"`` or ``"right"`` hemisphere of the tumour.
    """

    box_origin: np.ndarray
    fractions: np.ndarray
    centre_mni: np.ndarray
    side: str

    def volume_ml(self, name: str, voxel_mm: float) -> float:
        """Template-space volume of one compartment (mL, before the patient's scaling)."""
        return float(self.fractions[COMPARTMENTS.index(name)].sum() * voxel_mm**3 / 1000.0)


def draw_centre(rng: np.random.Generator, template: Template) -> tuple[np.ndarray, str]:
    """Pick a lesion centre in the white matter of one cerebral hemisphere, away from the
    striatum and the midline (MNI mm) and return it with the side."""
    side = "left" if rng.random() < 0.5 else "right"
    mm_x_sign = -1.0 if side == "left" else 1.0
    wm_idx = np.argwhere(template.wm > 0.8)
    mm = template.mm(wm_idx.astype(float))
    stri = np.maximum(template.striatum_left, template.striatum_right)
    far_from_striatum = ndi.distance_transform_edt(stri < 0.2)[tuple(wm_idx.T)] * template.voxel_mm > 12
    ok = (mm[:, 0] * mm_x_sign > 18) & (mm[:, 2] > -12) & (mm[:, 2] < 55) & (mm[:, 1] > -85)
    ok &= far_from_striatum
    choices = mm[ok]
    return choices[rng.integers(len(choices))], side


def _noise_field(rng: np.random.Generator, shape: tuple, sigma_vox: float) -> np.ndarray:
    z = ndi.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="wrap")
    return z / max(float(z.std()), 1e-9)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def draw_lesion(
    rng: np.random.Generator,
    template: Template,
    *,
    centre_mni: np.ndarray,
    side: str,
    volume_ml: float,
    aggressive: bool,
    necrosis_fraction: float,
    oedema_mm: float,
    enhancement: str,
    cavity_ml: float = 0.0,
) -> Lesion:
    """Draw an irregular lesion and its compartments.

    Args:
        rng: random generator.
        template: template maps.
        centre_mni: lesion centre (MNI mm).
        side: tumour hemisphere.
        volume_ml: target volume of the metabolic lesion (tumour + aggressive + necrosis).
        aggressive: whether to carve an aggressive subregion.
        necrosis_fraction: fraction of the lesion volume that is necrotic (0 for none).
        oedema_mm: thickness of the FLAIR oedema shell.
        enhancement: ``"rim"``, ``"patchy"`` or ``"none"``.
        cavity_ml: volume of a resection cavity next to the lesion centre (0 for none).
    """
    vox = template.voxel_mm
    radius_mm = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    half = int(np.ceil((radius_mm * 1.9 + oedema_mm + 6.0) / vox))
    c_vox = np.linalg.solve(template.affine[:3, :3], centre_mni - template.affine[:3, 3])
    c_int = np.round(c_vox).astype(int)
    lo = np.maximum(c_int - half, 0)
    hi = np.minimum(c_int + half + 1, np.asarray(template.shape))
    shape = tuple(int(v) for v in hi - lo)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    brain = template.brain[sl] > 0.5
    wm = template.wm[sl]
    ijk = np.indices(shape, dtype=np.float32)
    dist = np.sqrt(sum((ijk[k] + lo[k] - c_vox[k]) ** 2 for k in range(3))) * vox / radius_mm
    noise = _noise_field(rng, shape, sigma_vox=max(1.0, radius_mm / 2.5 / vox))
    # Irregular level set: distance perturbed by smooth noise (about +-35 % of the radius);
    # the threshold is tuned by bisection to reach the requested volume.
    field = dist - 0.35 * noise
    field[~brain] = np.inf
    target_vox = volume_ml * 1000.0 / vox**3
    lo_t, hi_t = 0.2, 3.0
    for _ in range(25):
        mid = 0.5 * (lo_t + hi_t)
        if (field < mid).sum() < target_vox:
            lo_t = mid
        else:
            hi_t = mid
    lesion = _largest(field < hi_t)
    necrosis = np.zeros(shape, bool)
    if necrosis_fraction > 0:
        inner = np.where(lesion, field, np.inf)
        q = np.quantile(inner[lesion], necrosis_fraction)
        necrosis = _largest(inner < q) & lesion
        # keep a viable rim at least one voxel thick
        necrosis &= ndi.binary_erosion(lesion, iterations=1)
    viable = lesion & ~necrosis
    aggr = np.zeros(shape, bool)
    if aggressive and viable.sum() > 8:
        frac = rng.uniform(0.08, 0.30)
        # Hot spot: a second smooth field peaked near a random viable voxel.
        idx = np.argwhere(viable)
        seed_pt = idx[rng.integers(len(idx))]
        d2 = np.sqrt(sum((ijk[k] - seed_pt[k]) ** 2 for k in range(3))) * vox
        hot = -d2 / max(radius_mm, 1.0) + 0.4 * _noise_field(rng, shape, max(1.0, radius_mm / 4 / vox))
        vals = np.where(viable, hot, -np.inf)
        q = np.quantile(vals[viable], 1.0 - frac)
        aggr = _largest(vals >= q) & viable
    tumour = viable & ~aggr
    oedema = np.zeros(shape, bool)
    if oedema_mm > 0:
        dist_out = ndi.distance_transform_edt(~lesion) * vox
        jitter = 1.0 + 0.35 * _noise_field(rng, shape, max(1.0, 8.0 / vox))
        oedema = (dist_out > 0) & (dist_out < oedema_mm * jitter) & brain & (wm + 0.3 * template.gm[sl] > 0.5)
    cavity = np.zeros(shape, bool)
    if cavity_ml > 0:
        r_c = (3.0 * cavity_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        # The cavity sits beside the recurrent lesion (which grows on its rim): lesion wins.
        direction = rng.normal(size=3)
        off = direction / np.linalg.norm(direction) * (0.8 * radius_mm + 0.5 * r_c)
        dc = np.sqrt(sum((ijk[k] + lo[k] - c_vox[k] - off[k] / vox) ** 2 for k in range(3))) * vox / r_c
        cavity = (dc - 0.2 * noise < 1.0) & brain & ~lesion
        oedema &= ~cavity
    oedema &= ~lesion
    enh = np.zeros(shape, bool)
    if enhancement == "rim":
        base = necrosis if necrosis.any() else aggr
        enh = ndi.binary_dilation(base, iterations=max(1, round(3 / vox))) & (tumour | aggr)
        if cavity.any():
            enh |= ndi.binary_dilation(cavity, iterations=1) & (tumour | aggr)
    elif enhancement == "patchy":
        region = aggr if aggr.any() else tumour
        patch = _noise_field(rng, shape, max(1.0, 3.0 / vox))
        enh = region & (patch > 0.6)
    fr = np.stack([tumour, aggr, necrosis, oedema, cavity, enh]).astype(np.float32)
    return Lesion(box_origin=lo, fractions=fr, centre_mni=np.asarray(centre_mni, float), side=side)
