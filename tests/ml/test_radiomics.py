"""Radiomics: first-order and shape features against independent numpy computations, invariance."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from ml.quant import phantom as P
from ml.radiomics import (
    exam_features,
    extract_features,
    feature_table,
    load_feature_table,
    load_params,
    save_feature_table,
)


@pytest.fixture(scope="module")
def noisy():
    ph = P.static_phantom(2.0)
    rng = np.random.default_rng(7)
    ph["suv"] = ph["suv"] * rng.uniform(0.8, 1.2, size=ph["suv"].shape)
    return ph


def test_params_from_the_single_yaml_file():
    p = load_params("pet_suv")
    assert p["setting"]["binWidth"] == 0.25
    assert p["setting"]["resampledPixelSpacing"] == [2.0, 2.0, 2.0]
    assert load_params("pet_suv", {"binWidth": 0.5})["setting"]["binWidth"] == 0.5
    with pytest.raises(ValueError, match="image_type"):
        load_params("ct")


@pytest.mark.parametrize("resample", [None, [2.0, 2.0, 2.0]])
def test_first_order_and_volume_match_numpy(noisy, resample):
    """No resampling, or resampling to the native 2 mm grid: values are the voxel values."""
    ph = noisy
    f = extract_features(ph["suv"], ph["tumor"], ph["affine"], image_type="pet_suv",
                         config={"resampledPixelSpacing": resample})
    v = ph["suv"][ph["tumor"]]
    assert f["original_firstorder_Mean"] == pytest.approx(v.mean(), rel=1e-6)
    assert f["original_firstorder_Maximum"] == pytest.approx(v.max(), rel=1e-6)
    assert f["original_firstorder_Minimum"] == pytest.approx(v.min(), rel=1e-6)
    assert f["original_firstorder_Energy"] == pytest.approx(np.sum(v**2), rel=1e-6)
    assert f["original_firstorder_Variance"] == pytest.approx(v.var(), rel=1e-6)
    assert f["original_shape_VoxelVolume"] == pytest.approx(v.size * 8.0)  # mm^3
    assert f["original_shape_VoxelVolume"] == pytest.approx(P.TUMOR_VOLUME_ML * 1000)


def test_bin_width_drives_the_discretised_entropy(noisy):
    ph = noisy
    v = ph["suv"][ph["tumor"]]
    f = extract_features(ph["suv"], ph["tumor"], ph["affine"], image_type="pet_suv",
                         config={"resampledPixelSpacing": None, "featureClass": ["firstorder"]})
    # IBSI fixed bin width: bin = floor(x / w) - floor(min / w) + 1, w = 0.25.
    bins = np.floor(v / 0.25) - np.floor(v.min() / 0.25)
    p = np.bincount(bins.astype(int)) / v.size
    p = p[p > 0]
    assert f["original_firstorder_Entropy"] == pytest.approx(-np.sum(p * np.log2(p)), rel=1e-6)


@pytest.mark.parametrize("storage", ["lps", "transposed"])
def test_features_do_not_depend_on_storage_orientation(noisy, storage):
    ras = {k: noisy[k] for k in ("suv", "tumor", "affine")}
    other = {"lps": P.to_lps, "transposed": P.to_transposed}[storage](ras)
    a = extract_features(ras["suv"], ras["tumor"], ras["affine"], image_type="pet_suv")
    b = extract_features(other["suv"], other["tumor"], other["affine"], image_type="pet_suv")
    assert a.keys() == b.keys() and len(a) > 90
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key


def test_exam_table_roundtrip(noisy, tmp_path):
    ph = noisy
    ttp = np.where(ph["tumor"], 7.0 + ph["suv"], np.nan)  # NaN outside the mask is allowed
    cfg = {"featureClass": ["firstorder"], "resampledPixelSpacing": None}
    row = exam_features({"pet_suv": ph["suv"], "tbr": ph["suv"], "ttp": ttp, "t1c": ph["suv"]},
                        ph["tumor"], ph["affine"], config=cfg)
    assert row["tbr__original_firstorder_Mean"] == pytest.approx(row["pet_suv__original_firstorder_Mean"])
    assert row["ttp__original_firstorder_Mean"] == pytest.approx(
        7.0 + ph["suv"][ph["tumor"]].mean(), rel=1e-6)
    table = feature_table({"sub-1/ses-1": row, "sub-2/ses-1": row})
    path = save_feature_table(table, tmp_path / "features.csv")
    back = load_feature_table(path)
    assert list(back.index) == ["sub-1/ses-1", "sub-2/ses-1"]
    assert np.allclose(back.to_numpy(), table.to_numpy())


def test_bad_inputs(noisy):
    ph = noisy
    with pytest.raises(ValueError, match="mask: the mask is empty"):
        extract_features(ph["suv"], np.zeros_like(ph["tumor"]), ph["affine"], image_type="pet_suv")
    bad = ph["suv"].copy()
    bad[ph["tumor"]] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values inside the mask"):
        extract_features(bad, ph["tumor"], ph["affine"], image_type="pet_suv")


def test_pyradiomics_logging_is_silenced(noisy, caplog):
    ph = noisy
    with caplog.at_level(logging.INFO):
        extract_features(ph["suv"], ph["tumor"], ph["affine"], image_type="pet_suv",
                         config={"featureClass": ["firstorder"]})
    assert not [r for r in caplog.records if r.name.startswith("radiomics")]


def test_nan_outside_mask_does_not_bias_resampled_map():
    """A TTP map of 7 min inside the tumour, NaN elsewhere, 4 mm voxels resampled to 2 mm."""
    ph = P.static_phantom(4.0)
    ttp = np.where(ph["tumor"], 7.0, np.nan)
    f = extract_features(ttp, ph["tumor"], ph["affine"], image_type="ttp",
                         config={"featureClass": ["firstorder"]})
    assert f["original_firstorder_Mean"] == pytest.approx(7.0, abs=1e-6)
    assert f["original_firstorder_Minimum"] == pytest.approx(7.0, abs=1e-6)
