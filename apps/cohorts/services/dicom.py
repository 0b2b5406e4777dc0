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
from django.db import IntegrityError, transaction

from apps.accounts.models import Site
from apps.accounts.permissions import can_manage_site, is_admin
from apps.audit.services import audit_record
from apps.cohorts.models import Exam, Patient, Timepoint, Volume
from apps.cohorts.services.bids import CONCURRENT_FAILURE, WRITE_ATTEMPTS, ImportConflict
from apps.cohorts.services.store import StoreTransaction, media_path
from ml.io.dicom import read_dicom_series
from ml.io.errors import ImageFormatError
from ml.io.nifti import nifti_bytes

KINDS = ("t1", "t1c", "t2", "flair", "pet_static", "pet_dynamic")


def _secret() -> bytes:
    """The server secret the de-identification keys derive from (never stored with the data)."""
    return (getattr(settings, "AMINOPET_DEID_SECRET", "") or settings.SECRET_KEY).encode()


def _salt(site: str) -> str:
    """A per-site secret for UID remapping: the same study maps to the same UIDs on re-import."""
    return hmac.new(_secret(), f"uid:{site}".encode(), hashlib.sha256).hexdigest()


def _date_shift(site: str, patient: str) -> int:
    """A per-patient shift of -365..-1 days, secret but stable, so intervals between exams stay true.

    Derived (HMAC-SHA256) from the server secret, the site and the patient code, so it is never
    stored: neither beside the shifted dates in ``Volume.metadata`` nor anywhere a reader or
    researcher could read it.
    """
    digest = hmac.new(_secret(), f"date:{site}/{patient}".encode(), hashlib.sha256).digest()
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
    source_name: str | None = None,
) -> dict:
    """Import the DICOM series under ``path`` as exam ``exam`` of patient ``patient`` at ``site``.

    Args:
        kinds: optional mapping SeriesDescription -> volume kind for MR series whose kind cannot
            be guessed from their description.
        source_name: what the user calls the data (the uploaded file's name), for the audit trail.

    A study without a PET series is refused (creating nothing) unless the exam already has its
    PET. Two imports of the same study at once: the one that commits second is checked again and
    reports the series unchanged (``concurrent``), like the BIDS import.

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
    if not any(kind.startswith("pet") for kind in planned):
        pet_stored = Volume.objects.filter(
            exam__patient__site__name=site, exam__patient__code=patient, exam__code=exam,
            kind__startswith="pet",
        ).exists()
        if not pet_stored:
            found = ", ".join(f"{s.modality} {s.metadata.get('series_description') or k}" for k, (_d, s) in planned.items())
            raise ImageFormatError(
                path, f"the study has no PET series (found: {found}); an AminoPET exam needs its PET. "
                "Add the PET series to the archive, or import these series into an exam that has one",
            )
    report(60, f"Read {len(planned)} series")
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            result = _write(
                planned, path=path, site=site, patient=patient, exam=exam, timepoint=timepoint, day=day,
                user=user, source_name=source_name or Path(path).name, report=report,
            )
        except IntegrityError as exc:  # another import committed this site, patient, exam or series first
            if attempt == WRITE_ATTEMPTS:
                raise ImportConflict(CONCURRENT_FAILURE) from exc
            continue
        break
    report(100, "Imported")
    concurrent = attempt > 1
    note = "; another import wrote the same study at the same time" + (
        ": it was already imported" if not result["created"] else "") if concurrent else ""
    return result | {
        "message": f"{len(result['created'])} series imported as {site}/{patient}/{exam}; "
                   f"{len(result['unchanged'])} unchanged{note}",
        "concurrent": concurrent,
    }


def _write(planned: dict, *, path, site: str, patient: str, exam: str, timepoint: str, day: int, user,
           source_name: str, report: Callable[[float, str], None]) -> dict:
    """Check the planned series against the database and write them in one transaction."""
    site_obj = Site.objects.filter(name=site).first()
    if site_obj is None and user is not None and not is_admin(user):
        raise PermissionError(f"site {site!r} does not exist; an administrator must create it first")
    patient_obj = Patient.objects.filter(site=site_obj, code=patient).first() if site_obj else None
    exam_obj = Exam.objects.filter(patient=patient_obj, code=exam).first() if patient_obj else None
    existing = {v.kind: v for v in exam_obj.volumes.filter(space="native")} if exam_obj else {}
    unchanged = []
    for kind, (data, _s) in planned.items():
        if kind in existing:
            if existing[kind].sha256 != hashlib.sha256(data).hexdigest():
                raise ImportConflict(f"{path}: the {kind} series differs from the one stored for {patient}/{exam}; not replaced")
            unchanged.append(kind)
    report(80, "Writing the database")
    store = StoreTransaction()
    created, new_exams = [], []
    try:
        with transaction.atomic():
            if site_obj is None:
                site_obj = Site.objects.create(name=site, display_name=site.title())
            if patient_obj is None:
                patient_obj = Patient(site=site_obj, code=patient)
                patient_obj.full_clean(exclude=["site"])  # (site, code) unique: the database says
                patient_obj.save()
            if exam_obj is None:
                exam_obj = Exam(patient=patient_obj, code=exam, timepoint=timepoint, day=day)
                exam_obj.full_clean(exclude=["patient"])  # (patient, code) unique: the database says
                exam_obj.save()
                new_exams.append(exam_obj.pk)
            for kind, (data, s) in planned.items():
                if kind in unchanged:
                    if not media_path(existing[kind].file.name).is_file():  # lost from the store: restore
                        store.put_bytes(data, category="volumes", suffix=".nii.gz")
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
            audit_record(
                action="import.run", actor=user, target=exam_obj, site=site_obj,
                details={"kind": "dicom", "file": source_name, "created": created, "unchanged": unchanged,
                         "exams_created": len(new_exams)},
            )
    except BaseException:
        store.rollback()
        raise
    store.release()
    return {"created": created, "unchanged": unchanged, "new_exam_ids": new_exams, "exam": exam_obj.pk}


def metadata_scrub_date_shift() -> int:
    """Remove ``date_shift_days`` from volumes imported before it stopped being stored; returns how many.

    Beside the shifted dates it lets anyone undo the shift (docs/dicom.md). Idempotent.
    """
    n = 0
    with transaction.atomic():
        for volume in Volume.objects.select_for_update().filter(metadata__has_key="date_shift_days"):
            volume.metadata.pop("date_shift_days", None)
            volume.save(update_fields=["metadata"])
            n += 1
        if n:
            audit_record(action="metadata.scrub", details={"removed": "date_shift_days", "volumes": n})
    return n
