"""Body-weight SUV: formula, pass-through, and the QIBA DICOM flow chart on real vendor headers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset

from ml.quant.suv import (
    F18_HALF_LIFE_S,
    SuvHeaderError,
    injection_datetime,
    scan_datetime,
    suv_bw_factor,
    suv_factor_from_dicom,
    suv_factors_from_dicom,
    to_suv,
)
from tests.fixtures.suv.vendor_headers import (
    expected_factors,
    header_sets,
    load_instances,
    to_dataset,
)

EXPECTED = expected_factors()


def test_readme_lists_all_eight_header_sets() -> None:
    assert len(EXPECTED) == 8
    assert sorted(EXPECTED) == header_sets()


def test_factor_after_one_half_life_halves_the_dose() -> None:
    # After exactly one half-life 200 MBq has decayed to 100 MBq: 70 kg -> 70000 g / 1e8 Bq.
    factor = suv_bw_factor(
        injected_dose_bq=200e6, weight_kg=70.0, half_life_s=F18_HALF_LIFE_S, delay_s=F18_HALF_LIFE_S
    )
    assert factor == pytest.approx(7e-4, rel=1e-12)


def test_factor_without_delay_is_weight_over_dose() -> None:
    assert suv_bw_factor(injected_dose_bq=3.5e8, weight_kg=70.0, half_life_s=6586.2, delay_s=0.0) == (
        pytest.approx(2e-4, rel=1e-12)
    )


def test_decay_corrected_to_injection_ignores_delay() -> None:
    factor = suv_bw_factor(
        injected_dose_bq=2e8,
        weight_kg=80.0,
        half_life_s=6586.2,
        delay_s=3600.0,
        decay_corrected_to_injection=True,
    )
    assert factor == pytest.approx(80000.0 / 2e8, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"injected_dose_bq": 0.0},
        {"weight_kg": -1.0},
        {"half_life_s": float("nan")},
        {"delay_s": float("inf")},
        {"delay_s": 1e9},
    ],
)
def test_factor_rejects_bad_numbers(kwargs: dict) -> None:
    args = {"injected_dose_bq": 2e8, "weight_kg": 70.0, "half_life_s": 6586.2, "delay_s": 10.0}
    args.update(kwargs)
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        suv_bw_factor(**args)


@pytest.mark.parametrize("units", ["SUV", "g/ml"])
def test_to_suv_passes_suv_through(units: str) -> None:
    values = np.array([[0.5, 2.0], [3.25, 7.0]])
    out = to_suv(values, units)
    np.testing.assert_array_equal(out, values.astype(np.float32))
    assert out is not values


def test_to_suv_converts_bq_per_ml() -> None:
    values = np.array([1000.0, 5000.0, 20000.0])
    out = to_suv(values, "Bq/mL", injected_dose_bq=2e8, weight_kg=70.0, delay_s=F18_HALF_LIFE_S)
    np.testing.assert_allclose(out, values * 7e-4, rtol=1e-6)


def test_to_suv_rejects_unknown_units_and_missing_dose() -> None:
    with pytest.raises(ValueError, match="CNTS"):
        to_suv(np.ones(3), "CNTS")
    with pytest.raises(ValueError, match="injected_dose_bq"):
        to_suv(np.ones(3), "BQML", weight_kg=70.0, delay_s=0.0)


@pytest.mark.parametrize("name", header_sets())
def test_vendor_header_sets_give_reference_factor(name: str) -> None:
    datasets = [to_dataset(h) for h in load_instances(name)]
    factors = suv_factors_from_dicom(datasets)
    for factor in factors:
        assert abs(factor - EXPECTED[name]) < 1e-6
        assert factor == pytest.approx(EXPECTED[name], rel=1e-9)
    # One instance alone gives the same answer.
    assert suv_factor_from_dicom(datasets[0]) == pytest.approx(EXPECTED[name], rel=1e-9)


def test_siemens_factor_from_hand_computation() -> None:
    # Independent arithmetic on the SIEMENS header: series 10:48:29, injection 08:30:45,
    # 67 kg, 374 MBq, T1/2 6586.2 s.
    delay = (10 * 3600 + 48 * 60 + 29) - (8 * 3600 + 30 * 60 + 45)
    expected = 67000.0 / (374e6 * math.exp(-math.log(2) * delay / 6586.2))
    ds = to_dataset(load_instances("SIEMENS-instances.json")[0])
    assert suv_factor_from_dicom(ds) == pytest.approx(expected, rel=1e-12)


def test_philips_private_group_is_ignored_for_bqml() -> None:
    ds = to_dataset(load_instances("PHILIPS_BQML-instances.json")[0])
    private = float(ds.get_private_item(0x7053, 0x00, "Philips PET Private Group").value)
    factor = suv_factor_from_dicom(ds)
    assert abs(factor - private) > 1e-3  # 0.0035 would be the (wrong) private value


def test_cnts_with_only_activity_scale_uses_bqml_rule() -> None:
    header = load_instances("PHILIPS_CNTS_AND_BQML_SUV-instances.json")[0]
    header = dict(header, PhilipsPETPrivateGroup={"ActivityConcentrationScaleFactor": "1.602563"})
    ds = to_dataset(header)
    bqml = to_dataset(dict(header, Units="BQML", PhilipsPETPrivateGroup={}))
    assert suv_factor_from_dicom(ds) == pytest.approx(1.602563 * suv_factor_from_dicom(bqml), rel=1e-12)


def _simple_header(**overrides: object) -> Dataset:
    header = {
        "SeriesDate": "20240102",
        "SeriesTime": "100000",
        "AcquisitionDate": "20240102",
        "AcquisitionTime": "100000",
        "PatientWeight": 70,
        "Units": "BQML",
        "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY"],
        "RadionuclideTotalDose": 2e8,
        "RadionuclideHalfLife": 6586.2,
        "RadiopharmaceuticalStartTime": "090000",
        "PhilipsPETPrivateGroup": {},
    }
    header.update(overrides)
    return to_dataset({k: v for k, v in header.items() if v is not None})


def test_admin_decay_correction_uses_undecayed_dose() -> None:
    assert suv_factor_from_dicom(_simple_header(DecayCorrection="ADMIN")) == pytest.approx(70000 / 2e8)


def test_gml_units_are_already_suv() -> None:
    assert suv_factor_from_dicom(_simple_header(Units="GML")) == 1.0


def test_injection_before_midnight_is_taken_on_previous_day() -> None:
    ds = _simple_header(SeriesTime="000500", AcquisitionTime="000500", RadiopharmaceuticalStartTime="233500")
    scan = scan_datetime(ds)
    assert (scan - injection_datetime(ds, scan=scan)).total_seconds() == 30 * 60


def test_ge_private_scan_datetime_used_when_series_after_acquisition() -> None:
    ds = _simple_header(SeriesTime="103000", AcquisitionTime="100000")
    ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", "20240102101000")
    expected = suv_bw_factor(injected_dose_bq=2e8, weight_kg=70, half_life_s=6586.2, delay_s=70 * 60)
    assert suv_factor_from_dicom(ds) == pytest.approx(expected, rel=1e-12)


def test_earliest_acquisition_used_without_frame_times() -> None:
    # Series time after every acquisition, no usable FrameReferenceTime: earliest acquisition.
    ds = _simple_header(SeriesTime="103000", AcquisitionTime="101500")
    other = _simple_header(SeriesTime="103000", AcquisitionTime="100500")
    expected = suv_bw_factor(injected_dose_bq=2e8, weight_kg=70, half_life_s=6586.2, delay_s=65 * 60)
    assert suv_factor_from_dicom(ds, series=[ds, other]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"PatientWeight": None}, "PatientWeight"),
        ({"RadionuclideTotalDose": None}, "RadionuclideTotalDose"),
        ({"RadionuclideHalfLife": None}, "RadionuclideHalfLife"),
        ({"Units": None}, "Units"),
        ({"Units": "PROPCNTS"}, "PROPCNTS"),
        ({"Units": "CNTS"}, "SUVScaleFactor"),
        ({"DecayCorrection": "NONE"}, "DecayCorrection"),
        ({"CorrectedImage": ["ATTN"]}, "DECY"),
        ({"RadiopharmaceuticalStartTime": None}, "RadiopharmaceuticalStartTime"),
        ({"RadiopharmaceuticalStartDateTime": "20240102110000"}, "impossible"),
    ],
)
def test_unusable_headers_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(SuvHeaderError, match=field):
        suv_factor_from_dicom(_simple_header(**overrides))
