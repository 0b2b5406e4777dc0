"""Preparation on the common grid: SUV, world positions and masks survive resampling, whatever
the native orientation (the generated sites use RAS and LPS affines)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from apps.cohorts.models import Exam, Mask, Volume
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from ml.io.grid import common_grid

pytestmark = pytest.mark.django_db


def _load(settings, field):
    img = nib.load(Path(settings.MEDIA_ROOT) / field.name)
    return np.asarray(img.dataobj, dtype=np.float64), img.affine


def _centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask > 0).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_prepare_keeps_suv_positions_and_masks(generated_bids, settings):
    bids_import(path=generated_bids)
    orientations = set()
    for exam in Exam.objects.filter(code="01"):  # one exam per patient, both sites
        exam_prepare(exam=exam)
        native = exam.volumes.get(kind="pet_static", space="native")
        common = exam.volumes.get(kind="pet_static", space="common")
        assert common.units == "SUV" and tuple(common.shape) == common_grid().shape
        tumor_n = Mask.objects.get(exam=exam, kind="tumor", space="native", grid=native)
        tumor_c = Mask.objects.get(exam=exam, kind="tumor", space="common", grid=common)
        pet_n, aff_n = _load(settings, native.file)
        pet_c, aff_c = _load(settings, common.file)
        m_n, _ = _load(settings, tumor_n.file)
        m_c, _ = _load(settings, tumor_c.file)
        orientations.add("".join(nib.aff2axcodes(aff_n)))
        # same place in the world (within one native voxel), same volume (within 15 %)
        voxel = max(native.voxel_size)
        assert np.linalg.norm(_centroid_mm(m_n, aff_n) - _centroid_mm(m_c, aff_c)) < voxel
        assert tumor_c.volume_ml == pytest.approx(tumor_n.volume_ml, rel=0.15)
        # SUV: Bq/mL x factor; the tumour mean agrees within 5 % after interpolation
        assert (pet_c[m_c > 0].mean()) == pytest.approx(pet_n[m_n > 0].mean() * native.suv_factor, rel=0.05)
        assert Volume.objects.get(pk=native.pk).thumbnail
    assert orientations == {"RAS", "LPS"}  # the two generated sites


def test_prepare_is_idempotent(one_subject, settings):
    bids_import(path=one_subject)
    exam = Exam.objects.first()
    exam_prepare(exam=exam)
    first = sorted(exam.volumes.filter(space="common").values_list("kind", "sha256"))
    exam_prepare(exam=exam)
    assert sorted(exam.volumes.filter(space="common").values_list("kind", "sha256")) == first
    assert exam.masks.filter(space="common").count() == exam.masks.filter(space="native").count()
