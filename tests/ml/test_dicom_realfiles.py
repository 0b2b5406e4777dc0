"""The real DICOM files that pydicom ships (offline, in its package data) read with the right
shape and orientation; the real broken series among them are refused.

Orientation is checked against nibabel's own DICOM wrapper (an independent implementation):
nibabel maps (row, column) pixel indices to LPS, AminoPET maps (column, row) to RAS.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ml.io.dicom import read_dicom_series
from ml.io.errors import ImageFormatError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # nibabel flags its DICOM readers experimental
    from nibabel.nicom import dicomwrappers

DATA = Path(pydicom.data.__file__).parent / "test_files"
DICOMDIR_TESTS = DATA / "dicomdirtests"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A fresh folder of its own (tmp_path also holds the shared media root)."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    return folder



def _expected_in_plane(file: str) -> np.ndarray:
    """RAS affine columns for (i, j) and the origin, from nibabel's wrapper."""
    nib_lps = dicomwrappers.wrapper_from_file(file).affine
    swapped = nib_lps[:, [1, 0, 2, 3]]  # nibabel indexes (row, col); we index (col, row)
    return (LPS_TO_RAS @ swapped)[:, [0, 1, 3]]


@pytest.mark.parametrize(
    ("name", "shape", "modality"),
    [("CT_small.dcm", (128, 128, 1), "CT"), ("MR_small.dcm", (64, 64, 1), "MR")],
)
def test_single_file_orientation_and_shape(name: str, shape: tuple[int, ...], modality: str) -> None:
    file = get_testdata_file(name)
    (series,) = read_dicom_series(file)
    assert series.array.shape == shape
    assert series.modality == modality
    np.testing.assert_allclose(series.affine[:, [0, 1, 3]], _expected_in_plane(file), atol=1e-4)
    ds = pydicom.dcmread(file)
    expected = ds.pixel_array.T * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    np.testing.assert_array_equal(series.array[:, :, 0], expected.astype(np.float32))
    # Slice axis along the normal, thickness from the header.
    normal = np.cross(series.affine[:3, 0], series.affine[:3, 1])
    assert abs(normal @ series.affine[:3, 2]) / np.linalg.norm(normal) == pytest.approx(float(ds.SliceThickness))


def test_mr_small_kind_from_timing() -> None:
    # No description; TR 4000 ms, TE 240 ms: a T2-weighted spin echo.
    (series,) = read_dicom_series(get_testdata_file("MR_small.dcm"))
    assert series.kind == "t2"


@pytest.mark.parametrize(
    "variant", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm"]
)
def test_transfer_syntaxes_give_the_same_volume(variant: str) -> None:
    (reference,) = read_dicom_series(get_testdata_file("MR_small.dcm"))
    (series,) = read_dicom_series(get_testdata_file(variant))
    np.testing.assert_array_equal(series.array, reference.array)
    np.testing.assert_allclose(series.affine, reference.affine)


def test_real_multi_file_ct_series(out: Path) -> None:
    # 98892001/CT5N: five 16x16 axial CT slices, 2.5 mm apart, stored top to bottom.
    folder = DICOMDIR_TESTS / "98892001" / "CT5N"
    files = sorted(folder.iterdir())
    (series,) = read_dicom_series(folder)
    assert series.array.shape == (16, 16, 5)
    assert series.voxel_size_mm == pytest.approx((0.488281, 0.488281, 2.5), abs=1e-5)
    for file in files:
        ds = pydicom.dcmread(file)
        k = series.source_files.index(str(file))
        # Voxel (0, 0, k) sits at the file's ImagePositionPatient (LPS -> RAS).
        ras = series.affine @ np.array([0.0, 0.0, k, 1.0])
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
        expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(series.array[:, :, k], expected.astype(np.float32))
    # Slices ascend from inferior to superior along +z.
    assert series.affine[2, 2] == pytest.approx(2.5, abs=1e-5)


def test_real_series_with_missing_slices_is_refused() -> None:
    # 77654033/CT2: slices at z = -99.48, 103.02, 104.27, 105.52 (a 200 mm gap).
    with pytest.raises(ImageFormatError, match="missing slices") as info:
        read_dicom_series(DICOMDIR_TESTS / "77654033" / "CT2")
    assert "CT2" in info.value.path


def test_real_radial_localiser_is_a_mixed_series() -> None:
    # 98892003/MR700: seven images of one series, each with its own orientation.
    with pytest.raises(ImageFormatError, match="mixed series: ImageOrientationPatient") as info:
        read_dicom_series(DICOMDIR_TESTS / "98892003" / "MR700")
    assert "MR700" in info.value.path


def test_truncated_real_file_is_refused(out: Path) -> None:
    target = out / "MR_truncated.dcm"
    shutil.copy(get_testdata_file("MR_truncated.dcm"), target)
    with pytest.raises(ImageFormatError, match="pixel data cannot be decoded") as info:
        read_dicom_series(out)
    assert info.value.path == str(target)


def test_real_segmentation_object_is_not_an_image_series(out: Path) -> None:
    # liver_1frame.dcm is a DICOM SEG: skipped next to images, refused alone.
    file = get_testdata_file("liver_1frame.dcm")
    with pytest.raises(ImageFormatError, match="no DICOM image series") as info:
        read_dicom_series(file)
    assert info.value.path == str(file)
    shutil.copy(get_testdata_file("MR_small.dcm"), out / "mr.dcm")
    shutil.copy(file, out / "seg.dcm")
    (series,) = read_dicom_series(out)
    assert series.modality == "MR"
