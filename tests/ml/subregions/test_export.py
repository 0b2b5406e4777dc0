"""Export round-trips: CSV points (affine @ voxel), NIfTI mask, DICOM SEG read back."""
from __future__ import annotations

import csv

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from ml.subregions.export import (
    POINT_COLUMNS,
    series_affine,
    source_series_from_grid,
    write_points_csv,
    write_region_nifti,
    write_region_seg,
)
from ml.subregions.target import target_from_map

SHAPE = (10, 12, 8)


@pytest.fixture()
def grid_target():
    """A target on a small oblique, anisotropic grid (scanner-like affine)."""
    c, s = np.cos(0.2), np.sin(0.2)
    affine = np.array([[2.0 * c, -2.0 * s, 0.0, -10.0], [2.0 * s, 2.0 * c, 0.0, 15.0],
                       [0.0, 0.0, 3.0, -20.0], [0, 0, 0, 1.0]])
    tumour = np.zeros(SHAPE, bool)
    tumour[2:9, 3:10, 1:7] = True
    score = np.random.default_rng(0).random(SHAPE)
    return affine, tumour, target_from_map(score, tumour, affine, margin_mm=2.0, radius_mm=4.0)


def test_points_csv_is_affine_at_voxel(tmp_path, grid_target):
    affine, _, t = grid_target
    path = write_points_csv([t, t], tmp_path / "points.csv", names=["T1", "T2"])
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == POINT_COLUMNS and [r["name"] for r in rows] == ["T1", "T2"]
    expected = (affine @ np.array([*t.voxel, 1.0]))[:3]
    got = np.array([float(rows[0][k]) for k in ("x_mm", "y_mm", "z_mm")])
    np.testing.assert_allclose(got, expected, atol=0.006)
    assert rows[0]["method"] == "map" and float(rows[0]["margin_mm"]) == 2.0
    # a world -> scanner transform and DICOM LPS coordinates
    shift = np.eye(4)
    shift[:3, 3] = (5.0, -3.0, 1.0)
    path = write_points_csv([t], tmp_path / "lps.csv", scanner_from_world=shift, coordinates="LPS")
    row = next(csv.DictReader(path.open()))
    lps = np.diag([-1, -1, 1]) @ (expected + shift[:3, 3])
    np.testing.assert_allclose([float(row[k]) for k in ("x_mm", "y_mm", "z_mm")], lps, atol=0.006)
    with pytest.raises(ValueError, match="names"):
        write_points_csv([t], tmp_path / "x.csv", names=["a", "b"])


def test_region_nifti_round_trip(tmp_path, grid_target):
    affine, _, t = grid_target
    img = nib.load(write_region_nifti(t.region, affine, tmp_path / "region.nii.gz"))
    np.testing.assert_array_equal(np.asarray(img.dataobj), t.region.astype(np.uint8))
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert img.get_data_dtype() == np.uint8


def test_region_seg_read_back_matches_geometry_and_mask(tmp_path, grid_target):
    affine, tumour, t = grid_target
    sources = source_series_from_grid(tumour * 1000.0, affine, tmp_path / "pet")
    np.testing.assert_allclose(series_affine(sources), affine, atol=1e-4)
    path = write_region_seg(t.region, affine, tmp_path / "target_seg.dcm", source_images=sources)
    seg = hd.seg.segread(path)
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "Biopsy target"
    # references the exam's series
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    # frame by frame: the plane position is that of the source slice, the pixels the region's slice
    by_uid = {d.SOPInstanceUID: k for k, d in enumerate(sources)}
    nonempty = [k for k in range(SHAPE[2]) if t.region[:, :, k].any()]
    assert int(seg.NumberOfFrames) == len(nonempty)
    seen = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = by_uid[uid]
        seen.append(k)
        pos = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(pos, np.asarray(sources[k].ImagePositionPatient, float), atol=1e-4)
    assert sorted(seen) == nonempty
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[sources[k].SOPInstanceUID for k in range(SHAPE[2])],
        segment_numbers=[1], ignore_spatial_locations=False, assert_missing_frames_are_empty=True,
    )[..., 0]  # (slices, rows, cols)
    np.testing.assert_array_equal(np.transpose(pixels, (2, 1, 0)) > 0, t.region)
    # the file also reads as plain DICOM
    assert pydicom.dcmread(path).SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"


def test_region_seg_builds_sources_when_the_exam_has_no_dicom(tmp_path, grid_target):
    affine, tumour, t = grid_target
    path = write_region_seg(t.region, affine, tmp_path / "seg.dcm", source_values=tumour * 5.0,
                            source_modality="MR")
    src = sorted((tmp_path / "seg_source").glob("*.dcm"))
    assert len(src) == SHAPE[2] and pydicom.dcmread(src[0]).Modality == "MR"
    seg = hd.seg.segread(path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(src[0]).SeriesInstanceUID


def test_region_seg_refuses_a_grid_off_the_series(tmp_path, grid_target):
    affine, tumour, t = grid_target
    sources = source_series_from_grid(tumour * 1.0, affine, tmp_path / "pet")
    moved = affine.copy()
    moved[:3, 3] += 1.0
    with pytest.raises(ValueError, match="mm off the series"):
        write_region_seg(t.region, moved, tmp_path / "a.dcm", source_images=sources)
    with pytest.raises(ValueError, match="does not match the series"):
        write_region_seg(t.region[:, :, :-1], affine, tmp_path / "b.dcm", source_images=sources)
    with pytest.raises(ValueError, match="empty"):
        write_region_seg(np.zeros(SHAPE, bool), affine, tmp_path / "c.dcm", source_images=sources)
