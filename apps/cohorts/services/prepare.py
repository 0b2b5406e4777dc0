"""Prepare an exam for the models and the viewer: resample onto the common grid, PET in SUV,
and render QC thumbnails (a PNG mosaic per volume, PET fused over MRI)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from django.db import transaction

from apps.cohorts.models import Exam, Mask, Volume
from apps.cohorts.services.store import StoreTransaction, media_path
from ml.io.grid import common_grid, resample_to_grid
from ml.io.nifti import load_nifti, nifti_bytes
from ml.io.thumbnails import render_mosaic

MRI_FOR_FUSION = ("t1c", "t1", "flair", "t2")


def _suv(volume: Volume, array: np.ndarray) -> np.ndarray:
    if volume.units == "Bq/mL":
        return array * float(volume.suv_factor)
    return array


def exam_prepare(*, exam: Exam, progress: Callable[[float, str], None] | None = None) -> dict:
    """Resample every native volume and mask of ``exam`` onto the common grid (idempotent)."""
    report = progress or (lambda pct, msg="": None)
    grid = common_grid()
    natives = list(exam.volumes.filter(space="native"))
    if not natives:
        raise ValueError(f"exam {exam} has no volumes to prepare")
    store = StoreTransaction()
    resampled: dict[str, np.ndarray] = {}
    common_rows: dict[str, dict] = {}
    try:
        for i, vol in enumerate(natives):
            report(5 + 60 * i / len(natives), f"Resampling {vol.kind}")
            data = load_nifti(media_path(vol.file.name))
            array = resample_to_grid(data.array, data.affine, grid, order=1)
            if vol.is_pet:
                array = _suv(vol, array)
            resampled[vol.kind] = array
            name, sha = store.put_bytes(nifti_bytes(array, grid.affine), category="common", suffix=".nii.gz")
            common_rows[vol.kind] = dict(
                file=name, sha256=sha, source_name=vol.source_name, shape=list(array.shape),
                voxel_size=[2.0, 2.0, 2.0], affine=grid.affine.tolist(), stored_dtype="float32",
                units="SUV" if vol.is_pet else "", suv_factor=1.0 if vol.is_pet else None,
                frame_start_s=vol.frame_start_s, frame_duration_s=vol.frame_duration_s,
            )
        mri_kind = next((k for k in MRI_FOR_FUSION if k in resampled), None)
        thumbs: dict[str, str] = {}
        for vol in natives:
            report(70, f"Rendering thumbnail of {vol.kind}")
            mri = resampled.get(mri_kind) if mri_kind else None
            if vol.is_pet:
                png = render_mosaic(media_path("tmp") / f"thumb-{exam.pk}-{vol.kind}.png", mri, resampled[vol.kind])
            else:
                png = render_mosaic(media_path("tmp") / f"thumb-{exam.pk}-{vol.kind}.png", resampled[vol.kind])
            thumbs[vol.kind], _ = store.put_file(png, category="thumbnails")
            png.unlink(missing_ok=True)
        mask_rows = []
        for mask in exam.masks.filter(space="native").select_related("grid"):
            data = load_nifti(media_path(mask.file.name), ndim=(3,))
            array = (resample_to_grid(data.array, data.affine, grid, order=0) > 0.5).astype(np.uint8)
            name, sha = store.put_bytes(nifti_bytes(array, grid.affine, dtype=np.uint8), category="common", suffix=".nii.gz")
            n = int(array.sum())
            mask_rows.append((mask, name, sha, n))
        report(90, "Saving")
        with transaction.atomic():
            for vol in natives:
                Volume.objects.filter(pk=vol.pk).update(thumbnail=thumbs[vol.kind])
                Volume.objects.update_or_create(
                    exam=exam, kind=vol.kind, space="common",
                    defaults=common_rows[vol.kind] | {"thumbnail": thumbs[vol.kind]},
                )
            for mask, name, sha, n in mask_rows:
                grid_vol = Volume.objects.get(exam=exam, kind=mask.grid.kind, space="common")
                Mask.objects.update_or_create(
                    exam=exam, kind=mask.kind, grid=grid_vol,
                    defaults=dict(space="common", file=name, sha256=sha, source_name=mask.source_name,
                                  n_voxels=n, volume_ml=n * grid.voxel_volume_ml),
                )
    except BaseException:
        store.rollback()
        raise
    return {"message": f"Prepared {len(natives)} volumes and {len(mask_rows)} masks on the common grid",
            "exam": exam.pk}
