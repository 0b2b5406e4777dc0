"""Automatic VOIs (ml.quant.auto_voi) against the supplied masks of generated exams: Dice per VOI
and agreement of TBRmax, T/S max and MTV with the mask-based values; supplied masks win; bad input
answers clearly."""
from __future__ import annotations

import numpy as np
import pytest

from ml.phantoms import make_exam
from ml.phantoms.sites import with_head_motion
from ml.quant.auto_voi import AutoVoiConfig, auto_vois, dice, striatum_template, validation_row
from ml.registration import Transform, register_exam

SUPPLIED = ("tumor", "background", "striatum")


@pytest.fixture(scope="module", params=[("nancy", False), ("paris", True)], ids=["nancy", "paris-head-motion"])
def registered_exam(request):
    site, motion = request.param
    exam = make_exam(seed=5, site=with_head_motion(site) if motion else site)
    reg = register_exam(mri=exam.t1c, pet=exam.pet_static)
    return exam, exam.pet_static.data * exam.suv_factor, reg.pet_from_template


def test_automatic_vois_agree_with_supplied_masks(registered_exam):
    exam, suv, transform = registered_exam
    vois = auto_vois(suv, exam.pet_static.affine, pet_from_template=transform)
    assert vois.sources == {"tumor": "automatic", "striatum": "automatic", "background": "mirrored"}
    row = validation_row(suv, exam.pet_static.affine, vois, {k: exam.pet_masks[k] for k in SUPPLIED})
    print("\n" + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    assert vois.above_threshold
    assert row["dice_tumor_btv"] > 0.7  # the part of the lesion above 1.6 x background
    assert row["dice_striatum"] > 0.6
    # background definitions differ (mirrored vs the generator's GM+WM slab): measured 1-5 %
    assert row["tbr_max_auto"] == pytest.approx(row["tbr_max_mask"], rel=0.06)
    # measured -0.3 % (sd 1.2 %) on 6 held-out exams; +9.8 % with the whole template region,
    # whose cold rim (partial volume, white matter) lowered the striatum mean
    assert row["ts_max_auto"] == pytest.approx(row["ts_max_mask"], rel=0.05)
    whole = auto_vois(suv, exam.pet_static.affine, pet_from_template=transform,
                      config=AutoVoiConfig(striatum_keep_fraction=1.0))
    row_whole = validation_row(suv, exam.pet_static.affine, whole, {k: exam.pet_masks[k] for k in SUPPLIED})
    assert whole.striatum.sum() > 1.3 * vois.striatum.sum() and row_whole["dice_striatum"] < row["dice_striatum"]
    assert row_whole["ts_max_auto"] > 1.04 * row["ts_max_auto"]
    assert row["mtv_ml_auto"] == pytest.approx(row["mtv_ml_mask"], rel=0.5)
    # the striatum is the one opposite the tumour; the hotspot lies in the supplied tumour
    t_x = np.argwhere(exam.pet_masks["tumor"]).mean(0)
    s_x = np.argwhere(vois.striatum).mean(0)
    mid = np.argwhere(exam.pet_masks["background"]).mean(0)
    assert np.sign(t_x[0] - s_x[0]) == np.sign(t_x[0] - mid[0])
    ijk = np.linalg.inv(exam.pet_static.affine) @ np.array([*vois.hotspot_mm, 1.0])
    assert exam.pet_masks["tumor"][tuple(np.round(ijk[:3]).astype(int))]


def test_supplied_masks_win_and_lesion_restricts(registered_exam):
    exam, suv, transform = registered_exam
    aff = exam.pet_static.affine
    given = {k: exam.pet_masks[k] > 0 for k in SUPPLIED}
    vois = auto_vois(suv, aff, pet_from_template=transform, tumor_mask=given["tumor"],
                     striatum_mask=given["striatum"], background_mask=given["background"])
    assert vois.sources == {"tumor": "supplied", "striatum": "supplied", "background": "supplied"}
    assert dice(vois.tumor, given["tumor"]) == 1.0 and dice(vois.background, given["background"]) == 1.0
    # an MRI lesion elsewhere (the striatum's place, mirrored) moves the search there
    lesion = given["background"]
    restricted = auto_vois(suv, aff, pet_from_template=transform, lesion_mask=lesion)
    assert not (restricted.tumor & given["tumor"]).any()


def test_threshold_is_configurable_and_fallback_sphere(registered_exam):
    exam, suv, transform = registered_exam
    aff = exam.pet_static.affine
    loose = auto_vois(suv, aff, pet_from_template=transform, config=AutoVoiConfig(threshold_tbr=1.3))
    strict = auto_vois(suv, aff, pet_from_template=transform, config=AutoVoiConfig(threshold_tbr=1.9))
    assert loose.tumor.sum() > strict.tumor.sum()
    # no voxel reaches 50 x background: a 16 mm sphere on the hotspot keeps TBRmax defined
    none = auto_vois(suv, aff, pet_from_template=transform, config=AutoVoiConfig(threshold_tbr=50))
    assert not none.above_threshold
    vox_ml = abs(np.linalg.det(aff[:3, :3])) / 1000
    assert none.tumor.sum() * vox_ml == pytest.approx(4 / 3 * np.pi * 0.8**3, rel=0.35)
    with pytest.raises(ValueError, match="threshold_tbr"):
        AutoVoiConfig(threshold_tbr=0.9)
    with pytest.raises(ValueError, match="striatum_keep_fraction"):
        AutoVoiConfig(striatum_keep_fraction=0.0)


def test_without_registration_no_striatum_and_clear_errors(tiny_exam):
    suv = tiny_exam.pet_static.data * tiny_exam.suv_factor
    vois = auto_vois(suv, tiny_exam.pet_static.affine)
    assert vois.striatum is None and vois.sources["striatum"] == "none"
    with pytest.raises(ValueError, match="tumor_mask"):
        auto_vois(suv, tiny_exam.pet_static.affine, tumor_mask=np.zeros(suv.shape, bool))
    with pytest.raises(ValueError):
        auto_vois(np.full(suv.shape, np.nan), tiny_exam.pet_static.affine)


def test_striatum_template_sides():
    left, right = striatum_template("left"), striatum_template("right")
    ml = 2.0**3 / 1000
    assert 7 < left.sum() * ml < 16 and left.sum() == pytest.approx(right.sum(), rel=0.05)
    assert not (left.astype(bool) & right.astype(bool)).any()
    assert Transform.identity().kind == "identity"


def pet_negative(suv: np.ndarray, tumor: np.ndarray, background: np.ndarray, *, tbr: float = 1.3) -> np.ndarray:
    """The same exam with a PET-negative lesion: the uptake above background in and around the
    tumour (2 voxels: the PSF's spread) scaled down so its maximum is ``tbr`` x background."""
    from scipy import ndimage

    bg = float(suv[background].mean())
    region = ndimage.binary_dilation(tumor, iterations=2)
    out = suv.copy()
    excess = np.clip(suv[region] - bg, 0, None)
    out[region] = np.minimum(suv[region], bg + excess * ((tbr - 1) * bg / excess.max()))
    return out


@pytest.fixture(scope="module")
def negative_case():
    exam = make_exam(seed=5, site=with_head_motion("paris"))
    reg = register_exam(mri=exam.t1c, pet=exam.pet_static)
    masks = {k: exam.pet_masks[k] > 0 for k in SUPPLIED}
    suv = pet_negative(exam.pet_static.data * exam.suv_factor, masks["tumor"], masks["background"])
    return exam, suv, reg, masks


def test_pet_negative_lesion_is_found_with_the_mri_lesion(negative_case):
    """Issue 10: a lesion without uptake above 1.6 x background. Without the MRI lesion the
    hotspot (and the fallback sphere) lands on healthy tissue; with the MRI tumour mask brought
    onto the PET grid through the PET -> MRI registration it lies in the lesion, MTV is zero and
    TBRmax agrees with the supplied mask's."""
    from ml.quant.auto_voi import lesion_on_pet_grid

    exam, suv, reg, masks = negative_case
    aff = exam.pet_static.affine
    lesion = lesion_on_pet_grid(exam.anat_masks["tumor"], exam.t1w.affine, reg.pet_from_mri, suv.shape, aff)
    assert dice(lesion, masks["tumor"]) > 0.6  # the MRI lesion lands on the PET's (head motion between them)
    blind = auto_vois(suv, aff, pet_from_template=reg.pet_from_template)
    guided = auto_vois(suv, aff, pet_from_template=reg.pet_from_template, lesion_mask=lesion)
    assert guided.sources == {"tumor": "automatic", "striatum": "automatic", "background": "mirrored",
                              "lesion": "supplied"}
    row_blind, row = (validation_row(suv, aff, v, masks) for v in (blind, guided))
    print(f"\nblind: {row_blind}\nguided: {row}")
    assert row["tbr_max_mask"] < 1.6 and not guided.above_threshold  # PET-negative
    assert (blind.tumor & masks["tumor"]).sum() < 0.5 * blind.tumor.sum()  # elsewhere without the MRI
    assert (guided.tumor & lesion).sum() > 0.5 * guided.tumor.sum()
    assert row["mtv_ml_auto"] == 0.0
    assert row["tbr_max_auto"] == pytest.approx(row["tbr_max_mask"], rel=0.1)
    with pytest.raises(ValueError, match="lesion"):
        lesion_on_pet_grid(np.zeros((4, 4, 4)), exam.t1w.affine, reg.pet_from_mri, suv.shape, aff)
