"""Static quantification and reference regions on analytic box phantoms (exact values)."""
from __future__ import annotations

import numpy as np
import pytest

from ml.quant import ROW_COLUMNS, QuantConfig, quantify_exam
from ml.quant import phantom as P
from ml.quant.regions import mirror_mask, mirrored_background_mask
from ml.quant.static import static_parameters


def _ras(voxel_mm: float = 2.0) -> dict[str, np.ndarray]:
    return P.static_phantom(voxel_mm)


STORAGES = {"ras": lambda a: a, "lps": P.to_lps, "transposed": P.to_transposed}


@pytest.mark.parametrize("storage", sorted(STORAGES))
@pytest.mark.parametrize("voxel_mm", [2.0, 4.0])
def test_static_parameters_exact_whatever_orientation_and_voxel_size(storage, voxel_mm):
    ph = STORAGES[storage](_ras(voxel_mm))
    q = quantify_exam(pet_static=ph["suv"], affine=ph["affine"], tumor_mask=ph["tumor"],
                      striatum_mask=ph["striatum"])
    n_core = P.CORE_VOLUME_ML / P.TUMOR_VOLUME_ML
    expected_mean = P.SUV_CORE * n_core + P.SUV_TUMOR * (1 - n_core)
    assert q.background_source == "mirrored"
    assert q.static.background_mean == pytest.approx(P.SUV_BRAIN, abs=1e-12)
    assert q.static.suv_max == pytest.approx(P.SUV_CORE, abs=1e-12)
    assert q.static.suv_mean == pytest.approx(expected_mean, rel=1e-12)
    assert q.static.tbr_max == pytest.approx(P.SUV_CORE / P.SUV_BRAIN, rel=1e-12)
    assert q.static.tbr_mean == pytest.approx(expected_mean / P.SUV_BRAIN, rel=1e-12)
    assert q.static.ts_max == pytest.approx(P.SUV_CORE / P.SUV_STRIATUM, rel=1e-12)
    assert q.static.ts_mean == pytest.approx(expected_mean / P.SUV_STRIATUM, rel=1e-12)
    assert q.static.mtv_ml == pytest.approx(P.TUMOR_VOLUME_ML, rel=1e-12)
    row = q.to_row()
    assert tuple(row) == ROW_COLUMNS
    assert np.isnan(row["ttp_min"]) and row["curve_class"] == "n/a"


@pytest.mark.parametrize("storage", sorted(STORAGES))
def test_mirrored_background_is_the_contralateral_copy_of_the_tumour(storage):
    ras = _ras(2.0)
    ph = STORAGES[storage](ras)
    bg = mirrored_background_mask(ph["tumor"], ph["affine"], pet=ph["suv"])
    # Compare in world coordinates: the background is the tumour box reflected to x > 0.
    idx = np.argwhere(bg)
    world = (ph["affine"][:3, :3] @ idx.T).T + ph["affine"][:3, 3]
    (x0, x1), (y0, y1), (z0, z1) = P.TUMOR_BOX
    assert len(idx) == int(ras["tumor"].sum())
    assert np.all((world[:, 0] > -x1) & (world[:, 0] < -x0))
    assert np.all((world[:, 1] > y0) & (world[:, 1] < y1))
    assert np.all((world[:, 2] > z0) & (world[:, 2] < z1))


def test_mtv_threshold_selects_the_hot_core():
    ph = _ras(2.0)
    # Background mean 1; a threshold TBR of 3.5 keeps only the 4.0 core.
    q = quantify_exam(pet_static=ph["suv"], affine=ph["affine"], tumor_mask=ph["tumor"],
                      config=QuantConfig(mtv_threshold_tbr=3.5))
    assert q.static.mtv_ml == pytest.approx(P.CORE_VOLUME_ML, rel=1e-12)
    assert np.isnan(q.static.ts_max)


def test_given_background_mask_is_used_and_ratios_use_its_mean():
    ph = _ras(2.0)
    bg = np.zeros_like(ph["tumor"])
    bg[30:34, 20:24, 10:14] = True
    suv = ph["suv"].copy()
    suv[bg] = np.linspace(0.5, 1.5, int(bg.sum()))  # mean 1.0, max 1.5: ratios use the MEAN
    q = quantify_exam(pet_static=suv, affine=ph["affine"], tumor_mask=ph["tumor"],
                      background_mask=bg)
    assert q.background_source == "given"
    assert q.static.tbr_max == pytest.approx(P.SUV_CORE / 1.0, rel=1e-12)


def test_small_tumour_background_grows_to_min_volume():
    ph = _ras(2.0)
    tumor = np.zeros_like(ph["tumor"])
    tumor[12, 22, 12] = True  # one voxel, 0.008 mL
    bg = mirrored_background_mask(tumor, ph["affine"], pet=ph["suv"], min_volume_ml=1.0,
                                  margin_mm=0.0)
    assert bg.sum() * 0.008 >= 1.0
    assert not (bg & tumor).any()
    assert np.all(ph["brain"][bg])


def test_mirror_mask_across_given_midline_is_an_involution():
    ph = _ras(2.0)
    once = mirror_mask(ph["tumor"], ph["affine"], midline_x_mm=0.0)
    assert not (once & ph["tumor"]).any()
    assert np.array_equal(mirror_mask(once, ph["affine"], midline_x_mm=0.0), ph["tumor"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tumor_mask": "empty"}, "tumor_mask: the mask is empty"),
        ({"tumor_mask": "wrong_shape"}, "tumor_mask: shape"),
        ({"pet_static": "nan"}, "pet_static: contains 1 NaN"),
        ({"pet_static": "4d"}, "pet_static: expected a 3-D array"),
        ({"affine": "singular"}, "affine: the 3x3 part is singular"),
        ({"striatum_mask": "empty"}, "striatum_mask: the mask is empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    ph = _ras(4.0)
    args = {"pet_static": ph["suv"], "affine": ph["affine"], "tumor_mask": ph["tumor"]}
    for key, what in kwargs.items():
        if what == "empty":
            args[key] = np.zeros_like(ph["tumor"])
        elif what == "wrong_shape":
            args[key] = ph["tumor"][:-1]
        elif what == "nan":
            bad = ph["suv"].copy()
            bad[0, 0, 0] = np.nan
            args[key] = bad
        elif what == "4d":
            args[key] = ph["suv"][..., None]
        elif what == "singular":
            args[key] = np.zeros((4, 4))
    with pytest.raises(ValueError, match=match):
        quantify_exam(**args)


def test_static_parameters_rejects_zero_background():
    ph = _ras(4.0)
    outside = ~ph["brain"]
    with pytest.raises(ValueError, match="background_mask: mean SUV"):
        static_parameters(ph["suv"], ph["tumor"], affine=ph["affine"], background_mask=outside)
