"""Import a BIDS-PET dataset into the cohort (``import_bids`` command, upload page, API).

Two phases, so an import is atomic: first everything is read and checked (layout, labels, every
image and mask, conflicts with what is already stored) without writing; then files go into the
content-addressed store and all rows are written in one transaction. Any failure leaves the
database as it was and removes the files this import added. Re-importing the same data changes
nothing; a file whose content changed is reported as a conflict, never silently replaced.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction

from apps.accounts.models import Site
from apps.accounts.permissions import can_manage_site, is_admin
from apps.audit.services import audit_record
from apps.cohorts.models import Cohort, Exam, Mask, Patient, Volume
from apps.cohorts.services.store import StoreTransaction, media_path
from ml.io.bids import (
    BidsDataset,
    BidsError,
    BidsImage,
    BidsMask,
    BidsSession,
    BidsSubject,
    check_frames,
    scan_bids,
)
from ml.io.errors import ImageFormatError
from ml.io.nifti import NiftiVolume, load_nifti, sha256_file
from ml.quant.suv import suv_bw_factor

F18_HALF_LIFE_S = 6586.2
ProgressFn = Callable[[float, str], None]

#: Check-and-write attempts when another import commits the same rows first (a unique constraint).
WRITE_ATTEMPTS = 3
CONCURRENT_FAILURE = (
    "the database refused the new rows three times (other imports of the same participants kept "
    "writing at the same time); nothing was imported by this job: retry it"
)


class ImportConflict(ValueError):
    """Data that differs from what is already stored; nothing was changed."""


@dataclass
class _PlannedVolume:
    image: BidsImage
    volume: NiftiVolume
    sha256: str
    exists: Volume | None
    units: str = ""
    suv_factor: float | None = None
    frame_start_s: list[float] | None = None
    frame_duration_s: list[float] | None = None


@dataclass
class _PlannedMask:
    mask: BidsMask
    sha256: str
    grid_kind: str
    n_voxels: int
    volume_ml: float
    exists: Mask | None


@dataclass
class ImportReport:
    """What an import did; ``to_dict()`` is stored as the job result."""

    dataset: str
    sites: list[str] = field(default_factory=list)
    patients_created: int = 0
    exams_created: int = 0
    volumes_created: int = 0
    masks_created: int = 0
    unchanged: int = 0
    skipped_other_sites: list[str] = field(default_factory=list)
    new_exam_ids: list[int] = field(default_factory=list)
    cohort: str | None = None
    restored: int = 0
    concurrent: bool = False
    #: hospital spellings read as documented label values (ml.io.labels), e.g. 1p/19q "yes" -> codeleted
    label_mappings: list[dict] = field(default_factory=list)
    last_exam: Exam | None = field(default=None, repr=False)

    def counts(self) -> dict:
        keys = ("patients_created", "exams_created", "volumes_created", "masks_created", "unchanged", "restored")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "last_exam"} | {"message": self.message()}

    def message(self) -> str:
        created = self.patients_created + self.exams_created + self.volumes_created + self.masks_created
        return (
            f"{self.patients_created} patients, {self.exams_created} exams, {self.volumes_created} volumes, "
            f"{self.masks_created} masks imported; {self.unchanged} files unchanged"
            + (f" ({self.restored} missing from the store restored)" if self.restored else "")
            + (f"; {len(self.skipped_other_sites)} participants of other sites skipped" if self.skipped_other_sites else "")
            + ("; another import wrote the same data at the same time"
               + ("" if created else ": it was already imported") if self.concurrent else "")
        )


def _pet_units_and_factor(image: BidsImage) -> tuple[str, float | None]:
    side = image.sidecar
    units = str(side.get("Units"))
    if units in ("SUV", "g/mL"):
        return "SUV", None
    dose = float(side["InjectedRadioactivity"])
    dose_units = str(side.get("InjectedRadioactivityUnits", "MBq"))
    dose_bq = dose * {"MBq": 1e6, "kBq": 1e3, "Bq": 1.0, "mCi": 3.7e7}.get(dose_units, math.nan)
    if not math.isfinite(dose_bq):
        raise ImageFormatError(image.path, f"unknown InjectedRadioactivityUnits {dose_units!r}")
    # BIDS-PET: images decay-corrected to ImageDecayCorrectionTime (s, relative to TimeZero = injection)
    delay = float(side.get("ImageDecayCorrectionTime", 0.0) or 0.0)
    factor = suv_bw_factor(
        injected_dose_bq=dose_bq, weight_kg=float(side["BodyWeight"]), half_life_s=F18_HALF_LIFE_S, delay_s=delay
    )
    if units == "kBq/mL":
        factor *= 1000.0
    return "Bq/mL", factor


def _plan_volume(image: BidsImage, existing: dict[str, Volume], *, max_bytes: int | None = None) -> _PlannedVolume:
    vol = load_nifti(image.path, max_bytes=max_bytes)
    kind = image.kind
    if kind == "pet_dynamic" and vol.n_frames == 1 and "rec" not in image.entities:
        kind = "pet_static"
    if kind != image.kind:
        image = BidsImage(path=image.path, kind=kind, sidecar=image.sidecar, entities=image.entities)
    if not kind.startswith("pet") and vol.array.ndim != 3:
        raise ImageFormatError(image.path, f"an MRI image must be 3D, got shape {vol.shape}")
    if kind == "pet_static" and vol.array.ndim != 3:
        raise ImageFormatError(image.path, f"static PET must be 3D, got shape {vol.shape}")
    planned = _PlannedVolume(image=image, volume=vol, sha256=sha256_file(image.path), exists=existing.get(kind))
    if kind.startswith("pet"):
        check_frames(image, vol.n_frames)
        planned.units, planned.suv_factor = _pet_units_and_factor(image)
        if kind == "pet_dynamic":
            planned.frame_start_s = [float(x) for x in image.sidecar["FrameTimesStart"]]
            planned.frame_duration_s = [float(x) for x in image.sidecar["FrameDuration"]]
            if any(d <= 0 for d in planned.frame_duration_s) or np.any(np.diff(planned.frame_start_s) < 0):
                raise ImageFormatError(image.path, "frame times must increase and durations be positive")
    if planned.exists is not None and planned.exists.sha256 != planned.sha256:
        raise ImportConflict(
            f"{image.path}: differs from the {kind} already stored for this exam "
            f"(sha256 {planned.exists.sha256[:12]}… vs {planned.sha256[:12]}…); not replaced"
        )
    return planned


def _plan_mask(mask: BidsMask, volumes: dict[str, _PlannedVolume], existing: dict[tuple[str, str], Mask], *,
               max_bytes: int | None = None) -> _PlannedMask:
    order = ("pet_static", "pet_dynamic") if mask.datatype == "pet" else ("t1", "t1c", "flair", "t2")
    grid_kind = next((k for k in order if k in volumes), None)
    if grid_kind is None:
        raise ImageFormatError(mask.path, f"mask on the {mask.datatype} grid but the session has no such image")
    vol = load_nifti(mask.path, ndim=(3,), max_bytes=max_bytes)
    grid = volumes[grid_kind].volume
    if vol.shape != grid.shape[:3] or not np.allclose(vol.affine, grid.affine, atol=1e-3):
        raise ImageFormatError(
            mask.path, f"not on the grid of {grid_kind} ({vol.shape} vs {grid.shape[:3]}, or a different affine)"
        )
    values = np.unique(vol.array)
    if not set(values.tolist()) <= {0.0, 1.0}:
        raise ImageFormatError(mask.path, f"a mask must hold only 0 and 1, found {values[:6].tolist()}")
    n = int(vol.array.sum())
    if n == 0 and mask.kind != "aggressive":  # an empty aggressive mask says "none in this exam"
        raise ImageFormatError(mask.path, "the mask is empty")
    planned = _PlannedMask(
        mask=mask, sha256=sha256_file(mask.path), grid_kind=grid_kind, n_voxels=n,
        volume_ml=n * float(np.prod(vol.zooms)) / 1000.0, exists=existing.get((mask.kind, grid_kind)),
    )
    if planned.exists is not None and planned.exists.sha256 != planned.sha256:
        raise ImportConflict(
            f"{mask.path}: differs from the {mask.kind} mask already stored for this exam "
            f"(sha256 {planned.exists.sha256[:12]}… vs {planned.sha256[:12]}…); not replaced"
        )
    return planned


def _check_labels(subject: BidsSubject, patient: Patient | None) -> dict:
    labels = {k: v for k, v in subject.labels.items() if k != "age"}
    values = {k: (v or "") for k, v in labels.items()}
    values["who_grade"] = int(labels["who_grade"]) if labels.get("who_grade") else None
    age = subject.labels.get("age")
    try:
        values["age"] = int(float(age)) if age else None
    except ValueError as exc:
        raise ImportConflict(f"participant sub-{subject.label}: age {age!r} is not a number") from exc
    if patient is not None:
        changed = [
            k for k, v in values.items()
            if v not in ("", None) and getattr(patient, k) not in ("", None) and getattr(patient, k) != v
        ]
        if changed:
            raise ImportConflict(
                f"participant sub-{subject.label}: labels {', '.join(changed)} differ from those stored; not replaced"
            )
    return values


def _check_session(session: BidsSession, exam: Exam | None, where: str) -> dict:
    pet = next((img for img in session.images if img.kind.startswith("pet")), None)
    tracer = (pet.sidecar.get("TracerName") or pet.entities.get("trc")) if pet else None
    values = {
        "tracer": str(tracer or "FDOPA")[:16],
        "timepoint": session.timepoint,
        "day": session.day or 0,
        "diagnosis": session.diagnosis or "unknown",
        "diagnosis_basis": session.diagnosis_basis or "unknown",
    }
    if values["diagnosis"] != "unknown" and values["diagnosis_basis"] == "unknown":
        raise ImageFormatError(where, "a diagnosis needs its diagnosis_basis (histology or follow_up)")
    if values["day"] < 0:
        raise ImageFormatError(where, f"day must not be negative ({values['day']})")
    if exam is not None:
        changed = [k for k, v in values.items() if getattr(exam, k) != v]
        if changed:
            raise ImportConflict(f"{where}: {', '.join(changed)} differ from the stored exam; not replaced")
    return values


def _target_site(subject: BidsSubject, site_name: str | None) -> str | None:
    if subject.site and site_name and subject.site != site_name:
        return None
    return subject.site or site_name


def _plan(dataset: BidsDataset, path: Path, targets: dict[str, str], sites: dict[str, Site | None],
          report_progress: ProgressFn, *, max_bytes: int | None) -> list:
    """Phase 1: read and check everything against what is stored; write nothing."""
    plans = []
    errors: list[ValueError] = []  # every participant and session is checked: one error lists them all
    total = sum(len(dataset.subjects[label].sessions) for label in targets)
    done = 0
    for label, site_key in targets.items():
        subject = dataset.subjects[label]
        site = sites[site_key]
        patient = Patient.objects.filter(site=site, code=label).first() if site else None
        try:
            patient_values = _check_labels(subject, patient)
        except (ImageFormatError, ImportConflict) as exc:
            errors.append(exc)
        sessions = []
        for ses_label, session in subject.sessions.items():
            try:
                sessions.append(_plan_session(path, label, ses_label, session, patient, max_bytes=max_bytes))
            except (ImageFormatError, ImportConflict) as exc:
                errors.append(exc)
            done += 1
            report_progress(2 + 68 * done / max(total, 1), f"Checked sub-{label} ses-{ses_label} ({done}/{total})")
        if not errors:
            plans.append((label, site_key, patient, patient_values, sessions))
    if len(errors) == 1:
        raise errors[0]
    if errors and all(isinstance(e, ImportConflict) for e in errors):
        raise ImportConflict(f"{len(errors)} conflicts with stored data; nothing replaced:\n  - "
                             + "\n  - ".join(str(e) for e in errors))
    if errors:
        raise BidsError(path, [str(e) for e in errors])
    return plans


def _plan_session(path: Path, label: str, ses_label: str, session: BidsSession, patient: Patient | None, *,
                  max_bytes: int | None) -> tuple:
    exam = Exam.objects.filter(patient=patient, code=ses_label).first() if patient else None
    where = str(Path(path) / f"sub-{label}" / f"ses-{ses_label}")
    exam_values = _check_session(session, exam, where)
    existing_vols = {v.kind: v for v in exam.volumes.filter(space="native")} if exam else {}
    volumes = {}
    for image in session.images:
        planned = _plan_volume(image, existing_vols, max_bytes=max_bytes)
        volumes[planned.image.kind] = planned
    existing_masks = (
        {(m.kind, m.grid.kind): m for m in exam.masks.filter(space="native").select_related("grid")}
        if exam else {}
    )
    masks = [_plan_mask(m, volumes, existing_masks, max_bytes=max_bytes) for m in session.masks]
    return ses_label, exam, exam_values, volumes, masks


def _missing(row: Volume | Mask | None) -> bool:
    """A stored row whose file is gone from the store (re-importing the same data restores it)."""
    return row is not None and not media_path(row.file.name).is_file()


def _write(plans: list, sites: dict[str, Site | None], report: ImportReport, *, cohort_name: str | None,
           user, source_name: str, report_progress: ProgressFn) -> None:
    """Phase 2: store the files, then write every row in one transaction (files kept only on success)."""
    store = StoreTransaction()
    try:
        stored: dict[Path, str] = {}
        files = [v.image.path for *_, sessions in plans for s in sessions for v in s[3].values()
                 if v.exists is None or _missing(v.exists)]
        files += [m.mask.path for *_, sessions in plans for s in sessions for m in s[4]
                  if m.exists is None or _missing(m.exists)]
        for i, file in enumerate(files):
            stored[file], _ = store.put_file(file, category="volumes" if "_mask" not in file.name else "masks")
            if i % 10 == 0:
                report_progress(70 + 20 * i / max(len(files), 1), f"Storing files ({i}/{len(files)})")
        report_progress(90, "Writing the database")
        with transaction.atomic():
            cohort = None
            if cohort_name:
                cohort, _ = Cohort.objects.get_or_create(name=cohort_name, defaults={"created_by": user})
            for label, site_key, patient, patient_values, sessions in plans:
                site = sites[site_key]
                if site is None:
                    site = sites[site_key] = Site.objects.create(name=site_key, display_name=site_key.title())
                if patient is None:
                    patient = Patient(site=site, code=label, **patient_values)
                    patient.full_clean(exclude=["site"])  # (site, code) unique: the database says
                    patient.save()
                    report.patients_created += 1
                else:
                    changed = {k: v for k, v in patient_values.items() if v not in ("", None) and getattr(patient, k) in ("", None)}
                    if changed:
                        Patient.objects.filter(pk=patient.pk).update(**changed)
                for ses_label, exam, exam_values, volumes, masks in sessions:
                    _write_session(patient, ses_label, exam, exam_values, volumes, masks, stored, report)
                    if cohort is not None:
                        cohort.exams.add(report.last_exam)
            audit_record(
                action="import.run", actor=user, site=next(iter(sites.values())) if len(sites) == 1 else None,
                details={"kind": "bids", "file": source_name, "sites": report.sites} | report.counts(),
            )
    except BaseException:
        store.rollback()
        raise
    store.release()


def _write_session(patient: Patient, ses_label: str, exam: Exam | None, exam_values: dict, volumes: dict,
                   masks: list, stored: dict[Path, str], report: ImportReport) -> None:
    if exam is None:
        exam = Exam(patient=patient, code=ses_label, **exam_values)
        exam.full_clean(exclude=["patient"])  # (patient, code) unique: the database says
        exam.save()
        report.exams_created += 1
        report.new_exam_ids.append(exam.pk)
    report.last_exam = exam
    rows = {}
    for kind, pv in volumes.items():
        if pv.exists is not None:
            rows[kind] = pv.exists
            report.unchanged += 1
            report.restored += int(pv.image.path in stored)
            continue
        vol = pv.volume
        rows[kind] = Volume.objects.create(
            exam=exam, kind=kind, space="native", file=stored[pv.image.path], sha256=pv.sha256,
            source_name=pv.image.path.name, shape=list(vol.shape), voxel_size=list(vol.zooms),
            affine=vol.affine.tolist(), stored_dtype=vol.stored_dtype, units=pv.units,
            suv_factor=pv.suv_factor, frame_start_s=pv.frame_start_s,
            frame_duration_s=pv.frame_duration_s,
            metadata={k: v for k, v in pv.image.sidecar.items() if isinstance(v, str | int | float | bool)},
        )
        report.volumes_created += 1
    for pm in masks:
        if pm.exists is not None:
            report.unchanged += 1
            report.restored += int(pm.mask.path in stored)
            continue
        Mask.objects.create(
            exam=exam, kind=pm.mask.kind, space="native", grid=rows[pm.grid_kind],
            file=stored[pm.mask.path], sha256=pm.sha256, source_name=pm.mask.path.name,
            n_voxels=pm.n_voxels, volume_ml=pm.volume_ml,
        )
        report.masks_created += 1


def bids_import(
    *,
    path: str | Path,
    site_name: str | None = None,
    cohort_name: str | None = None,
    user=None,
    progress: ProgressFn | None = None,
    source_name: str | None = None,
) -> ImportReport:
    """Import a BIDS-PET dataset; see the module docstring for the guarantees.

    Args:
        path: dataset root.
        site_name: site of participants without a ``site`` column; with one, only that site's
            participants are imported (the others are reported as skipped).
        cohort_name: add every imported exam to this cohort (created if needed).
        user: the importing user; ``None`` (CLI) may create sites. A non-admin user must be a
            coordinator of every target site.
        source_name: what the user calls the data (the uploaded file's name), for the audit trail.

    Two imports of the same data at once: both check, the first to commit imports, the other's
    write fails on the database's unique constraints, is rolled back (keeping the shared files,
    see :mod:`apps.cohorts.services.store`) and checked again, and then finds everything imported:
    it reports ``unchanged`` with ``concurrent`` set, or a conflict when the data differ.
    """
    report_progress = progress or (lambda pct, msg="": None)
    report_progress(1, "Checking the dataset layout and labels")
    dataset: BidsDataset = scan_bids(path)
    targets: dict[str, str] = {}
    skipped = []
    for subject in dataset.subjects.values():
        site = _target_site(subject, site_name)
        if site is None and subject.site:
            skipped.append(f"sub-{subject.label} ({subject.site})")
        elif site is None:
            raise ImageFormatError(Path(path) / "participants.tsv", f"sub-{subject.label} has no site; pass --site")
        else:
            targets[subject.label] = site
    if not targets:
        raise ImageFormatError(path, f"no participant belongs to site {site_name!r}")
    max_bytes = getattr(settings, "AMINOPET_MAX_VOLUME_BYTES", None)
    concurrent = False
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        sites = {name: Site.objects.filter(name=name).first() for name in sorted(set(targets.values()))}
        for name, site in sites.items():
            if site is None and user is not None and not is_admin(user):
                raise PermissionError(f"site {name!r} does not exist; an administrator must create it first")
            if site is not None and user is not None and not can_manage_site(user, site):
                raise PermissionError(f"you are not a coordinator of site {name!r}")
        report = ImportReport(dataset=dataset.name, cohort=cohort_name, sites=sorted(sites),
                              skipped_other_sites=list(skipped), concurrent=concurrent,
                              label_mappings=dataset.label_mappings)
        plans = _plan(dataset, Path(path), targets, sites, report_progress, max_bytes=max_bytes)
        try:
            _write(plans, sites, report, cohort_name=cohort_name, user=user,
                   source_name=source_name or Path(path).name, report_progress=report_progress)
        except IntegrityError as exc:
            # Another import committed the same participants, sessions or images first.
            if attempt == WRITE_ATTEMPTS:
                raise ImportConflict(CONCURRENT_FAILURE) from exc
            concurrent = True
            report_progress(5, "Another import wrote the same data at the same time; checking again")
            continue
        break
    report_progress(100, report.message())
    return report
