"""Import a DICOM study (PET and MR series, folder or zip) as one exam.

Reading, orientation, SUV conversion and de-identification happen in ml.io.dicom; this service
checks the series against the database and writes the exam atomically, like the BIDS import.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import transaction

from apps.accounts.models import Site
from apps.accounts.permissions import can_manage_site, is_admin
from apps.cohorts.models import Exam, Patient, Timepoint, Volume
from apps.cohorts.services.bids import ImportConflict
from apps.cohorts.services.store import StoreTransaction
from ml.io.dicom import read_dicom_series
from ml.io.errors import ImageFormatError
from ml.io.nifti import nifti_bytes

KINDS = ("t1", "t1c", "t2", "flair", "pet_static", "pet_dynamic")


def _salt(site: str) -> str:
    """A per-site secret for UID remapping: the same study maps to the same UIDs on re-import."""
    return hmac.new(settings.SECRET_KEY.encode(), f"uid:{site}".encode(), hashlib.sha256).hexdigest()


def _date_shift(site: str, patient: str) -> int:
    """A per-patient shift of -365..-1 days, secret but stable, so intervals between exams stay true."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"date:{site}/{patient}".encode(), hashlib.sha256).digest()
    return -1 - int.from_bytes(digest[:4], "big") % 365


def dicom_import(
    *,
    path: str | Path,
    site: str,
    patient: str,
    exam: str,
    timepoint: str = Timepoint.INITIAL_DIAGNOSIS,
    day: int = 0,
    kinds: dict[str, str] | None = None,
    user=None,
    progress: Callable[[float, str], None] | None = None,
) -> dict:
    """Import the DICOM series under ``path`` as exam ``exam`` of patient ``patient`` at ``site``.

    Args:
        kinds: optional mapping SeriesDescription -> volume kind for MR series whose kind cannot
            be guessed from their description.

    Returns:
        A JSON-safe report (created volumes, unchanged, new exam ids).
    """
    report = progress or (lambda pct, msg="": None)
    if timepoint not in Timepoint.values:
        raise ValueError(f"timepoint must be one of {', '.join(Timepoint.values)}, not {timepoint!r}")
    site_obj = Site.objects.filter(name=site).first()
    if site_obj is None and user is not None and not is_admin(user):
        raise PermissionError(f"site {site!r} does not exist; an administrator must create it first")
    if site_obj is not None and user is not None and not can_manage_site(user, site_obj):
        raise PermissionError(f"you are not a coordinator of site {site!r}")
    report(2, "Reading DICOM series")
    series_list = read_dicom_series(path, date_shift_days=_date_shift(site, patient), uid_salt=_salt(site))
    if not series_list:
        raise ImageFormatError(path, "no DICOM series found")
    planned: dict[str, tuple[bytes, object]] = {}
    for s in series_list:
        kind = (kinds or {}).get(s.metadata.get("series_description", ""), s.kind)
        if kind not in KINDS:
            raise ImageFormatError(
                s.source_files[0] if s.source_files else path,
                f"cannot tell which kind of volume series {s.metadata.get('series_description', '?')!r} "
                f"({s.modality}) is; give a mapping (--kind 'DESCRIPTION=t1c')",
            )
        if kind in planned:
            raise ImageFormatError(path, f"two series of kind {kind}; import them as separate exams")
        planned[kind] = (nifti_bytes(s.array, s.affine), s)
    report(60, f"Read {len(planned)} series")
    patient_obj = Patient.objects.filter(site=site_obj, code=patient).first() if site_obj else None
    exam_obj = Exam.objects.filter(patient=patient_obj, code=exam).first() if patient_obj else None
    existing = {v.kind: v for v in exam_obj.volumes.filter(space="native")} if exam_obj else {}
    unchanged = []
    for kind, (data, _s) in planned.items():
        if kind in existing:
            if existing[kind].sha256 != hashlib.sha256(data).hexdigest():
                raise ImportConflict(f"{path}: the {kind} series differs from the one stored for {patient}/{exam}; not replaced")
            unchanged.append(kind)
    store = StoreTransaction()
    created, new_exams = [], []
    try:
        with transaction.atomic():
            if site_obj is None:
                site_obj = Site.objects.create(name=site, display_name=site.title())
            if patient_obj is None:
                patient_obj = Patient(site=site_obj, code=patient)
                patient_obj.full_clean()
                patient_obj.save()
            if exam_obj is None:
                exam_obj = Exam(patient=patient_obj, code=exam, timepoint=timepoint, day=day)
                exam_obj.full_clean()
                exam_obj.save()
                new_exams.append(exam_obj.pk)
            for kind, (data, s) in planned.items():
                if kind in unchanged:
                    continue
                name, sha = store.put_bytes(data, category="volumes", suffix=".nii.gz")
                zooms = [float(abs(x)) for x in (s.affine[:3, :3] ** 2).sum(axis=0) ** 0.5]
                Volume.objects.create(
                    exam=exam_obj, kind=kind, space="native", file=name, sha256=sha,
                    source_name=s.metadata.get("series_description", "")[:255], shape=list(s.array.shape),
                    voxel_size=zooms, affine=s.affine.tolist(), stored_dtype="float32",
                    units="SUV" if kind.startswith("pet") else "", suv_factor=1.0 if kind.startswith("pet") else None,
                    frame_start_s=list(s.frame_start_s) if kind == "pet_dynamic" else None,
                    frame_duration_s=list(s.frame_duration_s) if kind == "pet_dynamic" else None,
                    metadata={k: v for k, v in s.metadata.items() if isinstance(v, str | int | float | bool)}
                    | {"suv_factor_bqml": s.suv_factor},
                )
                created.append(kind)
    except BaseException:
        store.rollback()
        raise
    report(100, "Imported")
    return {
        "message": f"{len(created)} series imported as {site}/{patient}/{exam}; {len(unchanged)} unchanged",
        "created": created, "unchanged": unchanged, "new_exam_ids": new_exams, "exam": exam_obj.pk,
    }
