"""Export biopsy targets for a navigation system: point list (CSV), NIfTI mask, DICOM SEG.

* :func:`write_points_csv`: one row per target, ``name, x_mm, y_mm, z_mm, method, margin_mm`` in
  the exam's scanner coordinates (RAS+ mm, the NIfTI convention; ``coordinates="LPS"`` writes
  DICOM patient coordinates instead). A target planned on the common grid (MNI mm) is taken to the
  scanner with ``scanner_from_world`` (the inverse of the registration's world-to-template map).
* :func:`write_region_nifti`: the target region as a uint8 NIfTI mask on the exam's grid.
* :func:`write_region_seg`: the region as a DICOM Segmentation (highdicom, binary, one segment)
  referencing the exam's series. The mask must lie on that series' grid: slice k of the mask
  ``mask[:, :, k]`` is the pixel matrix (transposed: rows = j, columns = i, as
  :mod:`ml.io.dicom_write` writes) of the k-th source image in slice order. An exam without DICOM
  gets minimal source images written from the grid (:func:`source_series_from_grid`, a PET
  series of the given values via ``ml.io.dicom_write.write_series``), so the SEG always has a
  series to reference.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ml.io.dicom_write import write_series
from ml.subregions.target import BiopsyTarget

__all__ = [
    "POINT_COLUMNS",
    "series_affine",
    "source_series_from_grid",
    "write_points_csv",
    "write_region_nifti",
    "write_region_seg",
]

POINT_COLUMNS = ("name", "x_mm", "y_mm", "z_mm", "method", "margin_mm")
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_points_csv(
    targets: Sequence[BiopsyTarget],
    path: str | Path,
    *,
    names: Sequence[str] | None = None,
    scanner_from_world: np.ndarray | None = None,
    coordinates: str = "RAS",
) -> Path:
    """Write the target points (module docstring) and return the path.

    Args:
        targets: the targets (their ``point_mm`` is in the world of the grid they were planned on).
        path: CSV file to write.
        names: one name per target (default ``target_1``...).
        scanner_from_world: (4, 4) world -> scanner mm; None when the grid is the scanner's.
        coordinates: ``"RAS"`` (NIfTI) or ``"LPS"`` (DICOM patient coordinates).

    Raises:
        ValueError: names of the wrong length, a bad matrix or coordinate system.
    """
    names = list(names) if names is not None else [f"target_{i + 1}" for i in range(len(targets))]
    if len(names) != len(targets):
        raise ValueError(f"{len(targets)} targets but {len(names)} names")
    if coordinates not in ("RAS", "LPS"):
        raise ValueError(f"coordinates: 'RAS' or 'LPS', got {coordinates!r}")
    m = np.eye(4) if scanner_from_world is None else np.asarray(scanner_from_world, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"scanner_from_world: expected a finite 4x4 matrix, got shape {m.shape}")
    if coordinates == "LPS":
        m = _LPS @ m
    p = Path(path)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(POINT_COLUMNS)
        for name, t in zip(names, targets):
            x, y, z = (m @ np.array([*t.point_mm, 1.0]))[:3]
            w.writerow([name, f"{x:.2f}", f"{y:.2f}", f"{z:.2f}", t.method, f"{t.margin_mm:g}"])
    return p


def write_region_nifti(region: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """The target region as a uint8 (0/1) NIfTI mask with the grid's affine (sform/qform code 1)."""
    r = np.asarray(region)
    if r.ndim != 3:
        raise ValueError(f"region: expected (X, Y, Z), got shape {r.shape}")
    img = nib.Nifti1Image((r > 0).astype(np.uint8), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    p = Path(path)
    nib.save(img, p)
    return p


def _slice_sorted(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    ds0 = datasets[0]
    iop = np.asarray(ds0.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda d: float(np.asarray(d.ImagePositionPatient, float) @ normal))


def series_affine(datasets: Sequence[pydicom.Dataset]) -> np.ndarray:
    """The RAS voxel -> mm affine of a single-frame series in slice order (i along rows of the
    pixel matrix's columns, j along its rows, k across slices), inverse of ml.io.dicom_write."""
    ds = _slice_sorted(datasets)
    iop = np.asarray(ds[0].ImageOrientationPatient, dtype=np.float64)
    dr, dc = (float(v) for v in ds[0].PixelSpacing)
    p0 = np.asarray(ds[0].ImagePositionPatient, dtype=np.float64)
    step = (np.asarray(ds[-1].ImagePositionPatient, float) - p0) / max(len(ds) - 1, 1)
    if len(ds) == 1:
        step = np.cross(iop[:3], iop[3:]) * float(getattr(ds[0], "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * dc
    lps[:3, 1] = iop[3:] * dr
    lps[:3, 2] = step
    lps[:3, 3] = p0
    return _LPS @ lps


def source_series_from_grid(values: np.ndarray, affine: np.ndarray, out_dir: str | Path,
                            *, header: dict | None = None, modality: str = "PT") -> list[pydicom.Dataset]:
    """Minimal source images for an exam without DICOM: a static series (``modality`` ``"PT"``
    or ``"MR"``) of ``values`` (X, Y, Z) on the grid ``affine``, written to ``out_dir`` and read
    back (slice order)."""
    paths = write_series(np.nan_to_num(np.asarray(values, dtype=np.float64)), affine, out_dir,
                         modality=modality, header=header)
    return _slice_sorted([pydicom.dcmread(p) for p in paths])


def write_region_seg(
    region: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    source_images: Sequence[pydicom.Dataset] | None = None,
    source_values: np.ndarray | None = None,
    label: str = "Biopsy target",
    method: str = "map",
    tolerance_mm: float = 0.01,
    source_modality: str = "PT",
) -> Path:
    """The target region as a DICOM SEG referencing the exam's series (module docstring).

    Args:
        region: (X, Y, Z) mask on the series' grid.
        affine: (4, 4) RAS voxel -> mm of that grid (checked against the source images).
        path: the .dcm file to write.
        source_images: the series' datasets (one per slice); None to build minimal ones from the
            grid (with ``source_values`` as pixel values, zeros if None), saved beside ``path``
            in ``<stem>_source/`` so the reference can be resolved.
        label: segment label; method: algorithm name stored in the segment description.
        tolerance_mm: largest allowed difference between ``affine`` and the series geometry.
        source_modality: modality of the minimal source series built without ``source_images``
            (``"PT"`` for PET values, ``"MR"`` for a T1c).

    Raises:
        ValueError: an empty region, a grid that does not match the source series.
    """
    r = np.asarray(region) > 0
    if r.ndim != 3:
        raise ValueError(f"region: expected (X, Y, Z), got shape {r.shape}")
    if not r.any():
        raise ValueError("write_region_seg: the region is empty")
    out = Path(path)
    if source_images is None:
        src_dir = out.with_name(out.stem + "_source")
        vals = np.zeros(r.shape) if source_values is None else np.asarray(source_values, dtype=np.float64)
        if vals.shape != r.shape:
            raise ValueError(f"source_values {vals.shape} must match the region {r.shape}")
        sources = source_series_from_grid(vals, affine, src_dir, modality=source_modality)
    else:
        sources = _slice_sorted(list(source_images))
    nx, ny, nz = r.shape
    if len(sources) != nz or int(sources[0].Rows) != ny or int(sources[0].Columns) != nx:
        raise ValueError(
            f"region grid {r.shape} does not match the series ({int(sources[0].Columns)} x "
            f"{int(sources[0].Rows)} x {len(sources)} slices)"
        )
    geo = series_affine(sources)
    corners = np.array([[i, j, k, 1.0] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)])
    err = float(np.abs(corners @ (geo - np.asarray(affine, float)).T).max())
    if err > tolerance_mm:
        raise ValueError(f"the region's affine is {err:.3f} mm off the series geometry (tolerance {tolerance_mm})")
    pixels = np.ascontiguousarray(np.transpose(r, (2, 1, 0))).astype(np.uint8)  # (slices, rows=j, cols=i)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"AminoPET biopsy target ({method})", version="1", family=codes.cid7162.ArtificialIntelligence,
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="AminoPET",
        manufacturer_model_name="ml.subregions",
        software_versions="0.1",
        device_serial_number="0",
        content_label="BIOPSY",
        content_description=f"Biopsy target region ({method})",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out

