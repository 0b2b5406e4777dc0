"""Tests of the synthetic cohort generator (ml.phantoms): truth, SUVs, geometry, labels, files."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from ml.phantoms import SITES, generate_cohort, make_exam
from ml.phantoms.bids import write_nifti
from ml.phantoms.calibration import auc
from ml.phantoms.clinical import P_CODELETED_GIVEN_IDHMUT, P_IDH_MUTANT, draw_labels
from ml.phantoms.kinetics import Tac, tac_for_ttp

from .conftest import TINY_SEED


def _tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _suv(exam, image: np.ndarray) -> np.ndarray:
    return image * exam.suv_factor / exam.truth.calibration


# ---------------------------------------------------------------- truth masks and SUVs (in memory)

def test_truth_masks_nested_and_disjoint(tiny_exam):
    pm, am = tiny_exam.pet_masks, tiny_exam.anat_masks
    assert pm["tumor"].sum() > 50 and pm["aggressive"].sum() > 0
    assert not np.any(pm["aggressive"] & ~pm["tumor"]), "aggressive subregion leaves the tumour"
    assert not np.any(pm["tumor"] & pm["background"])
    assert not np.any(pm["tumor"] & pm["striatum"])
    assert not np.any(am["aggressive"] & ~am["tumor"])
    assert not np.any(am["necrosis"] & ~am["tumor"])
    assert not np.any(am["oedema"] & am["tumor"])


def test_tumour_and_background_in_opposite_hemispheres(tiny_exam):
    aff = tiny_exam.pet_static.affine

    def centroid(mask: np.ndarray) -> np.ndarray:
        return aff[:3, :3] @ np.array(ndi.center_of_mass(mask)) + aff[:3, 3]

    brain = tiny_exam.pet_static_noiseless.data > 0.5 * np.percentile(tiny_exam.pet_static_noiseless.data, 90)
    mid = centroid(brain)[0]
    t, b = centroid(tiny_exam.pet_masks["tumor"])[0], centroid(tiny_exam.pet_masks["background"])[0]
    s = centroid(tiny_exam.pet_masks["striatum"])[0]
    assert np.sign(t - mid) == -np.sign(b - mid) == -np.sign(s - mid)


def test_tumour_is_hotter_than_background_and_mr_shows_it(tiny_exam):
    suv = _suv(tiny_exam, tiny_exam.pet_static.data)
    assert suv[tiny_exam.pet_masks["tumor"] > 0].max() > 1.3 * suv[tiny_exam.pet_masks["background"] > 0].mean()
    flair = tiny_exam.flair.data
    am = tiny_exam.anat_masks
    normal = ndi.binary_erosion(flair > np.percentile(flair, 60), iterations=2) & (am["tumor"] == 0) & (am["oedema"] == 0)
    assert np.median(flair[am["oedema"] > 0]) > 1.15 * np.median(flair[normal])


def test_suv_exact_without_psf_and_noise():
    exam = make_exam(seed=5, patient_index=0, site=0, psf=False, noise=False, include_mr=False)
    suv = _suv(exam, exam.pet_static.data)
    t = exam.truth
    # Voxels fully inside a compartment carry exactly the SUV that was set.
    assert suv[exam.pet_masks["tumor"] > 0].max() == pytest.approx(t.suv_max, rel=1e-3)
    assert suv[exam.pet_masks["background"] > 0].mean() == pytest.approx(t.suv_background_region, rel=1e-3)
    core = ndi.binary_erosion(exam.pet_masks["striatum"] > 0)
    assert suv[core].max() == pytest.approx(t.suv_striatum, rel=0.05)


@pytest.mark.parametrize("site", [0, 1, 2, 3])
def test_large_region_suv_survives_psf_and_noise(site):
    exam = make_exam(seed=9, patient_index=site, site=site, include_mr=False)
    t = exam.truth
    bg = exam.pet_masks["background"] > 0
    assert _suv(exam, exam.pet_static.data)[bg].mean() == pytest.approx(t.suv_background_region, rel=0.06)
    assert _suv(exam, exam.pet_static_noiseless.data)[bg].mean() == pytest.approx(t.suv_background_region, rel=0.06)
    # PSF lowers the small striatum's peak but never raises it above the set value.
    peak = _suv(exam, exam.pet_static_noiseless.data)[exam.pet_masks["striatum"] > 0].max()
    assert 0.55 * t.suv_striatum < peak <= t.suv_striatum * 1.001
    # Noise grows as frames get shorter (count statistics).
    dyn = _suv(exam, exam.pet_dynamic.data)[bg]
    durs = np.asarray(exam.frame_duration_s)
    short, long_ = int(np.argmin(durs)), int(np.argmax(durs))
    cov_short = dyn[:, short].std() / dyn[:, short].mean()
    cov_long = dyn[:, long_].std() / dyn[:, long_].mean()
    assert cov_short > 2 * cov_long


def test_recurrence_without_progression_has_no_aggressive_subregion():
    for i in range(12):
        exam = make_exam(seed=1, patient_index=i, site=i % 4, timepoint="suspected_recurrence", include_mr=False)
        if exam.diagnosis == "treatment_related":
            assert exam.pet_masks["aggressive"].sum() == 0
            assert exam.truth.aggressive_centroid_mm is None
            return
    pytest.fail("no treatment-related exam among 12 patients")


def test_dynamic_hotspot_is_found_by_the_dynamics_not_by_the_static_suvmax():
    """Kunz 2011 pattern: in some rising-curve gliomas at diagnosis the aggressive focus peaks early
    and washes out at static uptake no higher than the rest, so the static SUVmax lies outside it
    while the early frames are hottest in it. Never at recurrence; static hotspots stay hotter."""
    from ml.phantoms.exam import DYNAMIC_HOTSPOT_STATIC_RATIO, draw_patient

    patients = [draw_patient(seed=7, patient_index=i, site=i % 4) for i in range(30)]
    dx = [p.plans["initial_diagnosis"] for p in patients]
    dynamic = [i for i, plan in enumerate(dx) if plan.aggressive_pattern == "dynamic"]
    assert 1 <= len(dynamic) <= 15 and all(plan.aggressive_pattern in ("static", "dynamic") for plan in dx)
    assert all(p.plans["suspected_recurrence"].aggressive_pattern != "dynamic" for p in patients)
    for i, plan in enumerate(dx):
        ratio = plan.suv["aggressive"] / plan.suv["tumour"]
        aggr, tumour = plan.tacs["aggressive"], plan.tacs["tumour"]
        if i in dynamic:
            lo, hi = DYNAMIC_HOTSPOT_STATIC_RATIO
            assert lo - 1e-9 <= ratio <= hi + 1e-9
            assert aggr.ttp_min(60.0) < tumour.ttp_min(60.0) and aggr.lam_per_min > 0  # early peak, washout
        else:
            assert ratio >= 1.2 - 1e-9
    i = dynamic[0]
    exam = make_exam(seed=7, patient_index=i, site=i % 4, psf=False, noise=False, include_mr=False)
    assert exam.truth.aggressive_pattern == "dynamic"
    tumour, hot = exam.pet_masks["tumor"] > 0, exam.pet_masks["aggressive"] > 0
    static = np.where(tumour, exam.pet_static.data, -np.inf)
    assert not hot[np.unravel_index(np.argmax(static), static.shape)]
    early = int(np.argmax(np.asarray(exam.frame_start_s) >= 60.0))  # a frame around 1-3 min
    first = np.where(tumour, exam.pet_dynamic.data[..., early + 1], -np.inf)
    assert hot[np.unravel_index(np.argmax(first), first.shape)]


# ---------------------------------------------------------------- kinetics and labels

@pytest.mark.parametrize("ttp,lam", [(2.0, 0.02), (5.4, 0.01), (15.0, 0.004)])
def test_tac_peaks_at_requested_ttp(ttp, lam):
    tac = tac_for_ttp(ttp, lam)
    t = np.linspace(0, 60, 60001)
    assert t[np.argmax(tac(t))] == pytest.approx(ttp, abs=2e-3)
    scaled = tac.scaled_to(2.5, (10.0, 30.0))
    assert np.mean(scaled(np.linspace(10, 30, 200001))) == pytest.approx(2.5, rel=1e-4)


def test_rising_tac_peaks_at_end():
    tac = Tac(1.0, 4.0, -0.005)
    assert tac.ttp_min(30.0) == 30.0
    assert tac.slope_per_h((10.0, 30.0)) > 0


def test_label_frequencies_and_who_2021_rules():
    rng = np.random.default_rng(0)
    labs = [draw_labels(rng, participant_id=f"sub-X{i}", site="nancy") for i in range(4000)]
    mut = [lab for lab in labs if lab.idh == "mutant"]
    assert len(mut) / len(labs) == pytest.approx(P_IDH_MUTANT, abs=0.025)
    assert np.mean([lab.codeletion_1p19q == "codeleted" for lab in mut]) == pytest.approx(P_CODELETED_GIVEN_IDHMUT, abs=0.03)
    for lab in labs:
        if lab.idh == "wildtype":
            assert (lab.codeletion_1p19q, lab.who_type, lab.who_grade) == ("n/a", "glioblastoma", 4)
        else:
            assert lab.who_type == ("oligodendroglioma" if lab.codeletion_1p19q == "codeleted" else "astrocytoma")
            assert lab.who_grade in ((2, 3) if lab.who_type == "oligodendroglioma" else (2, 3, 4))
    gbm = [lab for lab in labs if lab.who_type == "glioblastoma"]
    assert np.mean([lab.mgmt == "methylated" for lab in gbm]) == pytest.approx(0.45, abs=0.04)  # Hegi 2005


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.4
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: ties
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


# ---------------------------------------------------------------- files: BIDS, geometry, types

def test_dataset_tables(tiny_cohort):
    parts = _tsv(tiny_cohort / "participants.tsv")
    assert [p["participant_id"] for p in parts] == ["sub-S1P001", "sub-S2P001", "sub-S1P002", "sub-S2P002"]
    assert {p["site"] for p in parts} == {"nancy", "paris"}
    for p in parts:
        if p["idh"] == "wildtype":
            assert p["codeletion_1p19q"] == "n/a"
        sessions = _tsv(tiny_cohort / p["participant_id"] / f"{p['participant_id']}_sessions.tsv")
        assert [s["timepoint"] for s in sessions] == ["initial_diagnosis", "suspected_recurrence"]
        assert sessions[0]["day"] == "0" and sessions[0]["diagnosis"] == "n/a"
        assert int(sessions[1]["day"]) > 0
        assert sessions[1]["diagnosis"] in ("progression", "treatment_related")
        assert sessions[1]["diagnosis_basis"] in ("histology", "follow_up")
    truth = _tsv(tiny_cohort / "derivatives" / "groundtruth" / "groundtruth.tsv")
    assert len(truth) == 8


def _images(root: Path):
    for sub in sorted(root.glob("sub-*")):
        for ses in sorted(sub.glob("ses-*")):
            yield sub.name, ses.name, ses


def test_affines_orientation_and_storage(tiny_cohort):
    sites = {s.name: s for s in SITES}
    site_of = {p["participant_id"]: p["site"] for p in _tsv(tiny_cohort / "participants.tsv")}
    for sub, ses, d in _images(tiny_cohort):
        site = sites[site_of[sub]]
        stem = f"{sub}_{ses}"
        dyn = nib.load(d / "pet" / f"{stem}_trc-FDOPA_rec-acdyn_pet.nii.gz")
        stat = nib.load(d / "pet" / f"{stem}_trc-FDOPA_rec-acstat_pet.nii.gz")
        side = json.loads((d / "pet" / f"{stem}_trc-FDOPA_rec-acdyn_pet.json").read_text())
        assert dyn.shape[3] == len(side["FrameDuration"]) == len(side["FrameTimesStart"])
        for img in (dyn, stat):
            assert "".join(nib.aff2axcodes(img.affine)) == site.pet_orientation
            assert abs(np.linalg.det(img.affine[:3, :3])) > 0
            assert img.header.get_zooms()[:3] == pytest.approx(site.pet_voxel_mm, abs=1e-3)
            assert int(img.header["sform_code"]) == int(img.header["qform_code"]) == 1
            if site.pet_dtype == "int16":
                assert img.get_data_dtype() == np.int16
                assert img.dataobj.slope not in (0.0, 1.0) and img.dataobj.inter == 0.0
            else:
                assert img.get_data_dtype() == np.float32
        t1 = nib.load(d / "anat" / f"{stem}_T1w.nii.gz")
        assert "".join(nib.aff2axcodes(t1.affine)) == site.mri_orientation
        for other in ("ce-gadolinium_T1w", "T2w", "FLAIR"):
            img = nib.load(d / "anat" / f"{stem}_{other}.nii.gz")
            assert img.shape == t1.shape and np.allclose(img.affine, t1.affine)
        gt = tiny_cohort / "derivatives" / "groundtruth" / sub / ses
        for name in ("tumor", "aggressive", "striatum", "background"):
            m = nib.load(gt / "pet" / f"{stem}_trc-FDOPA_desc-{name}_mask.nii.gz")
            assert m.shape == stat.shape and np.allclose(m.affine, stat.affine)
            assert m.get_data_dtype() == np.uint8
        for name in ("tumor", "aggressive", "necrosis", "oedema", "enhancing"):
            m = nib.load(gt / "anat" / f"{stem}_desc-{name}_mask.nii.gz")
            assert m.shape == t1.shape and np.allclose(m.affine, t1.affine)


def test_suv_from_files_matches_truth(tiny_cohort):
    truth = {(r["participant_id"], r["session_id"]): r
             for r in _tsv(tiny_cohort / "derivatives" / "groundtruth" / "groundtruth.tsv")}
    for sub, ses, d in _images(tiny_cohort):
        stem = f"{sub}_{ses}_trc-FDOPA"
        img = nib.load(d / "pet" / f"{stem}_rec-acstat_pet.nii.gz").get_fdata()
        side = json.loads((d / "pet" / f"{stem}_rec-acstat_pet.json").read_text())
        assert side["Units"] == "Bq/mL" and side["InjectedRadioactivityUnits"] == "MBq"
        suv = img * side["BodyWeight"] * 1000.0 / (side["InjectedRadioactivity"] * 1e6)
        bg = nib.load(tiny_cohort / "derivatives" / "groundtruth" / sub / ses / "pet"
                      / f"{stem}_desc-background_mask.nii.gz").get_fdata() > 0
        row = truth[(sub, ses)]
        expected = float(row["suv_background_region"]) * float(row["calibration"])
        assert suv[bg].mean() == pytest.approx(expected, rel=0.06)


@pytest.mark.parametrize("dtype,tol", [("int16", 0.02), ("float32", 2.0), ("int16raw", 0.5)])
def test_write_nifti_roundtrip_and_deterministic_gzip(tmp_path, dtype, tol):
    rng = np.random.default_rng(0)
    data = (rng.random((5, 6, 7, 3)) * 1000 - 100).astype(np.float32)
    affine = np.diag([-3.0, -3.0, 3.0, 1.0])
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    write_nifti(a, data, affine, dtype=dtype, frame_duration_s=60.0)
    write_nifti(b, data, affine, dtype=dtype, frame_duration_s=60.0)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field is zero
    img = nib.load(a)
    assert np.abs(img.get_fdata() - data).max() <= tol
    assert np.allclose(img.affine, affine) and img.header.get_zooms()[3] == 60.0


def test_same_seed_same_bytes_any_worker_count(tiny_cohort, tmp_path):
    out = tmp_path / "again"
    generate_cohort(out, n_patients=2, n_sites=2, seed=TINY_SEED, workers=1)
    files = sorted(p.relative_to(out) for p in out.rglob("sub-*/**/*") if p.is_file())
    assert len(files) > 40
    for rel in files:
        assert (out / rel).read_bytes() == (tiny_cohort / rel).read_bytes(), rel
    other = tmp_path / "other"
    generate_cohort(other, n_patients=1, n_sites=1, seed=TINY_SEED + 1, workers=1)
    rel = Path("sub-S1P001/ses-01/pet/sub-S1P001_ses-01_trc-FDOPA_rec-acstat_pet.nii.gz")
    assert (other / rel).read_bytes() != (tiny_cohort / rel).read_bytes()


def test_generate_refuses_bad_arguments(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("data")
    with pytest.raises(ValueError, match="not empty"):
        generate_cohort(tmp_path / "x", n_patients=1, n_sites=1, seed=0)
    with pytest.raises(ValueError, match="n_sites"):
        generate_cohort(tmp_path / "y", n_patients=1, n_sites=99, seed=0)
    with pytest.raises(ValueError, match="resolution"):
        generate_cohort(tmp_path / "z", n_patients=1, n_sites=1, seed=0, resolution=3)


def test_cli_generates_and_reports_errors(tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "ml.phantoms", "--out", str(out), "--patients", "1",
                           "--sites", "1", "--seed", "4", "--workers", "1"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert "1/1 patients" in done.stderr and "Wrote 1 patients" in done.stdout
    assert (out / "participants.tsv").is_file()
    again = subprocess.run([sys.executable, "-m", "ml.phantoms", "--out", str(out), "--patients", "1"],
                           capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert again.returncode == 2 and "not empty" in again.stderr
