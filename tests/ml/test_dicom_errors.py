"""Every bad DICOM input raises ImageFormatError naming the file and the reason."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ml.io.dicom import read_dicom_series
from ml.io.dicom_write import write_series
from ml.io.errors import ImageFormatError

SHAPE = (16, 16, 8)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])

@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A fresh folder of its own (tmp_path also holds the shared media root)."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    return folder



def _values(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(0).uniform(10.0, 1000.0, size=shape)


def _dynamic(folder: Path, n_frames: int = 3, **kwargs: object) -> list[Path]:
    starts = [60.0 * t for t in range(n_frames)]
    return write_series(
        _values((*SHAPE, n_frames)), AFFINE, folder, modality="PT",
        frame_start_s=starts, frame_duration_s=[60.0] * n_frames, **kwargs,
    )


def test_not_dicom_file(out: Path) -> None:
    bad = out / "scan.dcm"
    bad.write_bytes(b"this is a report, not an image\n" * 20)
    with pytest.raises(ImageFormatError, match="not a DICOM file") as info:
        read_dicom_series(out)
    assert info.value.path == str(bad)


def test_stray_non_dicom_file_in_series_folder(out: Path) -> None:
    write_series(_values(), AFFINE, out, modality="MR")
    stray = out / "IM99999"
    stray.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(ImageFormatError) as info:
        read_dicom_series(out)
    assert info.value.path == str(stray)


def test_missing_path_and_empty_folder(out: Path) -> None:
    with pytest.raises(ImageFormatError, match="does not exist"):
        read_dicom_series(out / "nowhere")
    (out / "empty").mkdir()
    (out / "empty" / "README.txt").write_text("no images")
    with pytest.raises(ImageFormatError, match="no DICOM image series"):
        read_dicom_series(out / "empty")


def test_missing_middle_slice_mr(out: Path) -> None:
    paths = write_series(_values(), AFFINE, out, modality="MR")
    paths[4].unlink()
    with pytest.raises(ImageFormatError, match="missing slices") as info:
        read_dicom_series(out)
    assert info.value.path == str(paths[5])  # the slice after the gap is named
    assert "6.000 mm" in info.value.reason


def test_missing_slice_pet_against_number_of_slices(out: Path) -> None:
    paths = write_series(_values(), AFFINE, out, modality="PT")
    paths[-1].unlink()  # the last slice: no gap visible, NumberOfSlices tells
    with pytest.raises(ImageFormatError, match="missing slices: NumberOfSlices is 8 but 7"):
        read_dicom_series(out)


def test_missing_slice_in_one_frame(out: Path) -> None:
    paths = _dynamic(out)
    paths[SHAPE[2] + 3].unlink()  # frame 2, slice 4
    with pytest.raises(ImageFormatError, match="missing slices") as info:
        read_dicom_series(out)
    assert info.value.path in {str(p) for p in paths}


def test_frame_count_mismatch(out: Path) -> None:
    paths = _dynamic(out, n_frames=3)
    for path in paths[2 * SHAPE[2]:]:
        path.unlink()  # the whole last frame is gone
    with pytest.raises(ImageFormatError, match="frame count mismatch: NumberOfTimeSlices is 3 but 2"):
        read_dicom_series(out)


def test_dynamic_pet_without_frame_timing(out: Path) -> None:
    _dynamic(out, header={"ActualFrameDuration": None})
    with pytest.raises(ImageFormatError, match="frame timing"):
        read_dicom_series(out)


def _same_series(out: Path, second_affine: np.ndarray, second_shape: tuple[int, ...]) -> Path:
    first = write_series(_values(), AFFINE, out / "a", modality="MR")
    uid = pydicom.dcmread(first[0]).SeriesInstanceUID
    second = write_series(
        _values(second_shape), second_affine, out / "b", modality="MR",
        header={"SeriesInstanceUID": uid},
    )
    return second[0]


def test_mixed_orientations_in_one_series(out: Path) -> None:
    rotated = AFFINE.copy()
    rotated[:3, :3] = np.array([[0.0, 2.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    rotated[2, 3] = 100.0
    _same_series(out, rotated, SHAPE)
    with pytest.raises(ImageFormatError, match="mixed series: ImageOrientationPatient") as info:
        read_dicom_series(out)
    assert "/b/" in info.value.path or "/a/" in info.value.path


def test_mixed_shapes_in_one_series(out: Path) -> None:
    shifted = AFFINE.copy()
    shifted[2, 3] = 100.0
    _same_series(out, shifted, (12, 16, 4))
    with pytest.raises(ImageFormatError, match="mixed series: image size"):
        read_dicom_series(out)


def test_duplicate_slices_without_frames(out: Path) -> None:
    _same_series(out, AFFINE, SHAPE)  # two copies at the same positions
    with pytest.raises(ImageFormatError, match="share one slice position"):
        read_dicom_series(out)


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ({"PatientWeight": None}, "PatientWeight"),
        ({"RadionuclideTotalDose": None}, "RadionuclideTotalDose"),
        ({"Units": None}, "Units"),
        ({"RadiopharmaceuticalStartTime": None, "RadiopharmaceuticalStartDateTime": None}, "RadiopharmaceuticalStartTime"),
        ({"DecayCorrection": "NONE"}, "DecayCorrection"),
    ],
)
def test_pet_without_what_suv_needs(out: Path, header: dict, field: str) -> None:
    paths = write_series(_values(), AFFINE, out, modality="PT", header=header)
    with pytest.raises(ImageFormatError, match=f"cannot compute SUV.*{field}") as info:
        read_dicom_series(out)
    assert info.value.path in {str(p) for p in paths}


def test_nan_pixel_values(out: Path) -> None:
    paths = write_series(_values(), AFFINE, out, modality="MR")
    ds = pydicom.dcmread(paths[2])
    del ds.PixelData
    del ds.PixelRepresentation
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    plane = np.ones((ds.Rows, ds.Columns), np.float32)
    plane[3, 3] = np.nan
    ds.FloatPixelData = plane.tobytes()
    ds.save_as(paths[2])
    with pytest.raises(ImageFormatError, match="NaN") as info:
        read_dicom_series(out)
    assert info.value.path == str(paths[2])


def test_truncated_pixel_data(out: Path) -> None:
    paths = write_series(_values(), AFFINE, out, modality="MR")
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[:-100])
    with pytest.raises(ImageFormatError, match="pixel data cannot be decoded") as info:
        read_dicom_series(out)
    assert info.value.path == str(paths[3])


def _zip_with(out: Path, entries: dict[str, bytes]) -> Path:
    archive = out / "upload.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return archive


@pytest.mark.parametrize("entry", ["../../etc/evil.dcm", "series/../../evil.dcm", "/abs/evil.dcm", "C:/evil.dcm"])
def test_zip_entries_outside_the_archive(out: Path, entry: str) -> None:
    archive = _zip_with(out, {"ok/IM1.dcm": b"x", entry: b"x"})
    with pytest.raises(ImageFormatError, match="absolute path|outside the archive") as info:
        read_dicom_series(archive)
    assert info.value.path == str(archive)
    assert not (out.parent / "evil.dcm").exists()


def test_zip_bomb_is_capped(out: Path) -> None:
    # 8 MiB of zeros compress to a few kB: more than the 1 MiB cap.
    archive = _zip_with(out, {"IM1.dcm": bytes(8 * 1024 * 1024)})
    assert archive.stat().st_size < 100_000
    with pytest.raises(ImageFormatError, match="more than the 1048576-byte limit") as info:
        read_dicom_series(archive, max_bytes=1024 * 1024)
    assert info.value.path == str(archive)


def test_zip_with_lying_sizes_is_rejected(out: Path) -> None:
    archive = _zip_with(out, {"IM1.dcm": bytes(4 * 1024 * 1024)})
    # Forge the declared sizes (central directory and local header) to 10 bytes.
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.infolist()[0]
    real = info.file_size.to_bytes(4, "little")
    raw = raw.replace(real, (10).to_bytes(4, "little"))
    archive.write_bytes(bytes(raw))
    # zipfile stops at the declared size, the CRC then fails: reported, nothing expanded.
    with pytest.raises(ImageFormatError, match="unreadable.*CRC") as excinfo:
        read_dicom_series(archive, max_bytes=1024 * 1024)
    assert excinfo.value.path == str(archive)


def test_not_a_zip_nor_dicom(out: Path) -> None:
    bad = out / "upload.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ImageFormatError) as info:
        read_dicom_series(bad)
    assert info.value.path == str(bad)


def test_enhanced_multiframe_is_refused_clearly(out: Path) -> None:
    paths = write_series(_values(), AFFINE, out, modality="MR")
    ds = pydicom.dcmread(paths[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(paths[0])
    with pytest.raises(ImageFormatError, match="multi-frame") as info:
        read_dicom_series(out)
    assert info.value.path == str(paths[0])
