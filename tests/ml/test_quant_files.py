"""quantify_files: BIDS files written by the cohort generator -> SUV -> the truth's parameters."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ml.io.errors import ImageFormatError
from ml.quant.files import load_suv, quantify_files

phantoms = pytest.importorskip("ml.phantoms.exam")
bids = pytest.importorskip("ml.phantoms.bids")


@pytest.fixture(scope="module", params=["nancy", "paris"])  # float32 RAS / int16 LPS files
def written(request, tmp_path_factory):
    ex = phantoms.make_exam(seed=0, patient_index=1, site=request.param, include_mr=False,
                            psf=False, noise=False)
    root = tmp_path_factory.mktemp(request.param)
    bids.write_exam(root, ex)
    return ex, bids.exam_paths(root, ex)


def test_quantify_files_matches_truth(written):
    ex, p = written
    q = quantify_files(pet_static=p["pet_static"], pet_dynamic=p["pet_dynamic"],
                       tumor_mask=p["pet_mask_tumor"], striatum_mask=p["pet_mask_striatum"],
                       background_mask=p["pet_mask_background"])
    t = ex.truth
    # The generator keeps 9 mantissa bits of float32 values (2e-3 relative) and quantises int16
    # values with scl_slope: 0.5% relative here.
    assert q.static.suv_max == pytest.approx(t.suv_max * t.calibration, rel=5e-3)
    assert q.static.tbr_max == pytest.approx(t.tbr_max, rel=5e-3)
    assert q.tacs["tumor"].values.shape == (len(ex.frame_start_s),)
    assert q.curve_class in ("increasing", "plateau", "decreasing")


def test_load_suv_uses_dose_and_weight(written):
    ex, p = written
    vol, suv, side = load_suv(p["pet_static"])
    factor = side["BodyWeight"] * 1000 / (side["InjectedRadioactivity"] * 1e6)
    assert np.allclose(suv, vol.array * factor, rtol=1e-6)


def test_file_errors(written, tmp_path):
    ex, p = written
    side = json.loads(p["pet_static"].with_name(
        p["pet_static"].name.replace(".nii.gz", ".json")).read_text())
    img = tmp_path / "pet.nii.gz"
    nib.save(nib.load(p["pet_static"]), img)
    with pytest.raises(ImageFormatError, match="JSON sidecar not found"):
        load_suv(img)
    side.pop("BodyWeight")
    (tmp_path / "pet.json").write_text(json.dumps(side))
    with pytest.raises(ImageFormatError, match="BodyWeight must be a number"):
        load_suv(img)
    mask = nib.load(p["pet_mask_tumor"])
    off = tmp_path / "off.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj)[:-1], mask.affine), off)
    with pytest.raises(ImageFormatError, match="tumor mask is not on the PET grid"):
        quantify_files(pet_static=p["pet_static"], tumor_mask=off)
