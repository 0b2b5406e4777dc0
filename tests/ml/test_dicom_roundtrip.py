"""write_series -> read_dicom_series round trips on synthetic volumes in RAS, LPS and oblique
affines, 3D and 4D, and the SUV factor that the written headers imply."""
from __future__ import annotations

import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from ml.io.dicom import read_dicom_series, series_to_nifti
from ml.io.dicom_write import write_series
from ml.quant.suv import suv_bw_factor

SHAPE = (16, 12, 8)

@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A fresh folder of its own (tmp_path also holds the shared media root)."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    return folder



def _affine(rotation: np.ndarray, zooms: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


AFFINES = {
    "ras": _affine(np.eye(3), (2.0, 2.5, 3.0), (-15.0, -20.0, 10.0)),
    "lps": _affine(np.diag([-1.0, -1.0, 1.0]), (1.5, 1.5, 2.0), (12.0, 9.0, -7.0)),
    "oblique": _affine(
        Rotation.from_euler("xyz", [17.0, -11.0, 29.0], degrees=True).as_matrix(),
        (1.8, 2.2, 2.6),
        (-30.5, 12.25, 44.0),
    ),
}


def _phantom(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth blob plus noise, in Bq/mL (5-25 kBq/mL), distinct along every axis."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:3]], indexing="ij")
    blob = np.exp(-(grids[0] ** 2 + 2 * (grids[1] - 0.3) ** 2 + 3 * (grids[2] + 0.2) ** 2))
    base = 5000.0 + 20000.0 * blob + 200.0 * grids[0] + 100.0 * grids[2]
    if len(shape) == 4:
        base = base[..., None] * np.linspace(0.5, 1.5, shape[3])
    return base + rng.uniform(0, 50, size=shape)


def _quantisation_tol(values: np.ndarray) -> float:
    # int16 with a per-slice slope: half a step of the largest slice.
    return float(np.abs(values).max()) / 32767.0


@pytest.mark.parametrize("orientation", sorted(AFFINES))
def test_pet_3d_round_trip(out: Path, orientation: str) -> None:
    affine = AFFINES[orientation]
    values = _phantom(SHAPE)
    paths = write_series(values, affine, out, modality="PT")
    assert len(paths) == SHAPE[2]
    (series,) = read_dicom_series(out)
    assert series.modality == "PT"
    assert series.kind == "pet_static"
    assert series.units == "SUV"
    assert series.array.dtype == np.float32
    assert series.array.shape == SHAPE
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    # Default header: 200 MBq at 09:30, series at 10:00, 70 kg.
    expected = suv_bw_factor(injected_dose_bq=2e8, weight_kg=70.0, half_life_s=6586.2, delay_s=1800.0)
    assert series.suv_factor == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(series.array, values * expected, atol=_quantisation_tol(values) * expected)
    assert series.frame_start_s == (0.0,)
    assert series.frame_duration_s == (600.0,)


@pytest.mark.parametrize("orientation", sorted(AFFINES))
def test_mr_round_trip_without_suv(out: Path, orientation: str) -> None:
    affine = AFFINES[orientation]
    values = _phantom(SHAPE, seed=3) / 10.0
    write_series(values, affine, out, modality="MR", header={"SeriesDescription": "AX FLAIR"})
    (series,) = read_dicom_series(out)
    assert (series.modality, series.kind, series.units, series.suv_factor) == ("MR", "flair", "", None)
    assert series.frame_start_s is None
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    np.testing.assert_allclose(series.array, values, atol=_quantisation_tol(values))


def test_left_handed_affine_reads_as_same_world_image(out: Path) -> None:
    # A left-handed index system (det < 0) is stored slice-first along the DICOM normal, so the
    # reader returns the slices the other way round; the image in world space is the same.
    affine = _affine(np.diag([-1.0, 1.0, 1.0]), (2.0, 2.0, 3.0), (10.0, -5.0, 0.0))
    values = _phantom(SHAPE, seed=5)
    write_series(values, affine, out, modality="MR")
    (series,) = read_dicom_series(out)
    written = nib.as_closest_canonical(nib.Nifti1Image(values.astype(np.float32), affine))
    read = nib.as_closest_canonical(series_to_nifti(series))
    np.testing.assert_allclose(read.affine, written.affine, atol=1e-4)
    np.testing.assert_allclose(read.get_fdata(), written.get_fdata(), atol=_quantisation_tol(values))


@pytest.mark.parametrize("orientation", ["ras", "oblique"])
def test_dynamic_pet_round_trip_keeps_frame_timing(out: Path, orientation: str) -> None:
    affine = AFFINES[orientation]
    starts = [0.0, 60.0, 120.0, 300.0, 600.0]
    durations = [60.0, 60.0, 180.0, 300.0, 600.0]
    values = _phantom((*SHAPE, len(starts)), seed=1)
    paths = write_series(
        values, affine, out, modality="PT", frame_start_s=starts, frame_duration_s=durations
    )
    assert len(paths) == SHAPE[2] * len(starts)
    (series,) = read_dicom_series(out)
    assert series.kind == "pet_dynamic"
    assert series.array.shape == (*SHAPE, len(starts))
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    assert series.frame_start_s == pytest.approx(starts, abs=1e-6)
    assert series.frame_duration_s == pytest.approx(durations, abs=1e-6)
    factor = series.suv_factor
    assert factor == pytest.approx(
        suv_bw_factor(injected_dose_bq=2e8, weight_kg=70.0, half_life_s=6586.2, delay_s=1800.0)
    )
    assert series.metadata["suv_factor_varies"] is False
    np.testing.assert_allclose(series.array, values * factor, atol=_quantisation_tol(values) * factor)


def test_dynamic_timing_from_frame_reference_time_when_acquisition_times_equal(out: Path) -> None:
    starts, durations = [0.0, 120.0, 420.0], [120.0, 300.0, 600.0]
    values = _phantom((*SHAPE, 3), seed=2)
    write_series(
        values,
        AFFINES["ras"],
        out,
        modality="PT",
        frame_start_s=starts,
        frame_duration_s=durations,
        header={"AcquisitionTime": "100000"},
    )
    (series,) = read_dicom_series(out)
    assert series.frame_start_s == pytest.approx(starts, abs=1e-3)
    assert series.frame_duration_s == pytest.approx(durations)


def test_suv_from_written_header_values(out: Path) -> None:
    header = {
        "PatientWeight": 82.5,
        "RadionuclideTotalDose": 245e6,
        "RadiopharmaceuticalStartDateTime": "20240102091512",
        "RadiopharmaceuticalStartTime": "091512",
        "SeriesTime": "101012.500000",
    }
    values = _phantom(SHAPE, seed=4)
    write_series(values, AFFINES["lps"], out, modality="PT", header=header)
    (series,) = read_dicom_series(out)
    delay = (10 * 3600 + 10 * 60 + 12.5) - (9 * 3600 + 15 * 60 + 12)
    expected = 82500.0 / (245e6 * 2.0 ** (-delay / 6586.2))
    assert series.suv_factor == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(series.array, values * expected, atol=_quantisation_tol(values) * expected)


def test_convert_suv_false_keeps_bq_per_ml(out: Path) -> None:
    values = _phantom(SHAPE)
    write_series(values, AFFINES["ras"], out, modality="PT")
    (series,) = read_dicom_series(out, convert_suv=False)
    assert series.units == "Bq/mL" and series.suv_factor is None
    np.testing.assert_allclose(series.array, values, atol=_quantisation_tol(values))


def test_zip_round_trip_and_several_series(out: Path) -> None:
    pet = _phantom(SHAPE)
    t1 = _phantom(SHAPE, seed=9) / 20.0
    write_series(pet, AFFINES["ras"], out / "pet", modality="PT", header={"SeriesNumber": 2})
    write_series(
        t1, AFFINES["oblique"], out / "t1c", modality="MR",
        header={"SeriesNumber": 1, "SeriesDescription": "T1 MPRAGE post Gd"},
    )
    archive = out / "exam.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted((out / "pet").iterdir()) + sorted((out / "t1c").iterdir()):
            zf.write(file, f"{file.parent.name}/{file.name}")
    mr, pt = read_dicom_series(archive)
    assert (mr.kind, pt.kind) == ("t1c", "pet_static")
    np.testing.assert_allclose(mr.affine, AFFINES["oblique"], atol=1e-4)
    np.testing.assert_allclose(mr.array, t1, atol=_quantisation_tol(t1))
    assert all(name.startswith(f"{archive}!pet/") for name in pt.source_files)


def test_series_to_nifti(out: Path) -> None:
    starts, durations = [0.0, 300.0], [300.0, 300.0]
    values = _phantom((*SHAPE, 2))
    write_series(values, AFFINES["oblique"], out, modality="PT", frame_start_s=starts, frame_duration_s=durations)
    (series,) = read_dicom_series(out)
    image = series_to_nifti(series)
    assert image.shape == (*SHAPE, 2)
    np.testing.assert_allclose(image.affine, AFFINES["oblique"], atol=1e-4)
    assert image.header.get_zooms()[3] == pytest.approx(300.0)
    assert image.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_array_equal(np.asarray(image.dataobj), series.array)


@pytest.mark.parametrize(
    ("description", "kind"),
    [
        ("T1 MPRAGE", "t1"),
        ("t1_mprage_sag +C", "t1c"),
        ("AX T1 POST GD", "t1c"),
        ("T2 TSE axial", "t2"),
        ("t2_tirm_tra_dark-fluid", "flair"),
        ("DWI b1000", "unknown"),
        ("AX T1 FLAIR", "t1"),
        ("T2 FLAIR 3D", "flair"),
    ],
)
def test_kind_guess_from_series_description(out: Path, description: str, kind: str) -> None:
    write_series(
        _phantom((8, 8, 3)), AFFINES["ras"], out, modality="MR",
        header={"SeriesDescription": description, "RepetitionTime": 500.0, "EchoTime": 10.0},
    )
    (series,) = read_dicom_series(out)
    assert series.kind == kind


def test_write_series_rejects_bad_arguments(out: Path) -> None:
    with pytest.raises(ValueError, match="modality"):
        write_series(np.zeros(SHAPE), AFFINES["ras"], out, modality="CT")
    with pytest.raises(ValueError, match="frame_start_s"):
        write_series(np.zeros((*SHAPE, 2)), AFFINES["ras"], out, modality="PT")
    with pytest.raises(ValueError, match="NaN"):
        write_series(np.full(SHAPE, np.nan), AFFINES["ras"], out, modality="MR")
    with pytest.raises(ValueError, match="3D"):
        write_series(np.zeros((4, 4)), AFFINES["ras"], out, modality="MR")


@pytest.mark.parametrize(
    "header",
    [{"ImageIndex": None}, {"ImageIndex": None, "FrameReferenceTime": None}],
    ids=["by_frame_reference_time", "by_acquisition_time"],
)
def test_dynamic_frames_grouped_without_image_index(out: Path, header: dict) -> None:
    starts, durations = [0.0, 30.0, 90.0], [30.0, 60.0, 120.0]
    values = _phantom((*SHAPE, 3), seed=6)
    write_series(
        values, AFFINES["lps"], out, modality="PT",
        frame_start_s=starts, frame_duration_s=durations, header=header,
    )
    (series,) = read_dicom_series(out)
    assert series.array.shape == (*SHAPE, 3)
    assert series.frame_start_s == pytest.approx(starts, abs=1e-6)
    factor = series.suv_factor
    np.testing.assert_allclose(series.array, values * factor, atol=_quantisation_tol(values) * factor)


def test_frame_starts_when_series_time_is_after_first_frame(out: Path) -> None:
    # SeriesTime 10:00 but frames acquired from 09:58 (series created after the scan began).
    starts, durations = [0.0, 60.0, 180.0], [60.0, 120.0, 300.0]
    folder = out / "pet"
    paths = write_series(
        _phantom((*SHAPE, 3), seed=8), AFFINES["ras"], folder, modality="PT",
        frame_start_s=starts, frame_duration_s=durations, header={"ImageIndex": None},
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        moment = datetime.strptime(ds.AcquisitionTime, "%H%M%S.%f") - timedelta(seconds=120)
        ds.AcquisitionTime = moment.strftime("%H%M%S.%f")
        ds.save_as(path)
    (series,) = read_dicom_series(folder, convert_suv=False)
    assert series.frame_start_s == pytest.approx(starts, abs=1e-6)
