"""De-identification of DICOM headers on import (DICOM PS3.15 Annex E basic profile).

What AminoPET keeps from a DICOM header must not identify the patient. This module applies the
Basic Application Level Confidentiality Profile (PS3.15 Table E.1-1) to the attributes that occur
in PET and MR series, with these options:

* Retain Longitudinal Temporal Information with Modified Dates: dates are shifted by a whole number
  of days (per patient, chosen by the importer), times are kept, so uptake times and frame timing
  stay exact.
* Retain Patient Characteristics: sex, age, weight and size are kept (body-weight SUV needs them);
  ages above 89 years are reported as "090Y" (HIPAA safe harbour).
* UIDs are replaced by ``2.25.<int>`` UIDs derived from a salted SHA-256, so the same input UID
  maps to the same output UID within one salt (series stay grouped) and cannot be reversed.
* Private tags are removed (the SUV factor is computed before de-identification).
* Series description and protocol name are kept (Clean Descriptors option, without cleaning):
  they are needed to tell T1 from FLAIR; coordinators are told to keep names out of them.

It is plain Python over pydicom datasets; :mod:`ml.io.dicom` calls it so that nothing
identifying leaves :func:`ml.io.dicom.read_dicom_series`.
"""
from __future__ import annotations

import copy
import hashlib
from datetime import date, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

__all__ = [
    "REMOVE_KEYWORDS",
    "DATE_KEYWORDS",
    "DATETIME_KEYWORDS",
    "UID_KEYWORDS",
    "uid_map",
    "shift_date",
    "shift_datetime",
    "deidentify_dataset",
    "clean_metadata",
]

#: Attributes removed (PS3.15 Table E.1-1 actions X, Z, D treated as removal; names, IDs, birth
#: data, addresses, telephone numbers, institution, staff, free-text comments, device serial).
REMOVE_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientBirthName",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "OtherPatientIDsSequence",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientReligiousPreference",
    "PatientComments",
    "PatientInsurancePlanCodeSequence",
    "MedicalRecordLocator",
    "MilitaryRank",
    "BranchOfService",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "CountryOfResidence",
    "RegionOfResidence",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
    "AccessionNumber",
    "StudyID",
    "RequestAttributesSequence",
    "ReferencedPatientSequence",
    "ReferencedStudySequence",
    "PerformedProcedureStepID",
    "ScheduledProcedureStepID",
    "ImageComments",
    "StudyComments",
    "RequestedProcedureDescription",
    "AdmittingDiagnosesDescription",
    "PatientState",
    "MedicalAlerts",
    "Allergies",
    "PregnancyStatus",
    "SmokingStatus",
)

#: DA attributes shifted by the date offset.
DATE_KEYWORDS: tuple[str, ...] = (
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
    "PerformedProcedureStepStartDate",
)

#: DT attributes shifted by the date offset (time of day kept).
DATETIME_KEYWORDS: tuple[str, ...] = (
    "AcquisitionDateTime",
    "RadiopharmaceuticalStartDateTime",
    "RadiopharmaceuticalStopDateTime",
)

#: UID attributes replaced by salted hashes.
UID_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "MediaStorageSOPInstanceUID",
    "FrameOfReferenceUID",
    "ReferencedSOPInstanceUID",
    "ReferencedFrameOfReferenceUID",
    "InstanceCreatorUID",
    "IrradiationEventUID",
    "StorageMediaFileSetUID",
)


def uid_map(uid: str, *, salt: str) -> str:
    """Deterministic, non-reversible replacement UID (``2.25.<decimal>``, PS3.5 B.2).

    Args:
        uid: the original UID.
        salt: a secret per deployment (or per study); same salt and UID give the same result.

    Returns:
        A valid UID of at most 64 characters.
    """
    digest = hashlib.sha256(f"{salt}\x00{str(uid).strip()}".encode()).digest()
    # 2.25. + a 128-bit integer stays under 64 characters (39 digits max).
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def shift_date(da: str, days: int) -> str:
    """Shift a DICOM DA (``YYYYMMDD``) by ``days``; empty input gives empty output.

    Raises:
        ValueError: a non-empty value that is not a DICOM date.
    """
    text = str(da).strip()
    if not text:
        return ""
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"not a DICOM date: {da!r}")
    shifted = date(int(text[:4]), int(text[4:6]), int(text[6:8])) + timedelta(days=int(days))
    return shifted.strftime("%Y%m%d")


def shift_datetime(dt: str, days: int) -> str:
    """Shift the date part of a DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``) by ``days``."""
    text = str(dt).strip()
    if len(text) < 8:
        return ""
    return shift_date(text[:8], days) + text[8:]


def _age_capped(age: str) -> str:
    text = str(age).strip()
    if len(text) == 4 and text[:3].isdigit() and text[3] == "Y" and int(text[:3]) > 89:
        return "090Y"
    return text


