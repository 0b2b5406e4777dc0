"""Scanner and protocol profiles of the synthetic centres.

Each :class:`SiteProfile` bundles what differs between hospitals in a multi-centre amino-acid PET
study: the dynamic frame schedule and static window, the PET scanner's effective resolution (PSF
FWHM 4-7 mm after reconstruction and post-filter), voxel size, noise level, a dose-calibrator /
cross-calibration offset, the injected activity per kg (EANM/SNMMI guideline for 18F-FDOPA:
about 2 MBq/kg, Law et al. 2019, EJNMMI 46:540), the MRI voxel size, bias field and noise, and the
voxel orientation / storage type of the files. The profiles are fictional but each number sits in
the range of the scanner it is named after; ``docs/phantoms.md`` gives the sources.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["HeadMotion", "SiteProfile", "SITES", "site_profile", "with_head_motion"]


@dataclass(frozen=True)
class HeadMotion:
    """Opt-in realistic head positions (issue 10): each exam's PET and MRI get their own pose.

    Without it (the default) an exam's PET and MRI share one world frame with a small pose
    (rotation <= 4 deg, shift <= 8 mm), which is what older cohorts, tests and the calibration
    were made with. With it, the MRI and the PET are each placed with a rotation drawn uniformly
    in +-``rotation_deg`` about each axis and a shift in +-``shift_mm`` along each axis (the
    patient lies down twice, on two scanners), and each field of view is widened by up to
    ``fov_jitter_mm`` on each side, so the head is off-centre in the images. The true transforms
    are written to the ground truth (``*_desc-truepose_xfm.json``).

    Attributes:
        rotation_deg: largest rotation about each axis (degrees).
        shift_mm: largest translation along each axis (mm).
        fov_jitter_mm: largest extra margin of the field of view on each side (mm).
    """

    rotation_deg: float = 15.0
    shift_mm: float = 20.0
    fov_jitter_mm: float = 30.0


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition and reconstruction protocol of one centre.

    Attributes:
        name: site label used in ``participants.tsv`` (lower-case, alphanumeric).
        code: short alphanumeric code used inside participant labels (``S1`` -> ``sub-S1P001``).
        manufacturer: PET manufacturer as written in the sidecar.
        model: PET model name.
        frame_durations_s: dynamic frame durations from injection (s), contiguous from t=0.
        static_window_min: (start, end) of the static image in minutes post-injection.
        psf_fwhm_mm: isotropic Gaussian FWHM of the reconstructed image (scanner + filter).
        pet_voxel_mm: PET voxel size (x, y, z) in mm.
        pet_orientation: voxel axis codes of the PET affine, ``"RAS"`` or ``"LPS"``.
        pet_dtype: on-disk type of the PET images, ``"float32"`` or ``"int16"`` (with scl_slope).
        static_cov: voxel coefficient of variation of the static image in healthy background at
            the reference dose of 2 MBq/kg.
        calibration: multiplicative calibration offset of the scanner (true activity x this).
        dose_mbq_per_kg: injected activity per kg of body weight.
        recon_method: reconstruction name for ``ReconMethodName``.
        recon_iterations: OSEM iterations.
        recon_subsets: OSEM subsets.
        recon_filter_mm: post-reconstruction Gaussian filter FWHM in mm.
        mri_manufacturer: MRI manufacturer.
        mri_model: MRI model name.
        mri_field_t: MRI field strength (T).
        mri_voxel_mm: MRI voxel size at ``resolution=1`` (scaled by the resolution).
        mri_orientation: voxel axis codes of the MR affines.
        mri_obliquity_deg: largest rotation of the MR slab (degrees, about each axis).
        mri_bias: amplitude of the multiplicative bias field (fraction, peak).
        mri_noise: Gaussian noise SD relative to white-matter signal.
        head_motion: opt-in realistic head positions (:class:`HeadMotion`); ``None`` keeps the
            small shared pose of the original cohorts.
    """

    name: str
    code: str
    manufacturer: str
    model: str
    frame_durations_s: tuple[float, ...]
    static_window_min: tuple[float, float]
    psf_fwhm_mm: float
    pet_voxel_mm: tuple[float, float, float]
    pet_orientation: str
    pet_dtype: str
    static_cov: float
    calibration: float
    dose_mbq_per_kg: float
    recon_method: str
    recon_iterations: int
    recon_subsets: int
    recon_filter_mm: float
    mri_manufacturer: str
    mri_model: str
    mri_field_t: float
    mri_voxel_mm: tuple[float, float, float]
    mri_orientation: str
    mri_obliquity_deg: float
    mri_bias: float
    mri_noise: float
    head_motion: HeadMotion | None = None

    @property
    def frame_starts_s(self) -> tuple[float, ...]:
        """Start of each dynamic frame (s from injection): cumulative sum of the durations."""
        starts, t = [], 0.0
        for d in self.frame_durations_s:
            starts.append(t)
            t += d
        return tuple(starts)

    @property
    def dynamic_end_min(self) -> float:
        """End of the dynamic acquisition in minutes."""
        return sum(self.frame_durations_s) / 60.0


