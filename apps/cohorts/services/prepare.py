"""Prepare an exam for the models and the viewer: register it to the MNI152 template, resample every
volume and mask onto the common grid once through its composed transform, PET in SUV, QC
thumbnails and a registration similarity figure per exam.

Registration (ml.registration): the MRI (T1c preferred) to the template, affine; the PET to the
MRI, rigid; the PET goes to the common grid through ``pet_from_template = mri_from_template then
pet_from_mri``, so each volume is interpolated once. Images are interpolated linearly (PET is an
intensive quantity, SUV kept), masks as fractions of each voxel then ``>= 0.5``.

Stored per common volume in ``Volume.metadata["registration"]``: the transform that put it there
(template world -> native world, 4x4, mm), the exam's similarity figures (normalised mutual
information, MRI vs template and PET vs MRI) with their thresholds and the ``poor`` flag. The
common MRI's thumbnail shows its edges on the template and the common PET's thumbnail the PET on
the registered MRI; a coordinator who finds a registration wrong sets the common volume's QC to
``fail`` (``volume_qc_set``, audited).

A registration marked failed, or flagged poor and not yet passed by a coordinator, must not be
used: :func:`registration_refusal` says why, and whatever needs the registration (automatic VOIs
in quantification, the predictions made from them) refuses the exam with that reason. A new
registration (a different transform) resets the QC of the registered volumes to ``pending``,
audited, since the coordinator's verdict was about the old one.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from django.db import transaction

from apps.audit.services import audit_record
from apps.cohorts.models import Exam, Mask, QcStatus, Volume
from apps.cohorts.services.store import StoreTransaction, media_path
from ml.io.grid import common_grid, grid_nifti_bytes
from ml.io.nifti import NiftiVolume, load_nifti
from ml.io.thumbnails import render_edge_overlay, render_mosaic
from ml.registration import common_template, register_exam, registration_similarity, resample
from ml.registration.resample import GridResampler
from ml.registration.transform import Image

MRI_FOR_FUSION = ("t1c", "t1", "flair", "t2")
PET_FOR_REGISTRATION = ("pet_static", "pet_dynamic")


def _stored_dtype(volume: Volume, array: np.ndarray) -> str:
    """float32 for the static PET (the SUV the models read); int16 with a scale factor for the
    dynamic PET and the MRI (3e-5 of the maximum, far below noise; half the bytes, 5x faster to
    compress)."""
    return "float32" if volume.kind == "pet_static" else "int16"


def _suv(volume: Volume, array: np.ndarray) -> np.ndarray:
    """SUV in place (``array`` is a fresh resampled array)."""
    if volume.units == "Bq/mL":
        array *= np.float32(volume.suv_factor)
    return array


def _resamplers(natives: list[Volume], loaded: dict[str, NiftiVolume], reg, grid) -> dict[str, Callable]:
    """One resampling function per volume kind. Volumes on the same native grid with the same
    transform (the MRI sequences of a session; the static and dynamic PET) share one sparse weight
    matrix (:class:`ml.registration.resample.GridResampler`): built once, one product per image
    or frame. A volume alone on its grid is interpolated directly (``resample``), which is faster
    for a single 3D image. Both give the same values."""
    groups: dict[tuple, list[Volume]] = {}
    for vol in natives:
        data = loaded[vol.kind]
        key = (vol.is_pet, data.array.shape[:3], np.round(data.affine, 4).tobytes())
        groups.setdefault(key, []).append(vol)
    out: dict[str, Callable] = {}
    for vols in groups.values():
        first = loaded[vols[0].kind]
        transform = reg.for_volume(vols[0].is_pet)
        if len(vols) == 1 and first.array.ndim == 3:
            out[vols[0].kind] = lambda array, a=first.affine, t=transform: resample(Image(array, a), t, grid)
        else:
            shared = GridResampler(first.array.shape, first.affine, transform, grid)
            out.update({v.kind: shared for v in vols})
    return out


def _registration_verdict_volumes(commons: dict[str, Volume]) -> tuple[str, list[tuple[str, Volume]]]:
    """The registered volumes whose QC is the verdict on the registration: the reference MRI (MRI
    to template) and the static PET (PET to MRI), with the similarity pair each one answers for."""
    reg = next(iter(commons.values())).metadata["registration"]
    reference = reg.get("reference") or ""
    judged = [(pair, commons[kind]) for pair, kind in (("mri_template", reference), ("pet_mri", "pet_static"))
              if kind in commons]
    return reference, judged


def registration_refusal(exam: Exam) -> str | None:
    """Why the exam's registration must not be used now, or None when it may.

    Refused when a coordinator set the QC of the registered reference MRI or of the registered
    static PET to ``fail`` (the registration panel's form), or when the similarity QC flagged it
    ``poor`` and no coordinator has passed it (QC ``pass`` on the volume of each poor pair; with
    no MRI, on the static PET). None as well for an exam not prepared yet: there is no verdict to
    read (quantification then registers the exam itself and checks the similarity).
    """
    commons = {v.kind: v for v in exam.volumes.filter(space="common").select_related("qc_by")
               if (v.metadata or {}).get("registration")}
    if not commons:
        return None
    reference, judged = _registration_verdict_volumes(commons)
    for _, vol in judged:
        if vol.qc_status == QcStatus.FAIL:
            who = f" by {vol.qc_by.get_username()}" if vol.qc_by else ""
            note = f" ({vol.qc_note})" if vol.qc_note else ""
            return (f"its registration was marked failed{who} on the registered {vol.get_kind_display()}{note}; "
                    "re-register it or set that QC to pass")
    reg = next(iter(commons.values())).metadata["registration"]
    if not reg.get("poor"):
        return None
    similarity = reg.get("similarity", {})
    open_flags = []
    for pair, vol in judged:
        fig = similarity.get(pair)
        if fig and fig.get("poor") and vol.qc_status != QcStatus.PASS:
            open_flags.append(f"{'MRI vs template' if pair == 'mri_template' else 'PET vs MRI'} "
                              f"NMI {fig['nmi']:.3f} < {fig['threshold']}")
    if not reference and commons.get("pet_static") and commons["pet_static"].qc_status != QcStatus.PASS:
        open_flags.append("no MRI: the PET is assumed in template space")
    if not open_flags:
        return None
    return (f"its registration is flagged poor ({'; '.join(open_flags)}) and no coordinator has passed it; "
            "review it on the exam page (registration QC pass or fail)")


def exam_prepare(*, exam: Exam, progress: Callable[[float, str], None] | None = None) -> dict:
    """Register ``exam`` and resample its native volumes and masks onto the common grid (idempotent:
    registration is deterministic and files are content-addressed).

    Raises:
        ValueError: no volumes, or an image that cannot be registered (named).
    """
    report = progress or (lambda pct, msg="": None)
    grid = common_grid()
    natives = list(exam.volumes.filter(space="native"))
    if not natives:
        raise ValueError(f"exam {exam} has no volumes to prepare")
    # two readers: gzip decompression (most of a load) releases the GIL
    with ThreadPoolExecutor(max_workers=2) as readers:
        loaded: dict[str, NiftiVolume] = dict(zip(
            (vol.kind for vol in natives), readers.map(lambda v: load_nifti(media_path(v.file.name)), natives)))
    mri_kind = next((k for k in MRI_FOR_FUSION if k in loaded), None)
    pet_kind = next((k for k in PET_FOR_REGISTRATION if k in loaded), None)
    report(5, "Registering to the MNI152 template")
    try:
        reg = register_exam(mri=loaded[mri_kind] if mri_kind else None,
                            pet=loaded[pet_kind] if pet_kind else None)
    except ValueError as exc:
        raise ValueError(f"exam {exam}: registration failed: {exc}") from exc
    store = StoreTransaction()
    resampled: dict[str, np.ndarray] = {}
    common_rows: dict[str, dict] = {}
    encoded: dict[str, Future] = {}
    tmp = media_path("tmp")
    # Compressing a volume (zlib releases the GIL) overlaps with resampling the next one.
    pool = ThreadPoolExecutor(max_workers=2)
    thumb_source: dict[str, np.ndarray] = {}
    try:
        resamplers = _resamplers(natives, loaded, reg, grid)
        # the 4D PET first: its encoding, the longest, then overlaps everything else; the encoded
        # volumes are collected last, after the QC figures, thumbnails and masks
        for i, vol in enumerate(sorted(natives, key=lambda v: loaded[v.kind].array.ndim != 4)):
            report(40 + 30 * i / len(natives), f"Resampling {vol.kind}")
            native = loaded[vol.kind].array
            array = resamplers[vol.kind](native)
            if vol.is_pet:
                array = _suv(vol, array)
            resampled[vol.kind] = array
            if array.ndim == 4:
                # the thumbnail shows the frame mean: resampling is linear, so the mean of the
                # native frames resampled once is the mean of the resampled frames
                mean = resamplers[vol.kind](native.mean(axis=3, dtype=np.float32))
                thumb_source[vol.kind] = _suv(vol, mean) if vol.is_pet else mean
            dtype = _stored_dtype(vol, array)
            encoded[vol.kind] = pool.submit(grid_nifti_bytes, array, grid.affine, dtype=dtype)
            common_rows[vol.kind] = dict(
                source_name=vol.source_name, shape=list(array.shape),
                voxel_size=[2.0, 2.0, 2.0], affine=grid.affine.tolist(), stored_dtype=dtype,
                units="SUV" if vol.is_pet else "", suv_factor=1.0 if vol.is_pet else None,
                frame_start_s=vol.frame_start_s, frame_duration_s=vol.frame_duration_s,
            )
        report(72, "Registration quality")
        mri = resampled.get(mri_kind) if mri_kind else None
        similarity = registration_similarity(mri=mri, pet=resampled.get(pet_kind) if pet_kind else None)
        for vol in natives:
            common_rows[vol.kind]["metadata"] = {"registration": {
                **reg.to_dict(), "transform": reg.for_volume(vol.is_pet).to_dict(), "similarity": similarity,
                "reference": mri_kind or "", "poor": similarity["poor"],
            }}
        thumbs: dict[str, str] = {}
        common_thumbs: dict[str, str] = {}
        for vol in natives:
            report(75, f"Rendering thumbnail of {vol.kind}")
            png = tmp / f"thumb-{exam.pk}-{vol.kind}.png"
            shown = thumb_source.get(vol.kind, resampled[vol.kind])
            if vol.is_pet:
                render_mosaic(png, mri, shown)
            else:
                render_mosaic(png, shown)
            thumbs[vol.kind], _ = store.put_file(png, category="thumbnails")
            png.unlink(missing_ok=True)
            common_thumbs[vol.kind] = thumbs[vol.kind]  # PET: already the PET on the registered MRI
        if mri is not None:
            png = render_edge_overlay(tmp / f"thumb-{exam.pk}-registration.png", common_template()[0], mri)
            common_thumbs[mri_kind], _ = store.put_file(png, category="thumbnails")
            Path(png).unlink(missing_ok=True)
        mask_rows = []
        by_kind = {vol.kind: vol for vol in natives}
        for mask in exam.masks.filter(space="native").select_related("grid"):
            data = load_nifti(media_path(mask.file.name), ndim=(3,))
            owner = by_kind.get(mask.grid.kind, mask.grid)
            fraction = resample(data, reg.for_volume(owner.is_pet), grid, kind="fraction")
            array = (fraction >= 0.5).astype(np.uint8)
            name, sha = store.put_bytes(grid_nifti_bytes(array, grid.affine, dtype="uint8"),
                                        category="common", suffix=".nii.gz")
            n = int(array.sum())
            mask_rows.append((mask, name, sha, n))
        for kind, future in encoded.items():
            common_rows[kind]["file"], common_rows[kind]["sha256"] = store.put_bytes(
                future.result(), category="common", suffix=".nii.gz")
        report(90, "Saving")
        with transaction.atomic():
            previous = {v.kind: v for v in Volume.objects.select_for_update().filter(exam=exam, space="common")}
            for vol in natives:
                Volume.objects.filter(pk=vol.pk).update(thumbnail=thumbs[vol.kind])
                defaults = common_rows[vol.kind] | {"thumbnail": common_thumbs[vol.kind]}
                old = previous.get(vol.kind)
                old_transform = ((old.metadata or {}).get("registration") or {}).get("transform") if old else None
                if old is not None and old.qc_status != QcStatus.PENDING and old_transform is not None \
                        and old_transform != defaults["metadata"]["registration"]["transform"]:
                    # the verdict was on the old registration: the new one needs its own review
                    defaults |= {"qc_status": QcStatus.PENDING, "qc_note": "", "qc_by": None, "qc_at": None}
                    audit_record(action="volume.qc", target=old, site=exam.patient.site_id,
                                 details={"before": {"qc_status": old.qc_status, "qc_note": old.qc_note},
                                          "after": {"qc_status": "pending", "qc_note": ""},
                                          "reason": "re-registered: the transform changed"})
                Volume.objects.update_or_create(exam=exam, kind=vol.kind, space="common", defaults=defaults)
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
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    store.release()
    flag = " (registration flagged for review)" if similarity["poor"] else ""
    return {"message": f"Registered to MNI152 and prepared {len(natives)} volumes and {len(mask_rows)} masks "
                       f"on the common grid{flag}",
            "exam": exam.pk, "registration": reg.to_dict() | {"similarity": similarity}}
