"""Preparation on the common grid: each exam is registered to the MNI152 template and every volume
and mask resampled once through its transform; SUV, positions and volumes survive, whatever the
native orientation (the generated sites use RAS and LPS affines); the registration's transform,
similarity and thumbnails are kept; a coordinator can mark it failed (audited)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from apps.audit.models import AuditEvent
from apps.cohorts.models import Exam, Mask, Volume
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.cohorts.services.qc import volume_qc_set
from ml.io.grid import common_grid
from ml.registration import Transform
from tests.factories import user_with

pytestmark = pytest.mark.django_db


def _load(settings, field):
    img = nib.load(Path(settings.MEDIA_ROOT) / field.name)
    return np.asarray(img.dataobj, dtype=np.float64), img.affine


def _centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask > 0).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_prepare_registers_keeps_suv_positions_and_masks(generated_bids, settings):
    bids_import(path=generated_bids)
    orientations = set()
    for site in ("nancy", "paris"):  # one exam per site
        exam = Exam.objects.filter(code="01", patient__site__name=site).first()
        result = exam_prepare(exam=exam)
        native = exam.volumes.get(kind="pet_static", space="native")
        common = exam.volumes.get(kind="pet_static", space="common")
        assert common.units == "SUV" and tuple(common.shape) == common_grid().shape
        reg = common.metadata["registration"]
        assert reg["reference"] == "t1c" and not reg["poor"], reg
        assert reg["similarity"]["pet_mri"]["nmi"] > reg["similarity"]["pet_mri"]["threshold"]
        assert result["registration"]["pet_from_mri"]["kind"] == "rigid"
        pet_from_template = Transform.from_dict(reg["transform"])
        tumor_n = Mask.objects.get(exam=exam, kind="tumor", space="native", grid=native)
        tumor_c = Mask.objects.get(exam=exam, kind="tumor", space="common", grid=common)
        pet_n, aff_n = _load(settings, native.file)
        pet_c, aff_c = _load(settings, common.file)
        m_n, _ = _load(settings, tumor_n.file)
        m_c, _ = _load(settings, tumor_c.file)
        orientations.add("".join(nib.aff2axcodes(aff_n)))
        # the common tumour, sent back through the stored transform, lands on the native one
        voxel = max(native.voxel_size)
        back = pet_from_template.apply(_centroid_mm(m_c, aff_c)[None])[0]
        assert np.linalg.norm(back - _centroid_mm(m_n, aff_n)) < voxel
        # the affine's volume change (brain size) is the only change of tumour volume
        scale = abs(np.linalg.det(pet_from_template.matrix[:3, :3]))
        assert tumor_c.volume_ml * scale == pytest.approx(tumor_n.volume_ml, rel=0.1)
        # SUV: Bq/mL x factor; the tumour mean agrees within 5 % after interpolation
        assert pet_c[m_c > 0].mean() == pytest.approx(pet_n[m_n > 0].mean() * native.suv_factor, rel=0.05)
        assert Volume.objects.get(pk=native.pk).thumbnail
        t1c = exam.volumes.get(kind="t1c", space="common")
        assert t1c.thumbnail and t1c.thumbnail != exam.volumes.get(kind="t1c", space="native").thumbnail
        dyn = exam.volumes.get(kind="pet_dynamic", space="common")
        assert dyn.stored_dtype == "int16" and dyn.metadata["registration"]["transform"] == reg["transform"]
    assert orientations == {"RAS", "LPS"}  # the two generated sites


def test_prepare_is_idempotent_and_failed_registration_is_marked(one_subject, settings):
    bids_import(path=one_subject)
    exam = Exam.objects.first()
    coordinator = user_with("coordinator", exam.patient.site)
    exam_prepare(exam=exam)
    first = sorted(exam.volumes.filter(space="common").values_list("kind", "sha256"))
    exam_prepare(exam=exam)
    assert sorted(exam.volumes.filter(space="common").values_list("kind", "sha256")) == first
    assert exam.masks.filter(space="common").count() == exam.masks.filter(space="native").count()
    # the coordinator marks the registration failed on the registered PET (the volume QC flow)
    pet = exam.volumes.get(kind="pet_static", space="common")
    volume_qc_set(volume=pet, status="fail", note="registration failed: PET shifted", user=coordinator)
    assert Volume.objects.get(pk=pet.pk).qc_status == "fail"
    assert AuditEvent.objects.filter(action="volume.qc", object_id=str(pet.pk)).exists()
    exam_prepare(exam=exam)  # re-preparing keeps the coordinator's verdict
    assert Volume.objects.get(pk=pet.pk).qc_status == "fail"
