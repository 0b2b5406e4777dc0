"""Quantification on the synthetic cohort generator's exams (ml.phantoms), against its truth.

Noiseless exams without PSF, one RAS site (nancy) and one LPS site (paris): the static
parameters must be exact (up to float32 storage), the late slope and the dynamic hotspot must
match the generator's aggressive subregion. The generator mixes compartments inside voxels
(partial volume), so kinetic checks use tolerances stated per assertion.
"""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ml.quant import QuantConfig, quantify_exam
from ml.quant.kinetics import frame_mid_times_s, late_slope_suv_per_h, time_activity_curve
from ml.quant.suv import to_suv

phantoms = pytest.importorskip("ml.phantoms.exam")


@pytest.fixture(scope="module", params=[("nancy", 0), ("paris", 1)], ids=["RAS", "LPS"])
def exam(request):
    site, patient = request.param
    ex = phantoms.make_exam(seed=0, patient_index=patient, site=site, timepoint="initial_diagnosis",
                            include_mr=False, psf=False, noise=False)
    assert ex.site.pet_orientation == ("RAS" if site == "nancy" else "LPS")
    return ex


def _quantify(ex, *, background: bool):
    f = ex.suv_factor
    return quantify_exam(
        pet_static=ex.pet_static.data * f, pet_dynamic=ex.pet_dynamic.data * f,
        frame_start_s=ex.frame_start_s, frame_duration_s=ex.frame_duration_s,
        affine=ex.pet_static.affine, tumor_mask=ex.pet_masks["tumor"],
        striatum_mask=ex.pet_masks["striatum"],
        background_mask=ex.pet_masks["background"] if background else None,
        config=QuantConfig(maps_region="tumor"),
    )


def test_static_parameters_match_generator_truth(exam):
    t = exam.truth
    q = _quantify(exam, background=True)
    # Images carry the site's calibration factor; ratios cancel it.
    assert q.static.suv_max == pytest.approx(t.suv_max * t.calibration, rel=1e-5)
    assert q.static.background_mean == pytest.approx(t.suv_background_region * t.calibration, rel=1e-5)
    assert q.static.tbr_max == pytest.approx(t.tbr_max, rel=1e-5)


def test_automatic_background_is_close_to_the_truth_mask(exam):
    q = _quantify(exam, background=False)
    assert q.background_source == "mirrored"
    # The mirrored region mixes grey and white matter differently from the truth mask.
    assert q.static.tbr_max == pytest.approx(exam.truth.tbr_max, rel=0.10)
    # It lies in the other hemisphere: opposite sign of world x to the tumour.
    a = exam.pet_static.affine
    def world_x(mask):
        return (a[:3, :3] @ np.argwhere(mask).mean(axis=0) + a[:3, 3])[0]
    assert np.sign(world_x(q.background_mask)) == -np.sign(world_x(exam.pet_masks["tumor"]))


def test_aggressive_subregion_late_slope_matches_truth(exam):
    f = exam.suv_factor
    t = frame_mid_times_s(exam.frame_start_s, exam.frame_duration_s)
    tac = time_activity_curve(exam.pet_dynamic.data * f, exam.pet_masks["aggressive"], t)
    window = exam.site.static_window_min
    sel = (t >= window[0] * 60) & (t <= window[1] * 60)
    percent_per_h = late_slope_suv_per_h(tac.values, t, window_min=window) / tac.values[sel].mean() * 100
    # Truth: least-squares slope of the continuous curve, % of the window mean per hour.
    assert percent_per_h == pytest.approx(exam.truth.slope_per_h, rel=0.05)


def test_dynamic_hotspot_is_the_aggressive_subregion(exam):
    q = _quantify(exam, background=True)
    hot = q.hotspots.hotspot_mask
    aggr = exam.pet_masks["aggressive"] > 0
    assert (hot & aggr).sum() / aggr.sum() > 0.8
    a = exam.pet_static.affine
    centroid = a[:3, :3] @ np.argwhere(hot).mean(axis=0) + a[:3, 3]
    assert np.linalg.norm(centroid - np.array(exam.truth.aggressive_centroid_mm)) < 3.0
    assert q.hotspots.cluster_ttp_min[0] == q.hotspots.cluster_ttp_min.min()
    # Early-peaking subregion: its TTP-map median is earlier than the rest of the tumour's.
    rest = (exam.pet_masks["tumor"] > 0) & ~aggr
    assert np.median(q.ttp_map[aggr]) < np.median(q.ttp_map[rest])


def test_bids_files_of_the_tiny_cohort(request):
    """End to end from files: NIfTI + sidecar -> SUV -> quantify -> groundtruth.tsv."""
    try:
        root = request.getfixturevalue("tiny_cohort")
    except pytest.FixtureLookupError:
        pytest.skip("tiny_cohort fixture (tests/ml/conftest.py) not available yet")
    import pandas as pd

    truth = pd.read_csv(root / "derivatives" / "groundtruth" / "groundtruth.tsv", sep="\t")
    checked = 0
    for row in truth.itertuples():
        sub, ses = row.participant_id, row.session_id
        stem = root / sub / ses / "pet" / f"{sub}_{ses}_trc-FDOPA_rec-acstat_pet"
        masks = root / "derivatives" / "groundtruth" / sub / ses / "pet"
        tumor = np.asarray(nib.load(masks / f"{sub}_{ses}_trc-FDOPA_desc-tumor_mask.nii.gz").dataobj)
        if not tumor.any():
            continue
        side = json.loads(stem.with_suffix(".json").read_text())
        img = nib.load(stem.with_suffix(".nii.gz"))
        suv = to_suv(img.get_fdata(), side["Units"], injected_dose_bq=side["InjectedRadioactivity"] * 1e6,
                     weight_kg=side["BodyWeight"], delay_s=0.0, decay_corrected_to_injection=True)
        bg = np.asarray(nib.load(masks / f"{sub}_{ses}_trc-FDOPA_desc-background_mask.nii.gz").dataobj)
        q = quantify_exam(pet_static=suv, affine=img.affine, tumor_mask=tumor, background_mask=bg)
        # Noisy, blurred images: TBRmax within a broad band of the set value.
        assert 0.5 * row.true_tbr_max < q.static.tbr_max < 2.0 * row.true_tbr_max
        checked += 1
    assert checked > 0
