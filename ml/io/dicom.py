"""Read PET and MR DICOM series (folder or zip) into NIfTI-style arrays, SUV and de-identified facts.

This is the library half of ``manage.py import_dicom``: it takes a path and returns
:class:`DicomSeries` results; the Django service stores them. Plain Python, no Django.

Geometry (DICOM PS3.3 C.7.6.2.1.1, nibabel's DICOM orientation notes): for each file the pixel
matrix is transposed so array axis 0 runs along the DICOM row direction (ImageOrientationPatient
first triplet) and axis 1 along the column direction; slices are sorted by the projection of
ImagePositionPatient on the slice normal (row x column cosines); the third affine column is the
measured step between the first and last slice, so oblique and gantry-tilted series come out exact.
The LPS affine is flipped to RAS+ (``diag(-1, -1, 1, 1) @ A_lps``), as nibabel does. The array is not
reoriented: the affine alone says where each voxel is.

PET is converted to body-weight SUV with :func:`ml.quant.suv.suv_factors_from_dicom` (QIBA flow
chart) per instance, after RescaleSlope/Intercept. Dynamic PET frames are grouped by
ImageIndex/NumberOfSlices (or by FrameReferenceTime, or AcquisitionTime) and checked against
NumberOfTimeSlices. Headers are de-identified by :mod:`ml.io.deid` before anything leaves.
Every unusable input raises :class:`ml.io.errors.ImageFormatError` naming the file and the reason.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ml.io.archive import safe_extract
from ml.io.deid import clean_metadata
from ml.io.errors import ImageFormatError
from ml.quant.suv import SuvHeaderError, parse_dicom_datetime, suv_factors_from_dicom

__all__ = ["DicomSeries", "read_dicom_series", "series_to_nifti", "guess_kind", "DEFAULT_MAX_BYTES"]

#: Default cap on the expanded size of a zip (2 GiB): a dynamic brain PET is ~100 MB.
DEFAULT_MAX_BYTES = 2 * 1024**3

#: Files in DICOM folders that are not images and are skipped without complaint.
_SKIP_NAMES = {"dicomdir", "readme", "thumbs.db", "lockfile", "version"}
_SKIP_SUFFIXES = {".txt", ".json", ".md", ".xml", ".htm", ".html", ".pdf", ".ini", ".log", ".csv"}

#: Objects that carry pixel data but are not image volumes (segmentations, RT, reports...).
_NON_VOLUME_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTIMAGE", "SR", "PR", "KO", "REG", "DOC"}

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Relative tolerance on slice spacing (and absolute floor in mm): what scanners' rounding of
# ImagePositionPatient to a few decimals allows, far below a missing slice.
_SPACING_RTOL = 0.01
_SPACING_ATOL_MM = 0.01
_ORIENT_ATOL = 1e-4


@dataclass(frozen=True, eq=False)
class DicomSeries:
    """One DICOM series as a NIfTI-style volume.

    Attributes:
        array: float32 (X, Y, Z) or (X, Y, Z, T) for dynamic PET; SUV for PET when converted.
        affine: 4x4 voxel-to-RAS+ mm matrix (nibabel convention).
        modality: DICOM Modality ("PT", "MR", or "CT" for the reference files).
        kind: guessed volume kind: pet_static, pet_dynamic, t1, t1c, t2, flair or "unknown".
        units: "SUV" for converted PET, else the stored units ("Bq/mL", "CNTS", "" for MR/CT).
        suv_factor: SUVbw factor applied (SUV per rescaled stored value), None when not PET.
        frame_start_s: start of each frame from the series reference time, s (PET), else None.
        frame_duration_s: duration of each frame, s (PET), else None.
        metadata: de-identified facts (see :func:`ml.io.deid.clean_metadata`) plus the kind hints.
        source_files: the files read, in (frame, slice) order.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str
    kind: str
    units: str
    suv_factor: float | None
    frame_start_s: tuple[float, ...] | None
    frame_duration_s: tuple[float, ...] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    source_files: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape."""
        return tuple(self.array.shape)

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths (norms of the affine's first three columns), mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Collecting files
# ---------------------------------------------------------------------------------------------


def _is_skippable(name: str) -> bool:
    base = os.path.basename(name)
    lower = base.lower()
    return (
        not base
        or base.startswith(".")
        or lower in _SKIP_NAMES
        or os.path.splitext(lower)[1] in _SKIP_SUFFIXES
        or "__macosx" in name.lower()
    )


def _extract_zip(archive: Path, dest: Path, max_bytes: int) -> list[tuple[Path, str]]:
    """Safely extract a zip (ml.io.archive); returns (extracted path, display name) pairs."""
    safe_extract(archive, dest, max_bytes=max_bytes)
    files = []
    for root, dirs, names in os.walk(dest):
        dirs.sort()
        for name in sorted(names):
            full = Path(root) / name
            rel = full.relative_to(dest).as_posix()
            if not _is_skippable(rel):
                files.append((full, f"{archive}!{rel}"))
    return files


def _collect(path: Path, tmp: Path, max_bytes: int) -> list[tuple[Path, str]]:
    if not path.exists():
        raise ImageFormatError(path, "does not exist")
    if path.is_dir():
        found = []
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                full = Path(root) / name
                if _is_skippable(str(full.relative_to(path))):
                    continue
                found.append((full, str(full)))
        return found
    if zipfile.is_zipfile(path):
        return _extract_zip(path, tmp, max_bytes)
    return [(path, str(path))]


def _read_header(file: Path, shown: str) -> Dataset | None:
    """A DICOM image dataset; None for DICOM that is not an image volume; raises when not DICOM."""
    try:
        ds = pydicom.dcmread(file)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(file, force=True)
        except Exception as exc:  # pydicom raises many types on garbage
            raise ImageFormatError(shown, f"not a DICOM file ({exc.__class__.__name__})") from exc
        if "Modality" not in ds or "SOPClassUID" not in ds:
            raise ImageFormatError(shown, "not a DICOM file (no DICM preamble, no DICOM header)") from None
    except Exception as exc:
        raise ImageFormatError(shown, f"not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return None
    if str(ds.get("Modality", "")).upper() in _NON_VOLUME_MODALITIES:
        return None
    frames = ds.get("NumberOfFrames")
    if frames is not None and str(frames).strip() and int(frames) > 1:
        raise ImageFormatError(
            shown,
            f"enhanced multi-frame DICOM ({int(frames)} frames in one file) is not supported; "
            "export the series as classic single-frame images",
        )
    return ds


# ---------------------------------------------------------------------------------------------
# Kind guess
# ---------------------------------------------------------------------------------------------


def guess_kind(ds: Dataset, *, n_frames: int = 1) -> str:
    """Guess the AminoPET volume kind from the header.

    PET: ``pet_dynamic`` with more than one frame (or SeriesType DYNAMIC), else ``pet_static``.
    MR: keywords in SeriesDescription / ProtocolName / SequenceName (T1/MPRAGE/SPGR/BRAVO/TFE,
    T1-FLAIR included, with contrast words or ContrastBolusAgent -> t1c, else t1; FLAIR, TIRM,
    dark fluid -> flair; T2 -> t2); failing that, timing (inversion time > 1500 ms -> flair; TR > 2000 ms and
    TE > 60 ms -> t2). Anything else: ``unknown``.
    """
    modality = str(ds.get("Modality", "")).upper()
    if modality == "PT":
        series_type = [str(v).upper() for v in (ds.get("SeriesType") or [])]
        return "pet_dynamic" if n_frames > 1 or "DYNAMIC" in series_type else "pet_static"
    if modality != "MR":
        return "unknown"
    text = " ".join(
        str(ds.get(k, "")) for k in ("SeriesDescription", "ProtocolName", "SequenceName")
    ).lower()
    words = text.replace("_", " ").replace("-", " ").replace("+", " + ").split()
    t1_words = ("t1", "mprage", "spgr", "bravo", "tfe", "vibe", "fspgr", "mp2rage")
    is_t1 = any(w.startswith(t1_words) for w in words) or any(w in text for w in ("mprage", "spgr", "bravo"))
    # T1-FLAIR is T1-weighted (an inversion-prepared T1), not the T2 FLAIR AminoPET wants.
    if any(w in text for w in ("flair", "tirm", "dark fluid", "darkfluid")) and not is_t1:
        return "flair"
    contrast = bool(str(ds.get("ContrastBolusAgent", "")).strip()) or any(
        w in words for w in ("+", "post", "gd", "gad", "contrast", "ce", "km", "postcontrast", "+c")
    ) or any(w in text for w in ("+gd", "+c", "post gd", "gado", "_ce", "postcontr"))
    if any(w.startswith("t2") for w in words) and not is_t1:
        return "t2"
    if is_t1:
        return "t1c" if contrast else "t1"
    ti = ds.get("InversionTime")
    tr = ds.get("RepetitionTime")
    te = ds.get("EchoTime")
    try:
        if ti is not None and float(ti) > 1500:
            return "flair"
        if tr is not None and te is not None and float(tr) > 2000 and float(te) > 60:
            return "t2"
    except (TypeError, ValueError):
        pass
    return "unknown"


# ---------------------------------------------------------------------------------------------
# Geometry and assembly
# ---------------------------------------------------------------------------------------------


def _floats(ds: Dataset, keyword: str, n: int, shown: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (n,) or not np.all(np.isfinite(out)):
        raise ImageFormatError(shown, f"{keyword} is missing or malformed")
    return out


def _pixels(ds: Dataset, shown: str) -> np.ndarray:
    try:
        raw = ds.pixel_array
    except Exception as exc:  # truncated data, missing decoder, bad lengths
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise ImageFormatError(
            shown, f"pixel data cannot be decoded (truncated file or transfer syntax {ts}: {exc})"
        ) from exc
    if raw.ndim != 2:
        raise ImageFormatError(
            shown, f"pixel data has shape {raw.shape}: only single-frame greyscale images are supported"
        )
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError) as exc:
        raise ImageFormatError(shown, f"RescaleSlope/RescaleIntercept malformed ({exc})") from exc
    values = raw.astype(np.float64) * slope + intercept
    if not np.all(np.isfinite(values)):
        raise ImageFormatError(shown, "pixel values contain NaN or infinity (after rescale)")
    return values.T  # (Columns, Rows) = (X, Y)


@dataclass
class _Slice:
    ds: Dataset
    shown: str
    position: np.ndarray
    frame: int


def _frame_index(items: list[_Slice], shown0: str) -> None:
    """Set each slice's frame number (dynamic PET), or leave 0 for single-frame series."""
    first = items[0].ds
    n_slices = first.get("NumberOfSlices")
    n_time = first.get("NumberOfTimeSlices")
    if first.get("Modality") == "PT" and n_slices and n_time and int(n_time) > 1 and all(
        "ImageIndex" in s.ds for s in items
    ):
        for s in items:
            s.frame = (int(s.ds.ImageIndex) - 1) // int(n_slices)
        return
    positions = {tuple(np.round(s.position, 3)) for s in items}
    if len(positions) == len(items):
        return
    # PET frames differ in reference/acquisition time; MR slices always do, so MR only groups by
    # an explicit temporal position (other duplicates, e.g. echoes, are a mixed series).
    keywords = (
        ("FrameReferenceTime", "AcquisitionTime")
        if str(first.get("Modality", "")).upper() == "PT"
        else ("TemporalPositionIdentifier",)
    )
    for keyword in keywords:
        keys = [s.ds.get(keyword) for s in items]
        if any(k is None or str(k).strip() == "" for k in keys) or len({str(k) for k in keys}) < 2:
            continue
        try:
            numbers = [_time_s(k) if keyword == "AcquisitionTime" else float(k) for k in keys]
        except (TypeError, ValueError):
            continue
        lookup = {v: i for i, v in enumerate(sorted(set(numbers)))}
        for s, number in zip(items, numbers):
            s.frame = lookup[number]
        return
    raise ImageFormatError(
        shown0,
        "several images share one slice position and nothing tells them apart as frames "
        "(mixed series or duplicate files)",
    )


