"""Write a realistic single-frame-per-file DICOM series (PET or MR) from a NIfTI-style array.

Used by the synthetic cohort generator to export an exam as a hospital would send it, and by the
tests to feed :mod:`ml.io.dicom` with known volumes and headers. Geometry follows the nibabel
convention on input (array indexed (X, Y, Z[, T]), affine mapping voxel indices to RAS+ mm) and
the DICOM convention on output (patient LPS, PS3.3 C.7.6.2.1.1):

* array axis 0 (i) runs along the DICOM row direction (column index of the pixel matrix),
  axis 1 (j) along the column direction, so each file's pixel matrix is ``volume[:, :, k].T``;
* ImageOrientationPatient = LPS direction cosines of the affine's first two columns;
* ImagePositionPatient of slice k = LPS position of voxel (0, 0, k), so any affine (RAS, LPS,
  oblique, even a gantry-tilt shear) is represented exactly.

PET files carry what a scanner writes for quantification: Units BQML, DecayCorrection START,
CorrectedImage with ATTN and DECY, RadiopharmaceuticalInformationSequence (dose, start date-time,
F-18 half-life), PatientWeight, FrameReferenceTime, ActualFrameDuration, NumberOfTimeSlices,
ImageIndex. Values are stored as int16 with a per-slice RescaleSlope (as PET scanners do).
Patient name, ID and birth date are filled in so that de-identification can be tested.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from ml.quant.suv import F18_HALF_LIFE_S, parse_dicom_datetime

__all__ = ["write_series", "PET_SOP_CLASS_UID", "MR_SOP_CLASS_UID", "RADIOPHARMACEUTICAL_KEYWORDS"]

PET_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.128"
MR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.4"

#: Header keywords that live in the RadiopharmaceuticalInformationSequence item.
RADIOPHARMACEUTICAL_KEYWORDS = frozenset(
    {
        "Radiopharmaceutical",
        "RadiopharmaceuticalStartTime",
        "RadiopharmaceuticalStartDateTime",
        "RadiopharmaceuticalStopTime",
        "RadiopharmaceuticalStopDateTime",
        "RadionuclideTotalDose",
        "RadionuclideHalfLife",
        "RadionuclidePositronFraction",
        "RadiopharmaceuticalVolume",
        "RadiopharmaceuticalRoute",
        "RadionuclideCodeSequence",
        "RadiopharmaceuticalCodeSequence",
    }
)

_LPS = np.diag([-1.0, -1.0, 1.0])
_INT16_MAX = 32767


def _default_header(modality: str) -> dict[str, Any]:
    header: dict[str, Any] = {
        "PatientName": "Synthetic^Patient",
        "PatientID": "SYN-0001",
        "PatientBirthDate": "19700101",
        "PatientSex": "F",
        "PatientAge": "054Y",
        "PatientWeight": 70.0,
        "PatientSize": 1.70,
        "PatientAddress": "1 Synthetic Street, Nancy",
        "InstitutionName": "Synthetic University Hospital",
        "ReferringPhysicianName": "Referrer^Synthetic",
        "OperatorsName": "Operator^Synthetic",
        "AccessionNumber": "ACC0001",
        "StudyID": "1",
        "StudyDate": "20240102",
        "StudyTime": "093000",
        "SeriesDate": "20240102",
        "SeriesTime": "100000",
        "AcquisitionDate": "20240102",
        "ContentDate": "20240102",
        "StudyDescription": "Brain amino-acid PET/MR",
        "Manufacturer": "AminoPET synthetic",
        "ManufacturerModelName": "write_series",
        "SeriesNumber": 1,
        "PatientPosition": "HFS",
    }
    if modality == "PT":
        header.update(
            {
                "SeriesDescription": "PET Brain FET",
                "Units": "BQML",
                "DecayCorrection": "START",
                "CorrectedImage": ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"],
                "Radiopharmaceutical": "Fluoroethyltyrosine",
                "RadionuclideTotalDose": 200_000_000.0,
                "RadionuclideHalfLife": F18_HALF_LIFE_S,
                "RadionuclidePositronFraction": 0.9673,
                "RadiopharmaceuticalStartTime": "093000.000000",
                "RadiopharmaceuticalStartDateTime": "20240102093000.000000",
            }
        )
    else:
        header.update(
            {
                "SeriesDescription": "T1 MPRAGE",
                "MagneticFieldStrength": 3.0,
                "RepetitionTime": 2300.0,
                "EchoTime": 2.98,
                "ScanningSequence": "GR",
                "SequenceVariant": "SP",
            }
        )
    return header


def _fmt_time(moment: datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def _lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray, np.ndarray]:
    """Row/column cosines, PixelSpacing, slice step and origin, in LPS, from a RAS affine."""
    m = np.asarray(affine, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"write_series: affine must be a finite 4x4 matrix, got shape {m.shape}")
    cols = _LPS @ m[:3, :3]
    origin = _LPS @ m[:3, 3]
    norms = np.linalg.norm(cols, axis=0)
    if np.any(norms <= 0) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError("write_series: affine has a zero voxel size or is singular")
    row_cos = cols[:, 0] / norms[0]
    col_cos = cols[:, 1] / norms[1]
    if abs(float(row_cos @ col_cos)) > 1e-4:
        raise ValueError("write_series: the in-plane axes of the affine are not orthogonal")
    # PixelSpacing is (spacing between rows, spacing between columns) = (|j step|, |i step|).
    spacing = [float(norms[1]), float(norms[0])]
    return row_cos, col_cos, spacing, cols[:, 2], origin


def _apply_header(ds: Dataset, rp: Dataset, header: Mapping[str, Any]) -> None:
    for keyword, value in header.items():
        if keyword == "PhilipsPETPrivateGroup":
            continue
        if keyword == "GEPrivateScanDateTime":
            continue
        target = rp if keyword in RADIOPHARMACEUTICAL_KEYWORDS else ds
        if value is None:
            if keyword in target:
                delattr(target, keyword)
            continue
        if isinstance(value, str):
            value = value.strip()
        setattr(target, keyword, value)
    philips = header.get("PhilipsPETPrivateGroup")
    if philips:
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        if philips.get("SUVScaleFactor") not in (None, ""):
            block.add_new(0x00, "DS", str(philips["SUVScaleFactor"]).strip())
        if philips.get("ActivityConcentrationScaleFactor") not in (None, ""):
            block.add_new(0x09, "DS", str(philips["ActivityConcentrationScaleFactor"]).strip())
    ge_dt = header.get("GEPrivateScanDateTime")
    if ge_dt:
        ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", str(ge_dt).strip())


def _check_timing(
    n_frames: int, frame_start_s: Sequence[float] | None, frame_duration_s: Sequence[float] | None, is_4d: bool
) -> tuple[np.ndarray, np.ndarray]:
    if frame_start_s is None or frame_duration_s is None:
        if is_4d:
            raise ValueError("write_series: a 4D (dynamic) series needs frame_start_s and frame_duration_s")
        return np.array([0.0]), np.array([600.0])
    starts = np.atleast_1d(np.asarray(frame_start_s, dtype=np.float64))
    durations = np.atleast_1d(np.asarray(frame_duration_s, dtype=np.float64))
    if starts.shape != (n_frames,) or durations.shape != (n_frames,):
        raise ValueError(
            f"write_series: {n_frames} frame(s) but {starts.size} start(s) and {durations.size} duration(s)"
        )
    if np.any(durations <= 0) or np.any(starts < 0) or not np.all(np.isfinite(starts)):
        raise ValueError("write_series: frame starts must be >= 0 and durations > 0")
    return starts, durations


def _quantise(plane: np.ndarray) -> tuple[np.ndarray, float]:
    """int16 pixels and the RescaleSlope that gives them back (intercept 0)."""
    peak = float(np.max(np.abs(plane))) if plane.size else 0.0
    # Rounded to what a DS holds, so the stored integers match the slope written.
    slope = float(f"{peak / _INT16_MAX:.10g}") if peak > 0 else 1.0
    stored = np.clip(np.rint(plane / slope), -_INT16_MAX - 1, _INT16_MAX).astype(np.int16)
    return stored, slope


def write_series(
    array: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    *,
    modality: str,
    header: Mapping[str, Any] | None = None,
    frame_start_s: Sequence[float] | None = None,
    frame_duration_s: Sequence[float] | None = None,
) -> list[Path]:
    """Write one DICOM series, one file per slice (and per frame), into ``out_dir``.

    Args:
        array: (X, Y, Z) or, for PET only, (X, Y, Z, T) values (Bq/mL for PET, as stored by a
            scanner with Units BQML; any finite values).
        affine: 4x4 voxel-to-RAS+ mm matrix (nibabel convention).
        out_dir: folder to create/fill; files are named ``IM00001.dcm``...
        modality: ``"PT"`` or ``"MR"``.
        header: DICOM keywords overriding or adding to the defaults, applied to every file;
            radiopharmaceutical keywords (RadionuclideTotalDose, RadiopharmaceuticalStartTime...)
            go into the RadiopharmaceuticalInformationSequence item; a value of ``None`` removes
            the attribute. Two extra keys: ``PhilipsPETPrivateGroup`` ({"SUVScaleFactor",
            "ActivityConcentrationScaleFactor"} -> private (7053,1000)/(7053,1009)) and
            ``GEPrivateScanDateTime`` (DT -> private (0009,100D)).
        frame_start_s: start of each frame from the series start (SeriesTime), s; required for 4D,
            default (0,) for 3D.
        frame_duration_s: duration of each frame, s; required for 4D, default (600,) for 3D.

    Returns:
        The written file paths, in InstanceNumber order.

    Raises:
        ValueError: wrong modality, dimensionality, non-finite values, a bad affine or timing.
    """
    modality = str(modality).upper()
    if modality not in ("PT", "MR"):
        raise ValueError(f"write_series: modality must be 'PT' or 'MR', got {modality!r}")
    values = np.asarray(array, dtype=np.float64)
    if values.ndim == 3:
        values = values[..., np.newaxis]
        is_4d = False
    elif values.ndim == 4 and modality == "PT":
        is_4d = True
    else:
        raise ValueError(
            f"write_series: array must be 3D (or 4D for PT), got shape {np.shape(array)} for {modality}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("write_series: array contains NaN or infinite values")
    nx, ny, nz, nt = values.shape
    starts, durations = _check_timing(nt, frame_start_s, frame_duration_s, is_4d)
    row_cos, col_cos, spacing, slice_step, origin = _lps_geometry(affine)
    normal = np.cross(row_cos, col_cos)
    slice_spacing = abs(float(slice_step @ normal))

    merged: dict[str, Any] = _default_header(modality)
    given = dict(header or {})
    if given.get("SeriesDate"):
        # Keep the other dates of the file on the series' day.
        for keyword in ("StudyDate", "AcquisitionDate", "ContentDate"):
            merged[keyword] = given["SeriesDate"]
    if "RadiopharmaceuticalStartTime" in given and "RadiopharmaceuticalStartDateTime" not in given:
        # A header with only the start time (older scanners) must not inherit the default date-time.
        merged.pop("RadiopharmaceuticalStartDateTime", None)
    merged.update(given)
    series_moment = parse_dicom_datetime(str(merged["SeriesDate"]), str(merged["SeriesTime"]))
    study_uid = merged.pop("StudyInstanceUID", None) or generate_uid()
    series_uid = merged.pop("SeriesInstanceUID", None) or generate_uid()
    frame_uid = merged.pop("FrameOfReferenceUID", None) or generate_uid()
    sop_class = PET_SOP_CLASS_UID if modality == "PT" else MR_SOP_CLASS_UID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for t in range(nt):
        acquisition = series_moment + timedelta(seconds=float(starts[t]))
        for k in range(nz):
            index = t * nz + k + 1
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = sop_class
            sop_uid = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.Modality = modality
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.InstanceNumber = index
            ds.AcquisitionTime = _fmt_time(acquisition)
            ds.ContentTime = _fmt_time(acquisition)
            position = origin + k * slice_step
            ds.ImagePositionPatient = [float(f"{v:.6f}") for v in position]
            ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in (*row_cos, *col_cos)]
            ds.PixelSpacing = [float(f"{v:.8f}") for v in spacing]
            ds.SliceThickness = float(f"{slice_spacing:.6f}")
            ds.SpacingBetweenSlices = float(f"{slice_spacing:.6f}")
            ds.SliceLocation = float(f"{float(position @ normal):.6f}")
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            rp = Dataset()
            if modality == "PT":
                ds.SeriesType = ["DYNAMIC" if is_4d else "STATIC", "IMAGE"]
                ds.NumberOfSlices = nz
                ds.NumberOfTimeSlices = nt
                ds.ImageIndex = index
                ds.ActualFrameDuration = int(round(durations[t] * 1000.0))
                # Reference time taken at mid-frame, in ms from the series start.
                ds.FrameReferenceTime = float(f"{(starts[t] + durations[t] / 2.0) * 1000.0:.3f}")
                ds.CountsSource = "EMISSION"
                ds.AttenuationCorrectionMethod = "CT-based"
                ds.ReconstructionMethod = "OSEM"
            _apply_header(ds, rp, merged)
            if modality == "PT":
                if "RadionuclideCodeSequence" not in rp:
                    code = Dataset()
                    code.CodeValue = "C-111A1"
                    code.CodingSchemeDesignator = "SRT"
                    code.CodeMeaning = "^18^Fluorine"
                    rp.RadionuclideCodeSequence = [code]
                ds.RadiopharmaceuticalInformationSequence = [rp]
            plane = values[:, :, k, t].T  # rows = j, columns = i
            stored, slope = _quantise(plane)
            ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope = slope
            ds.RescaleIntercept = 0.0
            if modality == "PT":
                ds.RescaleType = str(ds.get("Units", "BQML"))
            ds.PixelData = np.ascontiguousarray(stored).astype("<i2").tobytes()
            path = out / f"IM{index:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
