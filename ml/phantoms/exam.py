"""One synthetic patient and the rendering of one of their exams (PET + MRI) in memory.

``draw_patient`` draws everything random about a patient from ``SeedSequence([seed, index])``:
labels, brain shape, tumour location, both lesions and all tissue curves. ``render_exam`` turns a
patient and a time point into images on the site's grids:

* PET: compartment weight maps are pulled from template space onto the PET grid, blurred by the
  scanner PSF (linear, so blurring the weights equals blurring the activity), combined with each
  compartment's frame-averaged TAC, given frame-duration- and count-scaled correlated noise,
  multiplied by the site's calibration offset and converted to Bq/mL with dose and weight.
* MRI: T1w, T1w after gadolinium, T2w and FLAIR from tissue and lesion intensities, with a
  multiplicative bias field and noise.

``make_exam`` is the shortcut for unit tests of other modules: one exam, nothing written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from ml.phantoms.anatomy import (
    Grid,
    Template,
    Warp,
    draw_warp,
    load_template,
    make_grid,
    rotation,
    trilinear,
    upsample_linear,
)
from ml.phantoms.clinical import PatientLabels, draw_labels
from ml.phantoms.kinetics import Tac, frame_means, tac_for_ttp
from ml.phantoms.sites import SiteProfile, site_profile
from ml.phantoms.tumour import COMPARTMENTS, Lesion, draw_centre, draw_lesion

__all__ = [
    "TIMEPOINTS",
    "Volume",
    "ExamTruth",
    "Exam",
    "PatientModel",
    "draw_patient",
    "render_exam",
    "make_exam",
    "preload",
]

TIMEPOINTS = ("initial_diagnosis", "suspected_recurrence")
F18_HALF_LIFE_MIN = 109.77  # min (NIST / DDEP)
_PET_COMPARTMENTS = ("healthy", "striatum", "scalp", *COMPARTMENTS[:5])
#: MR intensities relative to white matter (T1w, FLAIR, T2w) for tumour compartments.
_MR_LESION = {
    "tumour": (0.62, 1.45, 1.70),
    "aggressive": (0.58, 1.50, 1.60),
    "necrosis": (0.35, 0.80, 2.00),
    "oedema": (0.80, 1.40, 1.80),
    "cavity": (0.22, 0.12, 2.20),
}


@dataclass(frozen=True)
class Volume:
    """An image: array indexed ``(X, Y, Z[, T])`` and its voxel-to-world (RAS+ mm) affine."""

    data: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class ExamTruth:
    """What the generator set for one exam (physical values, before calibration error).

    Attributes:
        suv_background: SUV of healthy tissue of weight 1 (grey matter has 1.2, white 0.75).
        suv_background_region: expected SUVmean of the background mask (noiseless, no PSF).
        suv_striatum: SUV of pure striatum in the static window.
        suv_tumour: static SUV of the non-aggressive metabolic tumour (``nan`` if none).
        suv_aggressive: static SUV of the aggressive subregion (``nan`` if none).
        suv_max: true tumour SUVmax (max of the compartments present).
        tbr_max: ``suv_max / suv_background_region``.
        ts_max: ``suv_max / suv_striatum``.
        ttp_min: time to peak of the volume-weighted tumour TAC (min).
        ttp_aggressive_min: time to peak of the aggressive subregion TAC (min, ``nan`` if none).
        slope_per_h: late slope of the tumour TAC over the static window (% per hour).
        tumour_volume_ml: metabolic tumour volume in the patient (mL).
        aggressive_centroid_mm: world (RAS mm) centroid of the aggressive subregion or ``None``.
        aggressive_pattern: ``static`` (the aggressive subregion is hotter than the rest of the
            tumour: the static SUVmax lies in it), ``dynamic`` (early peak and washout at static
            uptake no higher than the rest: only the dynamics show it) or ``none``.
        calibration: the site's calibration factor applied to the images.
        injected_mbq: injected activity (MBq).
        body_weight_kg: body weight (kg).
    """

    suv_background: float
    suv_background_region: float
    suv_striatum: float
    suv_tumour: float
    suv_aggressive: float
    suv_max: float
    tbr_max: float
    ts_max: float
    ttp_min: float
    ttp_aggressive_min: float
    slope_per_h: float
    tumour_volume_ml: float
    aggressive_centroid_mm: tuple[float, float, float] | None
    calibration: float
    injected_mbq: float
    body_weight_kg: float
    aggressive_pattern: str = "none"


@dataclass(frozen=True)
class Exam:
    """One imaging time point of one patient, in memory.

    Attributes:
        labels: the patient's clinical truth.
        site: the site profile.
        session_id: ``ses-01`` (initial diagnosis) or ``ses-02`` (suspected recurrence).
        timepoint: one of :data:`TIMEPOINTS`.
        day: days since the first exam.
        pet_dynamic: 4D PET (Bq/mL), frames on the last axis.
        pet_static: 3D static PET (Bq/mL).
        pet_static_noiseless: the static image without noise (Bq/mL, with PSF unless disabled).
        frame_start_s: start of each frame (s from injection).
        frame_duration_s: duration of each frame (s).
        pet_masks: ``tumor``, ``aggressive``, ``striatum``, ``background`` (uint8, PET grid).
        t1w, t1c, t2w, flair: MR volumes (float32, arbitrary units) or ``None``.
        anat_masks: ``tumor``, ``aggressive``, ``necrosis``, ``oedema``, ``enhancing`` (T1w grid).
        time_zero: clock time of injection ``hh:mm:ss``.
        truth: the set values.
        true_transforms: with opt-in head motion (``site.head_motion``), the true spatial maps as
            4x4 world-to-world matrices (RAS mm, ``x_first = M @ x_second`` for ``first_from_second``):
            ``pet_from_mri`` (rigid, exact: the same anatomy in two head positions),
            ``mri_from_template`` and ``pet_from_template`` (the least-squares affine of the true
            pose + anatomy map over the template brain: what an affine registration should
            find), ``*_from_template_pose`` (head pose and brain size only, ``w = R diag(s) m + t``).
            ``None`` without head motion.
    """

    labels: PatientLabels
    site: SiteProfile
    session_id: str
    timepoint: str
    day: int
    pet_dynamic: Volume
    pet_static: Volume
    pet_static_noiseless: Volume
    frame_start_s: tuple[float, ...]
    frame_duration_s: tuple[float, ...]
    pet_masks: dict[str, np.ndarray]
    t1w: Volume | None
    t1c: Volume | None
    t2w: Volume | None
    flair: Volume | None
    anat_masks: dict[str, np.ndarray]
    time_zero: str
    truth: ExamTruth
    true_transforms: dict[str, np.ndarray] | None = None

    @property
    def diagnosis(self) -> str:
        """``progression`` / ``treatment_related`` at suspected recurrence, else ``n/a``."""
        return self.labels.diagnosis if self.timepoint == "suspected_recurrence" else "n/a"

    @property
    def diagnosis_basis(self) -> str:
        """How the diagnosis was established (``n/a`` at initial diagnosis)."""
        return self.labels.diagnosis_basis if self.timepoint == "suspected_recurrence" else "n/a"

    @property
    def suv_factor(self) -> float:
        """Bq/mL to SUVbw: ``weight [g] / dose [Bq]`` (tissue density 1 g/mL)."""
        return self.truth.body_weight_kg * 1000.0 / (self.truth.injected_mbq * 1e6)


@dataclass(frozen=True)
class ExamPlan:
    """Random choices of one exam that do not depend on rendering."""

    lesion: Lesion
    tacs: dict[str, Tac]
    suv: dict[str, float]
    dose_mbq: float
    time_zero: str
    seed: np.random.SeedSequence
    aggressive_pattern: str = "none"


@dataclass(frozen=True)
class PatientModel:
    """Everything drawn for one patient; ``render_exam`` makes images from it."""

    labels: PatientLabels
    site: SiteProfile
    resolution: int
    warp: Warp
    plans: dict[str, ExamPlan] = field(default_factory=dict)


#: Probability, by WHO grade, that the aggressive focus of a glioma with rising kinetics is a dynamic
#: hotspot (early peak and washout, static uptake like the rest of the tumour) rather than a static
#: one (hotter than the rest). Kunz et al. 2011 (Neuro-Oncol 13:307) found such TTP hotspots with
#: anaplastic histology in gliomas whose static FET uptake looked homogeneous; grade 3 is likelier.
DYNAMIC_HOTSPOT_PROBABILITY = {2: 0.35, 3: 0.6, 4: 0.5}
#: Static SUV of a dynamic hotspot relative to the rest of the tumour.
DYNAMIC_HOTSPOT_STATIC_RATIO = (0.85, 1.0)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.lognormal(np.log(median), sigma), lo, hi))


def _tumour_tac(rng: np.random.Generator, *, early: bool, aggressive: bool) -> Tac:
    """Curve shape of tumour tissue (unit amplitude).

    ``early``: IDH-wildtype / progressing high-grade kinetics, early peak then washout.
    Otherwise: IDH-mutant or treatment-related kinetics, mostly rising or late peak.
    """
    if early:
        ttp = _lognormal(rng, 4.0 if not aggressive else 3.2, 0.55, 1.2, 40.0)
        return tac_for_ttp(ttp, rng.uniform(0.005, 0.015) * (1.2 if aggressive else 1.0))
    if aggressive:
        return tac_for_ttp(_lognormal(rng, 9.0, 0.5, 2.0, 40.0), rng.uniform(0.004, 0.012))
    if rng.random() < 0.6:
        return Tac(1.0, rng.uniform(2.0, 6.0), -rng.uniform(0.0, 0.012))
    return tac_for_ttp(_lognormal(rng, 11.0, 0.5, 2.0, 60.0), rng.uniform(0.002, 0.008))


def _plan_exam(
    rng: np.random.Generator,
    template: Template,
    labels: PatientLabels,
    site: SiteProfile,
    *,
    timepoint: str,
    centre: np.ndarray,
    side: str,
    baseline: dict[str, float],
    seed: np.random.SeedSequence,
    initial_volume: float,
) -> ExamPlan:
    grade = labels.who_grade
    idh_wt = labels.idh == "wildtype"
    window = site.static_window_min
    if timepoint == "initial_diagnosis":
        volume = _lognormal(rng, 25.0 if grade == 4 else 15.0, 0.6, 2.0, 100.0)
        if grade == 4:
            nec = rng.uniform(0.1, 0.35) if rng.random() < 0.75 else 0.0
        elif grade == 3:
            nec = rng.uniform(0.05, 0.15) if rng.random() < 0.15 else 0.0
        else:
            nec = 0.0
        oedema = {4: (8, 20), 3: (4, 12), 2: (2, 6)}[grade]
        p_enh = {4: 0.95, 3: 0.5, 2: 0.15}[grade]
        enh = ("rim" if nec > 0 else "patchy") if rng.random() < p_enh else "none"
        lesion = draw_lesion(
            rng, template, centre_mni=centre, side=side, volume_ml=volume, aggressive=True,
            necrosis_fraction=nec, oedema_mm=rng.uniform(*oedema), enhancement=enh,
        )
        tbr = _lognormal(rng, 2.1 if idh_wt else 1.65, 0.3, 1.0, 6.0)
        # Kinetic pattern: mostly early-peaking in IDH-wildtype, mostly rising in IDH-mutant,
        # with the overlap that gives TTP an AUC about 0.79 (Ginet 2020).
        early = bool(rng.random() < (0.87 if idh_wt else 0.25))
        aggressive_present = True
    else:
        progression = labels.diagnosis == "progression"
        volume = _lognormal(rng, 12.0 if progression else 6.0, 0.6, 1.5, 80.0)
        shift = rng.normal(0, 6.0, size=3)
        shift[0] = abs(shift[0]) * (1 if side == "right" else -1)  # away from the midline
        nec = rng.uniform(0.1, 0.3) if rng.random() < (0.5 if progression else 0.4) else 0.0
        enh = ("rim" if nec > 0 else "patchy") if rng.random() < (0.85 if progression else 0.8) else "none"
        cavity = float(np.clip(0.5 * initial_volume, 2.0, 40.0)) if labels.resected else 0.0
        lesion = draw_lesion(
            rng, template, centre_mni=centre + shift, side=side, volume_ml=volume,
            aggressive=progression, necrosis_fraction=nec, oedema_mm=rng.uniform(5, 15),
            enhancement=enh, cavity_ml=cavity,
        )
        # Calibrated so that T/S max separates progression from treatment-related change
        # with AUC about 0.88 (docs/phantoms.md).
        tbr = _lognormal(rng, 2.2, 0.3, 1.0, 6.0) if progression else _lognormal(rng, 1.42, 0.3, 0.9, 4.0)
        if progression:
            early = bool(rng.random() < (0.8 if idh_wt else 0.35))
        else:
            early = bool(rng.random() < 0.2)
        aggressive_present = progression
    b = baseline["suv_background"]
    bg = baseline["bg_tac"]
    tacs = {
        "healthy": Tac(1.0, bg[0], bg[1]).scaled_to(b, window),
        "striatum": Tac(1.0, baseline["str_tau"], baseline["str_lam"]).scaled_to(b * baseline["striatal_ratio"], window),
    }
    tacs["scalp"] = Tac(tacs["healthy"].amplitude * 0.30, bg[0], bg[1])
    tacs["tumour"] = _tumour_tac(rng, early=early, aggressive=False).scaled_to(b * tbr, window)
    if aggressive_present:
        tacs["aggressive"] = _tumour_tac(rng, early=early, aggressive=True).scaled_to(
            b * tbr * rng.uniform(1.2, 1.5), window)
    else:
        tacs["aggressive"] = tacs["tumour"]
    tacs["necrosis"] = Tac(tacs["healthy"].amplitude * 0.35, bg[0], bg[1])
    tacs["oedema"] = Tac(tacs["healthy"].amplitude * 0.90, bg[0], bg[1])
    tacs["cavity"] = Tac(tacs["healthy"].amplitude * 0.10, bg[0], bg[1])
    dose = float(np.clip(rng.normal(site.dose_mbq_per_kg, 0.15) * labels.weight_kg, 80.0, 350.0))
    minutes = int(rng.integers(8 * 60, 16 * 60))
    pattern = "static" if aggressive_present else "none"
    # Dynamic hotspot (Kunz et al. 2011): in a glioma whose curve rises (mostly IDH-mutant), an
    # anaplastic focus shows as an early-peaking, washing-out curve while its late (static) uptake is
    # no higher than the rest of the tumour: the static SUVmax misses it, the dynamics find it. Drawn
    # after every other choice of the exam so that those stay what they were.
    if timepoint == "initial_diagnosis" and not early and rng.random() < DYNAMIC_HOTSPOT_PROBABILITY[grade]:
        tacs["aggressive"] = _tumour_tac(rng, early=True, aggressive=True).scaled_to(
            b * tbr * rng.uniform(*DYNAMIC_HOTSPOT_STATIC_RATIO), window)
        pattern = "dynamic"
    suv = {k: t.mean(*window) for k, t in tacs.items()}
    return ExamPlan(
        lesion=lesion, tacs=tacs, suv=suv, dose_mbq=round(dose, 1),
        time_zero=f"{minutes // 60:02d}:{minutes % 60:02d}:00", seed=seed, aggressive_pattern=pattern,
    )


def draw_patient(
    *,
    seed: int,
    patient_index: int,
    site: int | str | SiteProfile = 0,
    resolution: int = 2,
    participant_id: str | None = None,
) -> PatientModel:
    """Draw one patient (labels, anatomy, both lesions and all curves).

    Args:
        seed: cohort seed.
        patient_index: index of the patient in the cohort; ``(seed, patient_index)`` fixes
            everything about the patient.
        site: site index, name or profile.
        resolution: template resolution in mm (1 or 2).
        participant_id: BIDS ``sub-<label>``; default ``sub-<sitecode>P<index+1>``.

    Raises:
        ValueError: negative seed or index, bad site or resolution.
    """
    if seed < 0 or patient_index < 0:
        raise ValueError(f"seed and patient_index must be >= 0, got {seed}, {patient_index}")
    profile = site_profile(site)
    template = load_template(resolution)
    ss = np.random.SeedSequence([seed, patient_index])
    s_labels, s_anat, s_init, s_rec, r_init, r_rec = ss.spawn(6)
    pid = participant_id or f"sub-{profile.code}P{patient_index + 1:03d}"
    labels = draw_labels(np.random.default_rng(s_labels), participant_id=pid, site=profile.name)
    rng = np.random.default_rng(s_anat)
    warp = draw_warp(rng, template)
    centre, side = draw_centre(rng, template)
    baseline = {
        "suv_background": float(np.clip(rng.normal(1.15, 0.15), 0.75, 1.7)),
        "striatal_ratio": float(np.clip(rng.normal(2.4, 0.3), 1.7, 3.4)),
        "bg_tac": (tac_for_ttp(_lognormal(rng, 4.0, 0.2, 2.0, 8.0), 0.010).tau_min, 0.010),
        "str_tau": float(rng.uniform(4.0, 8.0)),
        "str_lam": float(-rng.uniform(0.0, 0.008)),
    }
    plans: dict[str, ExamPlan] = {}
    init = _plan_exam(
        np.random.default_rng(s_init), template, labels, profile, timepoint="initial_diagnosis",
        centre=centre, side=side, baseline=baseline, seed=r_init, initial_volume=0.0,
    )
    plans["initial_diagnosis"] = init
    vox = template.voxel_mm
    init_vol = sum(init.lesion.volume_ml(n, vox) for n in ("tumour", "aggressive", "necrosis"))
    plans["suspected_recurrence"] = _plan_exam(
        np.random.default_rng(s_rec), template, labels, profile, timepoint="suspected_recurrence",
        centre=centre, side=side, baseline=baseline, seed=r_rec, initial_volume=init_vol,
    )
    return PatientModel(labels=labels, site=profile, resolution=resolution, warp=warp, plans=plans)


#: Channels of the template stacks sampled on each grid.
_PET_CHANNELS = ("healthy", "striatum", "head", "tissue", "near_striatum")
_MR_CHANNELS = ("t1w", "flair", "t2w", "head")


@dataclass(frozen=True)
class _Derived:
    pet_stack: np.ndarray
    mr_stack: np.ndarray
    support: np.ndarray
    brain_corners_mm: np.ndarray


@lru_cache(maxsize=2)
def _derived(resolution: int) -> _Derived:
    t = load_template(resolution)
    stri = np.clip(t.striatum_left + t.striatum_right, 0, 1)
    healthy = (t.gm * 1.2 + t.wm * 0.75 + t.csf * 0.15) * (1.0 - stri)
    near = (ndi.gaussian_filter(stri, 10.0 / t.voxel_mm) > 0.01).astype(np.float32)
    idx = np.argwhere(t.brain > 0)
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    pet = np.stack([healthy, stri, t.head, t.gm + t.wm, near])
    mr = np.stack([t.t1, t.gm * 1.0 + t.wm * 0.72 + t.csf * 0.12, t.gm * 1.0 + t.wm * 0.65 + t.csf * 2.2,
                   t.head])
    return _Derived(
        pet_stack=np.ascontiguousarray(pet, dtype=np.float32),
        mr_stack=np.ascontiguousarray(mr, dtype=np.float32),
        support=ndi.binary_dilation((t.brain + t.head) > 0, iterations=2).astype(np.float32),
        brain_corners_mm=t.mm(corners).T,
    )


def preload(resolution: int = 2) -> None:
    """Load the template and its derived maps into this process's cache (call before forking
    workers so that they share it)."""
    _derived(resolution)


class _Sampler:
    """Pull template-space maps onto an output grid.

    The world-to-template mapping is smooth (affine + a displacement on a 16 mm lattice), so it is
    evaluated on every third voxel and interpolated linearly.
    """

    _STEP = 3

    def __init__(self, template: Template, warp: Warp, grid: Grid, lesion: Lesion) -> None:
        step = self._STEP
        coarse_shape = tuple(-(-n // step) + 1 for n in grid.shape)
        coarse = Grid(shape=coarse_shape, affine=grid.affine @ np.diag([step, step, step, 1.0]))
        inv = np.linalg.inv(template.affine)
        vc_c = inv[:3, :3] @ warp.world_to_mni(coarse.world()) + inv[:3, 3:4]
        self.shape = grid.shape
        self.n = int(np.prod(grid.shape))
        self.template_affine = template.affine
        # Only voxels near the head are sampled: decided on the coarse lattice, dilated by one
        # coarse voxel, expanded to the full grid by nearest neighbour.
        sup = ndi.map_coordinates(_derived(round(template.voxel_mm)).support, vc_c, order=0, mode="constant",
                                  cval=0.0).reshape(coarse_shape) > 0
        sup = ndi.binary_dilation(sup, iterations=1)
        near = [np.minimum(np.round(np.arange(n) / step).astype(int), c - 1) for n, c in zip(grid.shape, coarse_shape)]
        self.inside = np.flatnonzero(sup[np.ix_(*near)].ravel())
        full = upsample_linear(vc_c.reshape(3, *coarse_shape).astype(np.float32), step, grid.shape)
        self.vc = full.reshape(3, -1)[:, self.inside]  # template voxel coordinates, inside only
        lo = lesion.box_origin.astype(np.float32)[:, None]
        hi = lo + np.asarray(lesion.fractions.shape[1:], np.float32)[:, None]
        self.sel = np.flatnonzero(((self.vc >= lo - 1) & (self.vc <= hi)).all(axis=0))
        self.box_vc = self.vc[:, self.sel] - lo
        self.lesion = lesion

    def mni(self, axis: int, fill: float = np.nan) -> np.ndarray:
        """Template mm along one axis for every voxel (``fill`` outside the sampled region)."""
        out = np.full(self.n, fill, np.float32)
        out[self.inside] = self.template_affine[axis, :3] @ self.vc + self.template_affine[axis, 3]
        return out.reshape(self.shape)

    def stack(self, stack: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        out = np.zeros((stack.shape[0], self.n), np.float32)
        out[:, self.inside] = trilinear(stack, self.vc)
        return {n: out[k].reshape(self.shape) for k, n in enumerate(names)}

    def lesion_maps(self) -> dict[str, np.ndarray]:
        flat = np.zeros((len(COMPARTMENTS), self.n), np.float32)
        if self.sel.size:
            flat[:, self.inside[self.sel]] = trilinear(self.lesion.fractions, self.box_vc)
        return {name: flat[k].reshape(self.shape) for k, name in enumerate(COMPARTMENTS)}


def _fov_points(template: Template, warp: Warp) -> np.ndarray:
    return warp.mni_to_world(_derived(round(template.voxel_mm)).brain_corners_mm)


def _jittered_fov(points: np.ndarray, rng: np.random.Generator, jitter_mm: float) -> np.ndarray:
    """Field-of-view points ``(3, N)`` widened by up to ``jitter_mm`` on each side of each axis."""
    lo = points.min(axis=1) - rng.uniform(0, jitter_mm, size=3)
    hi = points.max(axis=1) + rng.uniform(0, jitter_mm, size=3)
    return np.concatenate([points, lo[:, None], hi[:, None]], axis=1)


def _best_affine(warp: Warp, points_mm: np.ndarray) -> np.ndarray:
    """Least-squares affine of the true template-to-world map over template points ``(3, N)``."""
    world = warp.mni_to_world_exact(points_mm)
    coef, *_ = np.linalg.lstsq(np.c_[points_mm.T, np.ones(points_mm.shape[1])], world.T, rcond=None)
    out = np.eye(4)
    out[:3, :] = coef.T
    return out


def _true_transforms(warp_mr: Warp, warp_pet: Warp, template: Template) -> dict[str, np.ndarray]:
    # The target of an affine registration to the template: the least-squares affine of the true
    # (pose + anatomy) map over the brain, on every third template voxel.
    brain = np.argwhere(template.brain[::3, ::3, ::3] > 0) * 3
    pts = template.mm(brain.astype(np.float64)).T
    mri_t, pet_t = _best_affine(warp_mr, pts), _best_affine(warp_pet, pts)
    mri_pose, pet_pose = warp_mr.pose_affine(), warp_pet.pose_affine()
    # The anatomy is the same in both images, so PET-from-MRI is rigid and exact.
    return {"mri_from_template": mri_t, "pet_from_template": pet_t,
            "pet_from_mri": pet_pose @ np.linalg.inv(mri_pose),
            "mri_from_template_pose": mri_pose, "pet_from_template_pose": pet_pose}


@lru_cache(maxsize=16)
def _noise_norm(sigma: tuple[float, float, float]) -> float:
    d = np.zeros((15, 15, 15))
    d[7, 7, 7] = 1.0
    k = ndi.gaussian_filter(d, sigma)
    return float(np.sqrt((k**2).sum()))


def _render_pet(
    model: PatientModel, plan: ExamPlan, warp: Warp, rng: np.random.Generator, *, psf: bool, noise: bool,
    fov_points: np.ndarray | None = None,
) -> tuple[Volume, Volume, Volume, dict[str, np.ndarray], dict]:
    template = load_template(model.resolution)
    der = _derived(model.resolution)
    site = model.site
    obl = rotation(*np.deg2rad(rng.uniform(-1.0, 1.0, size=3)))
    grid = make_grid(orientation=site.pet_orientation, voxel_mm=site.pet_voxel_mm, obliquity=obl,
                     world_points=_fov_points(template, warp) if fov_points is None else fov_points,
                     margin_mm=6.0)
    smp = _Sampler(template, warp, grid, plan.lesion)
    les = smp.lesion_maps()
    repl = np.clip(sum(les[n] for n in COMPARTMENTS[:5]), 0, 1)
    contra = "left" if plan.lesion.side == "right" else "right"
    maps = smp.stack(der.pet_stack, _PET_CHANNELS)
    # Striatum per side from the template-space x of each voxel (MNI x < 0 is left).
    mni_x = smp.mni(0, fill=0.0)
    on_contra = (mni_x > 0) if contra == "right" else (mni_x < 0)
    s_contra = np.where(on_contra, maps["striatum"], 0.0)
    s_ipsi = maps["striatum"] - s_contra
    head = maps["head"]
    weights = {
        "healthy": maps["healthy"] * (1 - repl),
        "striatum": (s_contra + s_ipsi) * (1 - repl),
        "scalp": head,
        **{n: les[n] for n in COMPARTMENTS[:5]},
    }
    voxel = np.asarray(site.pet_voxel_mm)
    names = list(_PET_COMPARTMENTS)
    # truth before PSF
    w_stack = np.stack([weights[n] for n in names]).reshape(len(names), -1)
    starts = np.asarray(site.frame_starts_s)
    durs = np.asarray(site.frame_durations_s)
    tac_frames = frame_means([plan.tacs[n] for n in names], starts, durs)  # (K, F)
    static_suv = np.array([plan.suv[n] for n in names])
    if psf:
        sig = site.psf_fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / voxel
        w_blur = np.stack([ndi.gaussian_filter(weights[n], sig, mode="constant") for n in names])
        w_blur = w_blur.reshape(len(names), -1)
    else:
        w_blur = w_stack
    factor = 1e6 * plan.dose_mbq / (model.labels.weight_kg * 1000.0) * site.calibration  # SUV->Bq/mL
    # Outside the head the reconstruction is (close to) empty: no noise there, so files compress
    # and the frames are only computed inside.
    body = ndi.binary_dilation((weights["healthy"] + weights["striatum"] + head + repl) > 0.01, iterations=2)
    body_flat = body.ravel()
    inside = np.flatnonzero(body_flat)
    static_clean = (static_suv @ w_blur).astype(np.float32)  # (N,)
    dyn_in = (w_blur[:, inside].T @ tac_frames).astype(np.float32)  # (n_inside, F)
    b_ref = plan.suv["healthy"]
    dose_term = np.sqrt(2.0 * model.labels.weight_kg / plan.dose_mbq)  # relative to 2 MBq/kg
    win = site.static_window_min
    if noise:
        nsig = (0.7, 0.7, 0.7)
        z = ndi.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), nsig).ravel()
        z /= _noise_norm(nsig)
        sd = site.static_cov * dose_term * np.sqrt(np.maximum(static_clean, 0.02 * b_ref) * b_ref)
        static = np.where(body_flat, static_clean + sd * z, 0.0)
        # Per frame: variance ~ 1/counts: duration, decay at the frame mid-time, activity.
        mid = (starts + durs / 2.0) / 60.0
        decay = np.exp(np.log(2.0) * mid / F18_HALF_LIFE_MIN)
        rel = np.sqrt((win[1] - win[0]) * 60.0 / durs * decay * np.exp(-np.log(2.0) * np.mean(win) / F18_HALF_LIFE_MIN))
        # Frames get white noise (the static image carries the reconstruction's correlation);
        # smoothing 20+ frames would cost more than the rest of the exam.
        zf = rng.standard_normal(dyn_in.shape, dtype=np.float32)
        zf *= (site.static_cov * dose_term * rel).astype(np.float32)[None, :]
        dyn_in += np.sqrt(np.maximum(dyn_in, np.float32(0.02 * b_ref)) * np.float32(b_ref)) * zf
    else:
        static = np.where(body_flat, static_clean, 0.0)
    dyn_flat = np.zeros((body_flat.size, len(durs)), np.float32)
    dyn_flat[inside] = dyn_in * np.float32(factor)
    dyn_bq = dyn_flat.reshape(*grid.shape, len(durs))
    static_bq = (static * factor).astype(np.float32).reshape(grid.shape)
    clean_bq = (static_clean * factor).astype(np.float32).reshape(grid.shape)
    tumour_frac = les["tumour"] + les["aggressive"] + les["necrosis"]
    mni_z = smp.mni(2, fill=1e6)
    sign = 1.0 if contra == "right" else -1.0
    tissue = maps["tissue"]
    near = maps["near_striatum"]
    cz = plan.lesion.centre_mni[2]
    background = ((mni_x * sign > 8.0) & (tissue >= 0.9) & (near < 0.5) & (np.abs(mni_z - cz) < 25.0)
                  & (repl < 0.01))
    # One voxel away from sulci and ventricles, so that partial volume barely biases its mean.
    background = ndi.binary_erosion(background, iterations=1)
    masks = {
        "tumor": (tumour_frac >= 0.5).astype(np.uint8),
        "aggressive": (les["aggressive"] >= 0.5).astype(np.uint8),
        "striatum": ((s_contra * (1 - repl)) >= 0.5).astype(np.uint8),
        "background": background.astype(np.uint8),
    }
    # Truth values (physical, no PSF, no calibration error).
    bg_region = float((static_suv @ w_stack)[background.ravel()].mean()) if background.any() else float("nan")
    vol_ml = float(tumour_frac.sum() * np.prod(voxel) / 1000.0)
    present = [n for n in ("tumour", "aggressive") if les[n].sum() * np.prod(voxel) > 50.0]
    suv_max = max((plan.suv[n] for n in present), default=float("nan"))
    t_fine = np.linspace(0.0, site.dynamic_end_min, 600)
    vol_w = {n: float(les[n].sum()) for n in ("tumour", "aggressive", "necrosis")}
    curve = sum(vol_w[n] * plan.tacs[n](t_fine) for n in vol_w)
    ttp = float(t_fine[int(np.argmax(curve))]) if np.any(curve) else float("nan")
    ttp_aggr = plan.tacs["aggressive"].ttp_min(site.dynamic_end_min) if "aggressive" in present and \
        plan.tacs["aggressive"] is not plan.tacs["tumour"] else float("nan")
    centroid = None
    if les["aggressive"].sum() > 0 and plan.tacs["aggressive"] is not plan.tacs["tumour"]:
        ijk = np.array(ndi.center_of_mass(les["aggressive"]))
        w = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3]
        centroid = tuple(round(float(v), 2) for v in w)
    tumour_tac = plan.tacs["aggressive"] if "aggressive" in present else plan.tacs["tumour"]
    info = {
        "suv_background_region": bg_region,
        "suv_max": suv_max,
        "ttp_min": ttp,
        "ttp_aggressive_min": ttp_aggr,
        "slope_per_h": tumour_tac.slope_per_h(win),
        "tumour_volume_ml": vol_ml,
        "aggressive_centroid_mm": centroid,
    }
    return (Volume(dyn_bq, grid.affine), Volume(static_bq, grid.affine), Volume(clean_bq, grid.affine),
            masks, info)


def _bias(rng: np.random.Generator, shape: tuple[int, int, int], amplitude: float) -> np.ndarray:
    parts = []
    for n in shape:
        u = np.linspace(-1, 1, n)
        a = rng.uniform(-1, 1, size=2) * amplitude / 2.0
        parts.append(a[0] * u + a[1] * (u**2 - 1.0 / 3.0))
    return np.exp(parts[0][:, None, None] + parts[1][None, :, None] + parts[2][None, None, :]).astype(np.float32)


def _render_mr(
    model: PatientModel, plan: ExamPlan, warp: Warp, rng: np.random.Generator,
    fov_points: np.ndarray | None = None,
) -> tuple[dict[str, Volume], dict[str, np.ndarray]]:
    template = load_template(model.resolution)
    der = _derived(model.resolution)
    site = model.site
    ang = np.deg2rad(rng.uniform(-1, 1, size=3) * site.mri_obliquity_deg)
    voxel = tuple(v * model.resolution for v in site.mri_voxel_mm)
    grid = make_grid(orientation=site.mri_orientation, voxel_mm=voxel, obliquity=rotation(*ang),
                     world_points=_fov_points(template, warp) if fov_points is None else fov_points,
                     margin_mm=5.0)
    smp = _Sampler(template, warp, grid, plan.lesion)
    les = smp.lesion_maps()
    repl = np.clip(sum(les[n] for n in COMPARTMENTS[:5]), 0, 1)
    maps = smp.stack(der.mr_stack, _MR_CHANNELS)
    head = maps["head"]
    bases = {"t1w": maps["t1w"], "flair": maps["flair"], "t2w": maps["t2w"]}
    scalp = {"t1w": 0.85, "flair": 0.55, "t2w": 0.7}
    out: dict[str, Volume] = {}
    col = {"t1w": 0, "flair": 1, "t2w": 2}
    for name, base in bases.items():
        img = base * (1 - repl) + scalp[name] * head
        for comp, vals in _MR_LESION.items():
            img += les[comp] * vals[col[name]]
        if name == "t1w":
            t1c = img + les["enhancing"] * rng.uniform(0.6, 0.9)
            out["t1c"] = t1c
        out[name] = img
    volumes: dict[str, Volume] = {}
    bias = _bias(rng, grid.shape, site.mri_bias)
    for name in ("t1w", "t1c", "t2w", "flair"):
        gain = rng.uniform(600.0, 1400.0)
        noisy = out[name] * bias + rng.standard_normal(grid.shape, dtype=np.float32) * site.mri_noise
        volumes[name] = Volume((np.abs(noisy) * gain).astype(np.float32), grid.affine)
    tumour_frac = les["tumour"] + les["aggressive"] + les["necrosis"]
    masks = {
        "tumor": (tumour_frac >= 0.5).astype(np.uint8),
        "aggressive": (les["aggressive"] >= 0.5).astype(np.uint8),
        "necrosis": (les["necrosis"] >= 0.5).astype(np.uint8),
        "oedema": (les["oedema"] >= 0.5).astype(np.uint8),
        "enhancing": (les["enhancing"] >= 0.5).astype(np.uint8),
    }
    if plan.tacs["aggressive"] is plan.tacs["tumour"]:
        masks["aggressive"][:] = 0
    return volumes, masks


def render_exam(
    model: PatientModel,
    timepoint: str,
    *,
    include_mr: bool = True,
    psf: bool = True,
    noise: bool = True,
) -> Exam:
    """Render one exam of a patient.

    Args:
        model: from :func:`draw_patient`.
        timepoint: ``"initial_diagnosis"`` or ``"suspected_recurrence"``.
        include_mr: also make the four MR volumes (skip for PET-only calibration runs).
        psf: blur PET with the site's PSF (disable for analytic checks).
        noise: add PET noise.

    Raises:
        ValueError: unknown time point.
    """
    if timepoint not in TIMEPOINTS:
        raise ValueError(f"timepoint must be one of {TIMEPOINTS}, got {timepoint!r}")
    plan = model.plans[timepoint]
    rng = np.random.default_rng(plan.seed)
    warp = model.warp.with_pose(rng)
    # Children built explicitly: SeedSequence.spawn() is stateful, and rendering the same plan
    # twice must give the same images.
    rng_pet, rng_mr = (
        np.random.default_rng(np.random.SeedSequence(plan.seed.entropy, spawn_key=(*plan.seed.spawn_key, k)))
        for k in (101, 102)
    )
    warp_pet = warp_mr = warp
    fov_pet = fov_mr = None
    motion = model.site.head_motion
    if motion is not None:
        # Opt-in: own streams (spawn keys 103+), so cohorts without head motion keep their bytes.
        rng_pose = np.random.default_rng(
            np.random.SeedSequence(plan.seed.entropy, spawn_key=(*plan.seed.spawn_key, 103)))
        template = load_template(model.resolution)
        warp_mr, warp_pet = (
            model.warp.with_pose(rng_pose, max_rotation_deg=motion.rotation_deg, max_shift_mm=motion.shift_mm)
            for _ in range(2))
        fov_mr, fov_pet = (_jittered_fov(_fov_points(template, w), rng_pose, motion.fov_jitter_mm)
                           for w in (warp_mr, warp_pet))
    dyn, static, clean, pet_masks, info = _render_pet(model, plan, warp_pet, rng_pet, psf=psf, noise=noise,
                                                      fov_points=fov_pet)
    # An exam without an aggressive subregion (treatment-related change) has an empty mask.
    if plan.tacs["aggressive"] is plan.tacs["tumour"]:
        pet_masks["aggressive"][:] = 0
    mr: dict[str, Volume | None] = {"t1w": None, "t1c": None, "t2w": None, "flair": None}
    anat_masks: dict[str, np.ndarray] = {}
    if include_mr:
        vols, anat_masks = _render_mr(model, plan, warp_mr, rng_mr, fov_points=fov_mr)
        mr.update(vols)
    suv = plan.suv
    present_aggr = plan.tacs["aggressive"] is not plan.tacs["tumour"]
    truth = ExamTruth(
        suv_background=suv["healthy"],
        suv_background_region=info["suv_background_region"],
        suv_striatum=suv["striatum"],
        suv_tumour=suv["tumour"],
        suv_aggressive=suv["aggressive"] if present_aggr else float("nan"),
        suv_max=info["suv_max"],
        tbr_max=info["suv_max"] / info["suv_background_region"],
        ts_max=info["suv_max"] / suv["striatum"],
        ttp_min=info["ttp_min"],
        ttp_aggressive_min=info["ttp_aggressive_min"],
        slope_per_h=info["slope_per_h"],
        tumour_volume_ml=info["tumour_volume_ml"],
        aggressive_centroid_mm=info["aggressive_centroid_mm"],
        calibration=model.site.calibration,
        injected_mbq=plan.dose_mbq,
        body_weight_kg=model.labels.weight_kg,
        aggressive_pattern=plan.aggressive_pattern if present_aggr else "none",
    )
    first = timepoint == "initial_diagnosis"
    return Exam(
        labels=model.labels,
        site=model.site,
        session_id="ses-01" if first else "ses-02",
        timepoint=timepoint,
        day=0 if first else model.labels.recurrence_day,
        pet_dynamic=dyn,
        pet_static=static,
        pet_static_noiseless=clean,
        frame_start_s=model.site.frame_starts_s,
        frame_duration_s=model.site.frame_durations_s,
        pet_masks=pet_masks,
        anat_masks=anat_masks,
        time_zero=plan.time_zero,
        truth=truth,
        true_transforms=None if motion is None else _true_transforms(warp_mr, warp_pet, load_template(model.resolution)),
        **mr,
    )


def make_exam(
    *,
    seed: int = 0,
    patient_index: int = 0,
    site: int | str | SiteProfile = 0,
    timepoint: str = "initial_diagnosis",
    resolution: int = 2,
    include_mr: bool = True,
    psf: bool = True,
    noise: bool = True,
) -> Exam:
    """Make one synthetic exam in memory (for unit tests of other modules).

    Args:
        seed: cohort seed.
        patient_index: patient number in the cohort (0-based).
        site: site index, name or :class:`SiteProfile`.
        timepoint: ``"initial_diagnosis"`` or ``"suspected_recurrence"``.
        resolution: template resolution (mm), 1 or 2.
        include_mr: also render T1w, T1c, T2w and FLAIR.
        psf: blur PET with the site PSF.
        noise: add PET noise.

    Returns:
        The :class:`Exam`.

    Example:
        >>> exam = make_exam(seed=1, timepoint="suspected_recurrence")
        >>> suv = exam.pet_static.data * exam.suv_factor
    """
    model = draw_patient(seed=seed, patient_index=patient_index, site=site, resolution=resolution)
    return render_exam(model, timepoint, include_mr=include_mr, psf=psf, noise=noise)
