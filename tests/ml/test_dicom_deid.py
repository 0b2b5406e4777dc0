"""De-identification: nothing identifying leaves read_dicom_series; dates shift, times stay, UIDs
are remapped deterministically."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ml.io.deid import clean_metadata, deidentify_dataset, shift_date, uid_map
from ml.io.dicom import read_dicom_series
from ml.io.dicom_write import write_series

PHI = {
    "PatientName": "Martin^Claire^Anne",
    "PatientID": "NANCY-778899",
    "PatientBirthDate": "19610415",
    "PatientAddress": "12 rue Stanislas, 54000 Nancy",
    "InstitutionName": "CHRU Nancy Brabois",
    "ReferringPhysicianName": "Durand^Paul",
    "OperatorsName": "Tech^Julie",
    "AccessionNumber": "A20240102-17",
    "OtherPatientIDs": "SECU-1610454123456",
    "PatientTelephoneNumbers": "+33383000000",
}

@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A fresh folder of its own (tmp_path also holds the shared media root)."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    return folder



@pytest.fixture
def pet_folder(out: Path) -> tuple[Path, pydicom.Dataset]:
    values = np.random.default_rng(0).uniform(100, 1000, size=(8, 8, 4))
    paths = write_series(values, np.diag([2.0, 2.0, 3.0, 1.0]), out, modality="PT", header=PHI)
    return out, pydicom.dcmread(paths[0])


def test_read_dicom_series_metadata_holds_no_phi(pet_folder: tuple[Path, pydicom.Dataset]) -> None:
    folder, original = pet_folder
    (series,) = read_dicom_series(folder, date_shift_days=-40, uid_salt="site-secret")
    text = json.dumps(series.metadata)
    for value in PHI.values():
        for part in re.split(r"[\^ ,]+", value):
            if len(part) > 3:
                assert part not in text, f"{part!r} leaked into metadata"
    assert str(original.StudyInstanceUID) not in text
    assert str(original.SeriesInstanceUID) not in text
    assert series.metadata["patient_identity_removed"] is True
    # Kept on purpose: what SUV and the analysis need.
    assert series.metadata["weight_kg"] == 70.0
    assert series.metadata["patient_sex"] == "F"
    assert series.metadata["tracer"] == "Fluoroethyltyrosine"


def test_dates_are_shifted_and_times_kept(pet_folder: tuple[Path, pydicom.Dataset]) -> None:
    folder, _ = pet_folder
    (series,) = read_dicom_series(folder, date_shift_days=-40, uid_salt="s")
    # 2024-01-02 minus 40 days is 2023-11-23.
    assert series.metadata["study_date"] == "20231123"
    assert series.metadata["series_date"] == "20231123"
    assert series.metadata["series_time"] == "100000"
    assert series.metadata["injection_datetime"] == "20231123093000.000000"
    # The shift is not stored beside the shifted dates: with it anyone could undo the shift.
    assert "date_shift_days" not in series.metadata
    assert "-40" not in str(series.metadata) and "40" not in map(str, series.metadata.values())
    # Shifting dates never changes SUV: it uses time differences only.
    (unshifted,) = read_dicom_series(folder)
    assert series.suv_factor == unshifted.suv_factor


def test_uids_remapped_deterministically_per_salt(pet_folder: tuple[Path, pydicom.Dataset]) -> None:
    folder, original = pet_folder
    (a,) = read_dicom_series(folder, uid_salt="one")
    (b,) = read_dicom_series(folder, uid_salt="one")
    (c,) = read_dicom_series(folder, uid_salt="two")
    assert a.metadata["series_uid"] == b.metadata["series_uid"]
    assert a.metadata["series_uid"] != c.metadata["series_uid"]
    assert a.metadata["series_uid"] == uid_map(str(original.SeriesInstanceUID), salt="one")
    assert a.metadata["series_uid"] != str(original.SeriesInstanceUID)


def test_uid_map_gives_valid_uids() -> None:
    for uid in ["1.2.3", "1.2.840.113619.2.55.3.604688119.868.1249343483.504" * 1, "9" * 64]:
        new = uid_map(uid, salt="x")
        assert len(new) <= 64
        assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", new)


def test_shift_date_crosses_month_and_leap_day() -> None:
    assert shift_date("20240301", -1) == "20240229"
    assert shift_date("20231231", 1) == "20240101"
    assert shift_date("", 5) == ""
    with pytest.raises(ValueError):
        shift_date("2024-13", 1)


def test_deidentify_real_pydicom_file() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert ds.PatientName and ds.PatientID
    assert any(elem.tag.is_private for elem in ds)
    clean = deidentify_dataset(ds, date_shift_days=10, salt="k")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName"):
        assert keyword not in clean
    assert not any(elem.tag.is_private for elem in clean)
    assert clean.StudyDate == shift_date(ds.StudyDate, 10)
    assert clean.StudyTime == ds.StudyTime
    assert clean.SOPInstanceUID == uid_map(ds.SOPInstanceUID, salt="k")
    assert clean.PatientIdentityRemoved == "YES"
    # The original is left alone unless asked.
    assert ds.PatientName and "PatientID" in ds


def test_nested_sequence_dates_shift_and_old_ages_capped() -> None:
    ds = pydicom.Dataset()
    ds.Modality = "PT"
    ds.PatientAge = "093Y"
    item = pydicom.Dataset()
    item.RadiopharmaceuticalStartDateTime = "20240102093000"
    item.RadionuclideTotalDose = 2e8
    ds.RadiopharmaceuticalInformationSequence = [item]
    meta = clean_metadata(ds, date_shift_days=-2, salt="")
    assert meta["injection_datetime"] == "20231231093000"
    assert meta["patient_age"] == "090Y"
    assert meta["injected_dose_bq"] == 2e8