def _time_s(tm: Any) -> float:
    moment = parse_dicom_datetime("20000101", str(tm))
    return moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6


def _check_consistent(items: list[_Slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = items[0]
    iop = _floats(ref.ds, "ImageOrientationPatient", 6, ref.shown)
    spacing = _floats(ref.ds, "PixelSpacing", 2, ref.shown)
    shape = (int(ref.ds.Rows), int(ref.ds.Columns))
    for s in items[1:]:
        other = _floats(s.ds, "ImageOrientationPatient", 6, s.shown)
        if not np.allclose(other, iop, atol=_ORIENT_ATOL):
            raise ImageFormatError(
                s.shown,
                "mixed series: ImageOrientationPatient differs from "
                f"{ref.shown} ({other.round(4).tolist()} vs {iop.round(4).tolist()})",
            )
        if (int(s.ds.Rows), int(s.ds.Columns)) != shape:
            raise ImageFormatError(
                s.shown, f"mixed series: image size {s.ds.Rows}x{s.ds.Columns} differs from {ref.shown} ({shape[0]}x{shape[1]})"
            )
        if not np.allclose(_floats(s.ds, "PixelSpacing", 2, s.shown), spacing, rtol=1e-4):
            raise ImageFormatError(s.shown, f"mixed series: PixelSpacing differs from {ref.shown}")
    row_cos, col_cos = iop[:3], iop[3:]
    if abs(np.linalg.norm(row_cos) - 1) > 1e-3 or abs(np.linalg.norm(col_cos) - 1) > 1e-3:
        raise ImageFormatError(ref.shown, "ImageOrientationPatient cosines are not unit vectors")
    return row_cos / np.linalg.norm(row_cos), col_cos / np.linalg.norm(col_cos), spacing


def _slice_step(frame: list[_Slice], normal: np.ndarray, first_ds: Dataset) -> np.ndarray:
    """Step vector between consecutive slices; raises on gaps, duplicates or jitter."""
    if len(frame) == 1:
        thickness = first_ds.get("SpacingBetweenSlices") or first_ds.get("SliceThickness") or 1.0
        return normal * abs(float(thickness))
    heights = np.array([float(s.position @ normal) for s in frame])
    gaps = np.diff(heights)
    typical = float(np.median(gaps))
    if typical <= _SPACING_ATOL_MM or np.any(gaps <= _SPACING_ATOL_MM):
        i = int(np.argmin(gaps))
        raise ImageFormatError(
            frame[i + 1].shown,
            f"slices share one position with {frame[i].shown} (duplicate images or mixed series)",
        )
    tol = max(_SPACING_ATOL_MM, _SPACING_RTOL * typical)
    bad = np.flatnonzero(np.abs(gaps - typical) > tol)
    if bad.size:
        i = int(bad[0])
        raise ImageFormatError(
            frame[i + 1].shown,
            f"missing slices or non-uniform slice spacing: {gaps[i]:.3f} mm from the previous slice "
            f"({frame[i].shown}) where the series has {typical:.3f} mm",
        )
    step = (frame[-1].position - frame[0].position) / (len(frame) - 1)
    for k, s in enumerate(frame):
        expected = frame[0].position + k * step
        if np.linalg.norm(s.position - expected) > tol:
            raise ImageFormatError(
                s.shown, "slice positions do not lie on one line (mixed series or inconsistent geometry)"
            )
    return step


def _frame_timing(
    frames: list[list[_Slice]], shown: str
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    firsts = [f[0].ds for f in frames]
    durations = [d.get("ActualFrameDuration") for d in firsts]
    if any(d is None for d in durations):
        if len(frames) > 1:
            raise ImageFormatError(shown, "dynamic PET without ActualFrameDuration (frame timing)")
        return None, None
    dur_s = [float(d) / 1000.0 for d in durations]
    series_moment = None
    try:
        series_moment = parse_dicom_datetime(str(firsts[0].SeriesDate), str(firsts[0].SeriesTime))
        acq = [
            parse_dicom_datetime(str(d.get("AcquisitionDate") or d.SeriesDate), str(d.AcquisitionTime))
            for d in firsts
        ]
    except (AttributeError, ValueError):
        acq = []
    if len(frames) > 1 and acq and len(set(acq)) == len(acq) and series_moment is not None:
        # Frame starts count from the series start; a SeriesTime written after the first frame
        # began (some GE exports) falls back on the first frame's start.
        reference = min(series_moment, min(acq))
        starts = [(a - reference).total_seconds() for a in acq]
    else:
        refs = [d.get("FrameReferenceTime") for d in firsts]
        if any(r is None for r in refs):
            if len(frames) > 1:
                raise ImageFormatError(shown, "dynamic PET without FrameReferenceTime or per-frame AcquisitionTime")
            return None, None
        # FrameReferenceTime is taken as mid-frame (what write_series writes; Siemens' average
        # count-rate time differs by < 1 s for frames of a few minutes).
        starts = [float(r) / 1000.0 - d / 2.0 for r, d in zip(refs, dur_s)]
    return tuple(round(s, 6) for s in starts), tuple(dur_s)


def _assemble(items: list[_Slice], *, convert_suv: bool, date_shift_days: int, uid_salt: str) -> DicomSeries:
    first = items[0]
    modality = str(first.ds.get("Modality", "")).upper()
    for s in items:
        s.position = _floats(s.ds, "ImagePositionPatient", 3, s.shown)
    row_cos, col_cos, spacing = _check_consistent(items)
    normal = np.cross(row_cos, col_cos)
    _frame_index(items, first.shown)
    by_frame: dict[int, list[_Slice]] = defaultdict(list)
    for s in items:
        by_frame[s.frame].append(s)
    frames = [sorted(by_frame[f], key=lambda s: float(s.position @ normal)) for f in sorted(by_frame)]
    n_time = first.ds.get("NumberOfTimeSlices")
    if modality == "PT" and n_time and int(n_time) > 1 and len(frames) != int(n_time):
        raise ImageFormatError(
            first.shown, f"frame count mismatch: NumberOfTimeSlices is {int(n_time)} but {len(frames)} frame(s) found"
        )
    n_slices = len(frames[0])
    for f in frames[1:]:
        if len(f) != n_slices:
            raise ImageFormatError(
                f[0].shown,
                f"missing slices: this frame has {len(f)} slice(s), the first frame {n_slices}",
            )
    declared = first.ds.get("NumberOfSlices")
    if modality == "PT" and declared and int(declared) != n_slices:
        raise ImageFormatError(
            first.shown, f"missing slices: NumberOfSlices is {int(declared)} but {n_slices} found per frame"
        )
    ref_heights = np.array([float(s.position @ normal) for s in frames[0]])
    for f in frames[1:]:
        heights = np.array([float(s.position @ normal) for s in f])
        if not np.allclose(heights, ref_heights, atol=max(_SPACING_ATOL_MM, 1e-3 * np.ptp(ref_heights))):
            raise ImageFormatError(f[0].shown, "frames do not share the same slice positions")
    step = _slice_step(frames[0], normal, first.ds)
    first_slice = frames[0][0]

    factors: list[float] | None = None
    units = ""
    if modality == "PT":
        raw_units = str(first.ds.get("Units", "")).strip().upper()
        units = {"BQML": "Bq/mL", "GML": "SUV"}.get(raw_units, raw_units)
        if convert_suv:
            ordered = [s.ds for f in frames for s in f]
            try:
                factors = suv_factors_from_dicom(ordered)
            except SuvHeaderError as exc:
                raise ImageFormatError(first.shown, f"cannot compute SUV: {exc}") from exc
            except ValueError as exc:
                raise ImageFormatError(first.shown, f"cannot compute SUV: {exc}") from exc
            units = "SUV"

    planes = []
    position = 0
    for f in frames:
        stack = []
        for s in f:
            plane = _pixels(s.ds, s.shown)
            if factors is not None:
                plane = plane * factors[position]
            position += 1
            stack.append(plane)
        planes.append(np.stack(stack, axis=-1))
    array = np.stack(planes, axis=-1) if len(planes) > 1 else planes[0]
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ImageFormatError(first.shown, "values overflow float32 (NaN or infinity after SUV conversion)")

    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[1]
    lps[:3, 1] = col_cos * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = first_slice.position
    affine = _LPS_TO_RAS @ lps

    frame_start = frame_duration = None
    if modality == "PT":
        frame_start, frame_duration = _frame_timing(frames, first.shown)
    kind = guess_kind(first.ds, n_frames=len(frames))
    metadata = clean_metadata(first.ds, date_shift_days=date_shift_days, salt=uid_salt)
    suv_factor: float | None = None
    if factors is not None:
        suv_factor = float(factors[0])
        metadata["suv_factor_varies"] = bool(np.ptp(factors) > 1e-9 * abs(factors[0]))
    return DicomSeries(
        array=array,
        affine=affine,
        modality=modality,
        kind=kind,
        units=units,
        suv_factor=suv_factor,
        frame_start_s=frame_start,
        frame_duration_s=frame_duration,
        metadata=metadata,
        source_files=tuple(s.shown for f in frames for s in f),
    )


def read_dicom_series(
    path: str | Path,
    *,
    convert_suv: bool = True,
    date_shift_days: int = 0,
    uid_salt: str = "",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[DicomSeries]:
    """Read every image series in a DICOM folder, zip or single file.

    Args:
        path: a folder (searched recursively), a zip archive, or one DICOM file.
        convert_suv: convert PET to body-weight SUV (QIBA); False keeps the stored units.
        date_shift_days: days added to dates in the returned metadata (de-identification; the
            importer picks one offset per patient).
        uid_salt: salt for the deterministic UID remapping in the metadata.
        max_bytes: cap on the expanded size of a zip archive (zip-bomb guard).

    Returns:
        One :class:`DicomSeries` per SeriesInstanceUID with image data, ordered by SeriesNumber.

    Raises:
        ImageFormatError: not DICOM, unsafe or oversized zip, missing slices, mixed series,
            frame count mismatch, PET without what SUV needs, NaN values; names the file.
    """
    root = Path(path)
    with tempfile.TemporaryDirectory(prefix="aminopet-dicom-") as tmp:
        files = _collect(root, Path(tmp), int(max_bytes))
        groups: dict[str, list[_Slice]] = defaultdict(list)
        for file, shown in files:
            ds = _read_header(file, shown)
            if ds is None:
                continue
            uid = str(ds.get("SeriesInstanceUID", "")) or f"no-series-uid:{shown}"
            groups[uid].append(_Slice(ds=ds, shown=shown, position=np.zeros(3), frame=0))
        if not groups:
            raise ImageFormatError(root, "no DICOM image series found")
        series = [
            _assemble(items, convert_suv=convert_suv, date_shift_days=date_shift_days, uid_salt=uid_salt)
            for items in groups.values()
        ]
    series.sort(key=lambda s: (s.metadata.get("series_number") or 0, s.metadata.get("series_description", "")))
    return series


def series_to_nifti(series: DicomSeries) -> nib.Nifti1Image:
    """A NIfTI-1 image of the series (float32, sform/qform = scanner), frame duration in pixdim[4].

    Args:
        series: a result of :func:`read_dicom_series`.
    """
    image = nib.Nifti1Image(np.asarray(series.array, dtype=np.float32), series.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(series.affine, code=1)
    image.set_qform(series.affine, code=1)
    if series.array.ndim == 4 and series.frame_duration_s:
        zooms = list(image.header.get_zooms())
        zooms[3] = float(np.median(series.frame_duration_s))
        image.header.set_zooms(zooms)
    image.header["descrip"] = f"AminoPET {series.kind} {series.units}"[:79].encode()
    return image