def _clean(ds: Dataset, *, date_shift_days: int, salt: str) -> None:
    for keyword in REMOVE_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in DATE_KEYWORDS:
        if keyword in ds and ds.data_element(keyword).value:
            try:
                setattr(ds, keyword, shift_date(ds.data_element(keyword).value, date_shift_days))
            except ValueError:
                delattr(ds, keyword)
    for keyword in DATETIME_KEYWORDS:
        if keyword in ds and ds.data_element(keyword).value:
            try:
                setattr(ds, keyword, shift_datetime(ds.data_element(keyword).value, date_shift_days))
            except ValueError:
                delattr(ds, keyword)
    for keyword in UID_KEYWORDS:
        if keyword in ds and ds.data_element(keyword).value:
            setattr(ds, keyword, uid_map(str(ds.data_element(keyword).value), salt=salt))
    if "PatientAge" in ds and ds.PatientAge:
        ds.PatientAge = _age_capped(ds.PatientAge)
    for elem in list(ds):
        if elem.VR == "SQ" and isinstance(elem.value, DicomSequence):
            for item in elem.value:
                _clean(item, date_shift_days=date_shift_days, salt=salt)


def deidentify_dataset(
    ds: Dataset, *, date_shift_days: int = 0, salt: str = "", in_place: bool = False
) -> Dataset:
    """Apply the basic profile (see module docstring) to a dataset, nested sequences included.

    Args:
        ds: a pydicom Dataset.
        date_shift_days: days added to every date (negative moves back in time).
        salt: salt for :func:`uid_map`.
        in_place: modify ``ds`` instead of a copy.

    Returns:
        The de-identified dataset, marked PatientIdentityRemoved = YES.
    """
    out = ds if in_place else copy.deepcopy(ds)
    if hasattr(out, "file_meta") and out.file_meta is not None and "MediaStorageSOPInstanceUID" in out.file_meta:
        out.file_meta.MediaStorageSOPInstanceUID = uid_map(
            str(out.file_meta.MediaStorageSOPInstanceUID), salt=salt
        )
    out.remove_private_tags()
    _clean(out, date_shift_days=date_shift_days, salt=salt)
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "PS3.15 basic profile, dates shifted, UIDs remapped"
    return out


def _number(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def clean_metadata(ds: Dataset, *, date_shift_days: int = 0, salt: str = "") -> dict[str, Any]:
    """The de-identified facts AminoPET keeps from one series (built from its first instance).

    Only non-identifying fields are read (an allow-list), from a de-identified copy, so nothing
    identifying can slip through when a vendor adds attributes.

    Args:
        ds: a representative instance of the series (the original header).
        date_shift_days: days added to dates.
        salt: salt for UID remapping.

    Returns:
        A JSON-serialisable dict: modality, manufacturer, model, series description, protocol,
        tracer, dose, weight, size, sex, age, shifted dates, kept times, remapped UIDs, PET units
        and decay correction, and ``patient_identity_removed: True``. The shift itself is not in
        it: stored beside the shifted dates it would undo the de-identification.
    """
    clean = deidentify_dataset(ds, date_shift_days=date_shift_days, salt=salt)
    rp = Dataset()
    if "RadiopharmaceuticalInformationSequence" in clean and clean.RadiopharmaceuticalInformationSequence:
        rp = clean.RadiopharmaceuticalInformationSequence[0]
    nuclide = ""
    if "RadionuclideCodeSequence" in rp and rp.RadionuclideCodeSequence:
        nuclide = _text(rp.RadionuclideCodeSequence[0].get("CodeMeaning"))
    meta: dict[str, Any] = {
        "modality": _text(clean.get("Modality")),
        "manufacturer": _text(clean.get("Manufacturer")),
        "manufacturer_model": _text(clean.get("ManufacturerModelName")),
        "series_description": _text(clean.get("SeriesDescription")),
        "protocol_name": _text(clean.get("ProtocolName")),
        "series_number": _number(clean.get("SeriesNumber")),
        "study_date": _text(clean.get("StudyDate")),
        "series_date": _text(clean.get("SeriesDate")),
        "series_time": _text(clean.get("SeriesTime")),
        "study_uid": _text(clean.get("StudyInstanceUID")),
        "series_uid": _text(clean.get("SeriesInstanceUID")),
        "frame_of_reference_uid": _text(clean.get("FrameOfReferenceUID")),
        "patient_sex": _text(clean.get("PatientSex")),
        "patient_age": _text(clean.get("PatientAge")),
        "weight_kg": _number(clean.get("PatientWeight")),
        "height_m": _number(clean.get("PatientSize")),
        "patient_identity_removed": True,
    }
    if meta["modality"] == "PT":
        meta.update(
            {
                "tracer": _text(rp.get("Radiopharmaceutical")),
                "radionuclide": nuclide,
                "injected_dose_bq": _number(rp.get("RadionuclideTotalDose")),
                "half_life_s": _number(rp.get("RadionuclideHalfLife")),
                "injection_datetime": _text(rp.get("RadiopharmaceuticalStartDateTime")),
                "injection_time": _text(rp.get("RadiopharmaceuticalStartTime")),
                "pet_units": _text(clean.get("Units")),
                "decay_correction": _text(clean.get("DecayCorrection")),
                "corrected_image": _list(clean.get("CorrectedImage")),
            }
        )
    if meta["modality"] == "MR":
        meta.update(
            {
                "magnetic_field_strength_t": _number(clean.get("MagneticFieldStrength")),
                "repetition_time_ms": _number(clean.get("RepetitionTime")),
                "echo_time_ms": _number(clean.get("EchoTime")),
                "inversion_time_ms": _number(clean.get("InversionTime")),
                "contrast_agent": _text(clean.get("ContrastBolusAgent")),
            }
        )
    return meta