def _frames(*blocks: tuple[int, float]) -> tuple[float, ...]:
    out: list[float] = []
    for n, d in blocks:
        out.extend([float(d)] * n)
    return tuple(out)


SITES: tuple[SiteProfile, ...] = (
    SiteProfile(
        name="nancy", code="S1", manufacturer="GE", model="Discovery MI",
        frame_durations_s=_frames((6, 10), (4, 30), (4, 60), (4, 120), (3, 300)),
        static_window_min=(10.0, 30.0), psf_fwhm_mm=5.0, pet_voxel_mm=(2.73, 2.73, 2.79),
        pet_orientation="RAS", pet_dtype="float32", static_cov=0.10, calibration=1.00,
        dose_mbq_per_kg=2.0, recon_method="OSEM (VPFX-S)", recon_iterations=4,
        recon_subsets=8, recon_filter_mm=3.0,
        mri_manufacturer="GE", mri_model="Signa HDxt", mri_field_t=3.0,
        mri_voxel_mm=(1.0, 1.0, 1.0), mri_orientation="RAS", mri_obliquity_deg=4.0,
        mri_bias=0.15, mri_noise=0.03,
    ),
    SiteProfile(
        name="paris", code="S2", manufacturer="Siemens", model="Biograph mCT Flow",
        frame_durations_s=_frames((6, 10), (3, 20), (3, 60), (5, 120), (4, 300)),
        static_window_min=(20.0, 35.0), psf_fwhm_mm=6.0, pet_voxel_mm=(3.18, 3.18, 3.0),
        pet_orientation="LPS", pet_dtype="int16", static_cov=0.12, calibration=1.06,
        dose_mbq_per_kg=2.2, recon_method="OSEM3D+TOF+PSF", recon_iterations=3,
        recon_subsets=21, recon_filter_mm=4.0,
        mri_manufacturer="Siemens", mri_model="Avanto", mri_field_t=1.5,
        mri_voxel_mm=(0.9, 0.9, 1.3), mri_orientation="LPS", mri_obliquity_deg=8.0,
        mri_bias=0.25, mri_noise=0.05,
    ),
    SiteProfile(
        name="lyon", code="S3", manufacturer="Philips", model="Vereos",
        frame_durations_s=_frames((8, 15), (4, 60), (5, 180), (1, 360)),
        static_window_min=(10.0, 30.0), psf_fwhm_mm=7.0, pet_voxel_mm=(4.0, 4.0, 4.0),
        pet_orientation="RAS", pet_dtype="int16", static_cov=0.08, calibration=0.94,
        dose_mbq_per_kg=1.8, recon_method="BLOB-OS-TF", recon_iterations=3,
        recon_subsets=15, recon_filter_mm=5.0,
        mri_manufacturer="Philips", mri_model="Ingenia", mri_field_t=3.0,
        mri_voxel_mm=(1.0, 1.0, 1.2), mri_orientation="LAS", mri_obliquity_deg=3.0,
        mri_bias=0.10, mri_noise=0.04,
    ),
    SiteProfile(
        name="bordeaux", code="S4", manufacturer="Siemens", model="Biograph Vision 600",
        frame_durations_s=_frames((6, 10), (6, 30), (3, 120), (6, 300)),
        static_window_min=(20.0, 40.0), psf_fwhm_mm=4.0, pet_voxel_mm=(3.3, 3.3, 3.3),
        pet_orientation="LPS", pet_dtype="float32", static_cov=0.09, calibration=1.03,
        dose_mbq_per_kg=2.0, recon_method="OSEM3D+TOF+PSF", recon_iterations=4,
        recon_subsets=5, recon_filter_mm=2.0,
        mri_manufacturer="Siemens", mri_model="Skyra", mri_field_t=3.0,
        mri_voxel_mm=(0.95, 0.95, 1.0), mri_orientation="LPS", mri_obliquity_deg=5.0,
        mri_bias=0.20, mri_noise=0.035,
    ),
)


def site_profile(site: int | str | SiteProfile) -> SiteProfile:
    """Return a site profile by index (0-based), name or the profile itself.

    Args:
        site: index into :data:`SITES`, a site name, or a :class:`SiteProfile`.

    Raises:
        ValueError: unknown name or index out of range.
    """
    if isinstance(site, SiteProfile):
        return site
    if isinstance(site, int):
        if not 0 <= site < len(SITES):
            raise ValueError(f"site index {site} out of range: 0..{len(SITES) - 1} exist")
        return SITES[site]
    for profile in SITES:
        if profile.name == site:
            return profile
    raise ValueError(f"unknown site {site!r}: choose one of {[s.name for s in SITES]}")


def with_head_motion(site: int | str | SiteProfile, motion: HeadMotion | None = None) -> SiteProfile:
    """The site's profile with realistic, independent PET and MRI head positions (opt-in).

    Args:
        site: index, name or profile.
        motion: the ranges; default :class:`HeadMotion` (15 deg, 20 mm, 30 mm field of view).
    """
    return replace(site_profile(site), head_motion=motion or HeadMotion())
