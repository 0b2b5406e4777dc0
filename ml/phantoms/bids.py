"""Write synthetic exams as a BIDS 1.10 dataset with the PET extension (byte-reproducible).

Layout (``docs/phantoms.md`` and the platform's ``import_bids`` read the same):
``sub-X/ses-Y/anat`` (T1w, ce-gadolinium T1w, T2w, FLAIR), ``sub-X/ses-Y/pet`` (4D ``rec-acdyn`` and
3D ``rec-acstat`` in Bq/mL with BIDS-PET sidecars), ``sub-X/sub-X_sessions.tsv``,
``participants.tsv`` and ``derivatives/groundtruth`` (masks on the PET and T1w grids and
``groundtruth.tsv``). NIfTI files are gzipped by hand with ``mtime=0`` so that the same seed gives
the same bytes.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ml.phantoms.exam import Exam

__all__ = [
    "write_nifti",
    "true_transforms_json",
    "write_exam",
    "exam_paths",
    "write_dataset_files",
    "exam_groundtruth_row",
    "session_row",
    "participant_row",
    "PARTICIPANT_COLUMNS",
    "SESSION_COLUMNS",
    "GROUNDTRUTH_COLUMNS",
    "PIPELINE",
]

PIPELINE = "groundtruth"
GZIP_LEVEL = 1
PARTICIPANT_COLUMNS = ("participant_id", "site", "age", "sex", "idh", "codeletion_1p19q", "mgmt",
                       "tertp", "who_grade", "who_type")
SESSION_COLUMNS = ("session_id", "timepoint", "day", "diagnosis", "diagnosis_basis")
GROUNDTRUTH_COLUMNS = (
    "participant_id", "session_id", "site", "timepoint", "day", "diagnosis", "diagnosis_basis",
    "idh", "codeletion_1p19q", "who_grade", "who_type", "suv_background", "suv_background_region",
    "suv_striatum", "suv_tumour", "suv_aggressive", "true_suvmax", "true_tbr_max", "true_ts_max",
    "true_ttp_min", "ttp_aggressive_min", "slope_per_h", "tumour_volume_ml",
    "aggressive_centroid_x_mm", "aggressive_centroid_y_mm", "aggressive_centroid_z_mm",
    "aggressive_pattern", "calibration", "injected_mbq", "body_weight_kg", "psf_fwhm_mm", "pet_dtype",
    "pet_orientation", "mri_orientation",
)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.4f}"
    return str(value)


def _write_tsv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    lines = ["\t".join(columns)] + ["\t".join(_fmt(r[c]) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _gzip(raw: bytes) -> bytes:
    """Gzip with a fixed header (MTIME 0, no name): deflate level 1 with the run-length strategy,
    about twice as fast as the default strategy on noisy images and no larger."""
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    return comp.compress(raw) + comp.flush()


def write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: str = "float32",
    frame_duration_s: float | None = None,
) -> Path:
    """Write a gzipped NIfTI-1 file deterministically (gzip mtime 0, level 1, Z_RLE).

    Args:
        path: output ``.nii.gz`` path.
        data: image array ``(X, Y, Z[, T])``.
        affine: voxel-to-world affine (stored as sform and qform, code 1 = scanner).
        dtype: ``"float32"``, ``"int16"`` (with ``scl_slope``, intercept 0, like PET scanners),
            ``"int16raw"`` (rounded, no scaling, like MR scanners) or ``"uint8"`` (masks).
        frame_duration_s: for 4D images, ``pixdim[4]``.

    Raises:
        ValueError: unknown dtype.
    """
    if dtype == "float32":
        # Keep 9 of the 23 mantissa bits (relative precision 2e-3, far below image noise) so
        # that noisy float images compress; values stay float32.
        arr = np.ascontiguousarray(data, dtype=np.float32).copy()
        arr.view(np.uint32)[...] &= np.uint32(0xFFFFC000)
        slope = None
    elif dtype == "int16":
        peak = float(np.abs(data).max()) or 1.0
        slope = peak / 32000.0
        arr = np.round(np.asarray(data, np.float64) / slope).astype(np.int16)
    elif dtype == "int16raw":
        arr, slope = np.clip(np.round(data), -32768, 32767).astype(np.int16), None
    elif dtype == "uint8":
        arr, slope = np.asarray(data, np.uint8), None
    else:
        raise ValueError(f"{path}: unknown dtype {dtype!r}")
    img = nib.Nifti1Image(arr, affine)
    hdr = img.header
    hdr.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    if arr.ndim == 4 and frame_duration_s is not None:
        zooms = list(hdr.get_zooms())
        zooms[3] = float(frame_duration_s)
        hdr.set_zooms(zooms)
    if slope is not None:
        hdr.set_slope_inter(slope, 0.0)
    raw = img.to_bytes()
    if slope is not None:
        # nibabel writes an int16 array unscaled and resets scl_slope/scl_inter; set them in the
        # bytes (NIfTI-1 header offsets 112 and 116, float32 in the header's byte order).
        fmt = hdr.endianness + "ff"
        raw = raw[:112] + struct.pack(fmt, slope, 0.0) + raw[120:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_gzip(raw))
    return path


def _pet_sidecar(exam: Exam, *, static: bool) -> dict[str, Any]:
    site = exam.site
    if static:
        t0, t1 = site.static_window_min
        starts, durs = [t0 * 60.0], [(t1 - t0) * 60.0]
    else:
        starts, durs = list(exam.frame_start_s), list(exam.frame_duration_s)
    return {
        "Manufacturer": site.manufacturer,
        "ManufacturersModelName": site.model,
        "InstitutionName": f"{site.name.capitalize()} University Hospital (synthetic)",
        "SiteName": site.name,
        "Units": "Bq/mL",
        "BodyPart": "BRAIN",
        "TracerName": "FDOPA",
        "TracerRadionuclide": "F18",
        "TracerMolecularWeight": 215.18,
        "TracerMolecularWeightUnits": "g/mol",
        "InjectedRadioactivity": exam.truth.injected_mbq,
        "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": "n/a",
        "InjectedMassUnits": "n/a",
        "SpecificRadioactivity": "n/a",
        "SpecificRadioactivityUnits": "n/a",
        "ModeOfAdministration": "bolus",
        "BodyWeight": exam.truth.body_weight_kg,
        "BodyWeightUnits": "kg",
        "TimeZero": exam.time_zero,
        "ScanStart": 0,
        "InjectionStart": 0,
        "FrameTimesStart": starts,
        "FrameDuration": durs,
        "AcquisitionMode": "list mode",
        "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 0,
        "ReconMethodName": site.recon_method,
        "ReconMethodParameterLabels": ["iterations", "subsets"],
        "ReconMethodParameterUnits": ["none", "none"],
        "ReconMethodParameterValues": [site.recon_iterations, site.recon_subsets],
        "ReconFilterType": "Gaussian",
        "ReconFilterSize": site.recon_filter_mm,
        "AttenuationCorrection": "CT-based",
        "ScatterCorrectionMethod": "model-based",
        "ImageResolutionFWHMmm": site.psf_fwhm_mm,
    }


def _mr_sidecar(exam: Exam, kind: str) -> dict[str, Any]:
    site = exam.site
    seq = {
        "t1w": ("3D T1 gradient echo", 8.2, 3.2, 12),
        "t1c": ("3D T1 gradient echo post-contrast", 8.2, 3.2, 12),
        "t2w": ("2D turbo spin echo T2", 4500.0, 95.0, 90),
        "flair": ("3D FLAIR", 6000.0, 130.0, 90),
    }[kind]
    out: dict[str, Any] = {
        "Manufacturer": site.mri_manufacturer,
        "ManufacturersModelName": site.mri_model,
        "MagneticFieldStrength": site.mri_field_t,
        "SeriesDescription": seq[0],
        "RepetitionTimeExcitation": seq[1] / 1000.0,
        "EchoTime": seq[2] / 1000.0,
        "FlipAngle": seq[3],
        "InstitutionName": f"{site.name.capitalize()} University Hospital (synthetic)",
    }
    if kind == "flair":
        out["InversionTime"] = 1.8
    if kind == "t1c":
        out["ContrastBolusIngredient"] = "GADOLINIUM"
    return out


def exam_paths(root: Path, exam: Exam) -> dict[str, Path]:
    """Paths of every file of one exam (images without sidecars)."""
    sub, ses = exam.labels.participant_id, exam.session_id
    stem = f"{sub}_{ses}"
    d = root / sub / ses
    g = root / "derivatives" / PIPELINE / sub / ses
    out = {
        "t1w": d / "anat" / f"{stem}_T1w.nii.gz",
        "t1c": d / "anat" / f"{stem}_ce-gadolinium_T1w.nii.gz",
        "t2w": d / "anat" / f"{stem}_T2w.nii.gz",
        "flair": d / "anat" / f"{stem}_FLAIR.nii.gz",
        "pet_dynamic": d / "pet" / f"{stem}_trc-FDOPA_rec-acdyn_pet.nii.gz",
        "pet_static": d / "pet" / f"{stem}_trc-FDOPA_rec-acstat_pet.nii.gz",
    }
    for name in exam.pet_masks:
        out[f"pet_mask_{name}"] = g / "pet" / f"{stem}_trc-FDOPA_desc-{name}_mask.nii.gz"
    for name in exam.anat_masks:
        out[f"anat_mask_{name}"] = g / "anat" / f"{stem}_desc-{name}_mask.nii.gz"
    if exam.true_transforms is not None:
        out["true_transforms"] = g / f"{stem}_desc-truepose_xfm.json"
    return out


def true_transforms_json(exam: Exam) -> dict[str, Any]:
    """The ground-truth transforms of an exam with head motion, as written to
    ``*_desc-truepose_xfm.json`` (4x4 lists, RAS mm)."""
    if exam.true_transforms is None:
        raise ValueError("this exam was generated without head motion: no true transforms")
    return {
        "Description": "True spatial maps of this exam (opt-in head motion). Each 4x4 matrix "
                       "A_from_B maps world points (RAS+ mm) of space B to space A (the pull "
                       "convention used to resample A onto a grid of B). 'template' is MNI152 "
                       "(nilearn, 2009). pet_from_mri is exact (rigid); *_from_template is the "
                       "least-squares affine of the true map (head pose and anatomy) over the "
                       "template brain; *_from_template_pose is the head pose and brain size only.",
        **{k: np.round(v, 6).tolist() for k, v in exam.true_transforms.items()},
    }


def write_exam(root: Path, exam: Exam) -> list[Path]:
    """Write one exam's images, sidecars and truth masks under ``root``.

    Returns:
        The written paths.
    """
    paths = exam_paths(root, exam)
    written: list[Path] = []
    pet_dtype = exam.site.pet_dtype
    written.append(write_nifti(paths["pet_dynamic"], exam.pet_dynamic.data, exam.pet_dynamic.affine,
                               dtype=pet_dtype, frame_duration_s=float(np.median(exam.frame_duration_s))))
    written.append(write_nifti(paths["pet_static"], exam.pet_static.data, exam.pet_static.affine, dtype=pet_dtype))
    for key, static in (("pet_dynamic", False), ("pet_static", True)):
        side = paths[key].with_name(paths[key].name.replace(".nii.gz", ".json"))
        _write_json(side, _pet_sidecar(exam, static=static))
        written.append(side)
    for kind in ("t1w", "t1c", "t2w", "flair"):
        vol = getattr(exam, kind)
        if vol is None:
            continue
        written.append(write_nifti(paths[kind], vol.data, vol.affine, dtype="int16raw"))
        side = paths[kind].with_name(paths[kind].name.replace(".nii.gz", ".json"))
        _write_json(side, _mr_sidecar(exam, kind))
        written.append(side)
    for name, mask in exam.pet_masks.items():
        written.append(write_nifti(paths[f"pet_mask_{name}"], mask, exam.pet_static.affine, dtype="uint8"))
    if exam.t1w is not None:
        for name, mask in exam.anat_masks.items():
            written.append(write_nifti(paths[f"anat_mask_{name}"], mask, exam.t1w.affine, dtype="uint8"))
    if "true_transforms" in paths:
        _write_json(paths["true_transforms"], true_transforms_json(exam))
        written.append(paths["true_transforms"])
    return written


def participant_row(exam: Exam) -> dict[str, Any]:
    """``participants.tsv`` row of the exam's patient."""
    lab = exam.labels
    return {
        "participant_id": lab.participant_id, "site": lab.site, "age": lab.age, "sex": lab.sex,
        "idh": lab.idh, "codeletion_1p19q": lab.codeletion_1p19q, "mgmt": lab.mgmt,
        "tertp": lab.tertp, "who_grade": lab.who_grade, "who_type": lab.who_type,
    }


def session_row(exam: Exam) -> dict[str, Any]:
    """``sessions.tsv`` row of the exam."""
    return {
        "session_id": exam.session_id, "timepoint": exam.timepoint, "day": exam.day,
        "diagnosis": exam.diagnosis, "diagnosis_basis": exam.diagnosis_basis,
    }


def exam_groundtruth_row(exam: Exam) -> dict[str, Any]:
    """``derivatives/groundtruth/groundtruth.tsv`` row of the exam."""
    t, lab = exam.truth, exam.labels
    c = t.aggressive_centroid_mm or (None, None, None)
    return {
        "participant_id": lab.participant_id, "session_id": exam.session_id, "site": lab.site,
        "timepoint": exam.timepoint, "day": exam.day, "diagnosis": exam.diagnosis,
        "diagnosis_basis": exam.diagnosis_basis, "idh": lab.idh,
        "codeletion_1p19q": lab.codeletion_1p19q, "who_grade": lab.who_grade, "who_type": lab.who_type,
        "suv_background": t.suv_background, "suv_background_region": t.suv_background_region,
        "suv_striatum": t.suv_striatum, "suv_tumour": t.suv_tumour, "suv_aggressive": t.suv_aggressive,
        "true_suvmax": t.suv_max, "true_tbr_max": t.tbr_max, "true_ts_max": t.ts_max,
        "true_ttp_min": t.ttp_min, "ttp_aggressive_min": t.ttp_aggressive_min,
        "slope_per_h": t.slope_per_h, "tumour_volume_ml": t.tumour_volume_ml,
        "aggressive_centroid_x_mm": c[0], "aggressive_centroid_y_mm": c[1], "aggressive_centroid_z_mm": c[2],
        "aggressive_pattern": t.aggressive_pattern, "calibration": t.calibration, "injected_mbq": t.injected_mbq, "body_weight_kg": t.body_weight_kg,
        "psf_fwhm_mm": exam.site.psf_fwhm_mm, "pet_dtype": exam.site.pet_dtype,
        "pet_orientation": exam.site.pet_orientation, "mri_orientation": exam.site.mri_orientation,
    }


_PARTICIPANTS_JSON = {
    "participant_id": {"Description": "Synthetic patient; label is <site code>P<number>."},
    "site": {"Description": "Centre that acquired the exams (scanner and protocol profile)."},
    "age": {"Description": "Age at diagnosis", "Units": "year"},
    "sex": {"Description": "Sex", "Levels": {"M": "male", "F": "female"}},
    "idh": {"Description": "IDH1/2 mutation status",
            "Levels": {"mutant": "IDH-mutant", "wildtype": "IDH-wildtype", "n/a": "not available"}},
    "codeletion_1p19q": {"Description": "1p/19q codeletion (tested in IDH-mutant tumours only)",
                         "Levels": {"codeleted": "1p/19q codeleted", "intact": "not codeleted",
                                    "n/a": "not tested"}},
    "mgmt": {"Description": "MGMT promoter methylation",
             "Levels": {"methylated": "methylated", "unmethylated": "unmethylated", "n/a": "not available"}},
    "tertp": {"Description": "TERT promoter mutation",
              "Levels": {"mutant": "mutant", "wildtype": "wildtype", "n/a": "not available"}},
    "who_grade": {"Description": "CNS WHO grade (WHO 2021)",
                  "Levels": {"2": "grade 2", "3": "grade 3", "4": "grade 4", "n/a": "not available"}},
    "who_type": {"Description": "Tumour type (WHO 2021 adult-type diffuse glioma)",
                 "Levels": {"astrocytoma": "astrocytoma, IDH-mutant",
                            "oligodendroglioma": "oligodendroglioma, IDH-mutant and 1p/19q-codeleted",
                            "glioblastoma": "glioblastoma, IDH-wildtype", "n/a": "not available"}},
}
_SESSIONS_JSON = {
    "session_id": {"Description": "ses-01: initial diagnosis; ses-02: suspected recurrence"},
    "timepoint": {"Description": "Clinical time point of the exam",
                  "Levels": {"initial_diagnosis": "exam at initial diagnosis",
                             "suspected_recurrence": "exam for suspected recurrence after treatment"}},
    "day": {"Description": "Days since the first exam of the patient", "Units": "day"},
    "diagnosis": {"Description": "Final diagnosis of a suspected-recurrence exam",
                  "Levels": {"progression": "true tumour progression",
                             "treatment_related": "treatment-related change (radionecrosis, pseudoprogression)",
                             "n/a": "not applicable (initial diagnosis)"}},
    "diagnosis_basis": {"Description": "How the diagnosis was established",
                        "Levels": {"histology": "histopathology of a resection or biopsy",
                                   "follow_up": "clinical and imaging follow-up",
                                   "n/a": "not applicable"}},
}
_README = """AminoPET synthetic multi-centre 18F-FDOPA PET / MRI glioma cohort
=================================================================

Generated by ml.phantoms (AminoPET). No real patient data: anatomy is the MNI152 template with a
random deformation per patient, tumours are synthetic, and every label and value is known.

- participants.tsv: clinical and molecular labels (WHO 2021).
- sub-*/sub-*_sessions.tsv: two exams per patient, initial_diagnosis and suspected_recurrence.
- pet/: 4D dynamic (rec-acdyn) and static (rec-acstat) 18F-FDOPA PET in Bq/mL. BodyWeight (kg) in
  the PET sidecar is an AminoPET extension needed for SUV = C / (InjectedRadioactivity / BodyWeight).
- derivatives/groundtruth/: truth masks (tumor, aggressive subregion, striatum, background) on the
  PET grid and (tumor, aggressive, necrosis, oedema, enhancing) on the T1w grid, and
  groundtruth.tsv with the set SUVs, TBR, T/S, TTP and aggressive-subregion centroid.

See docs/phantoms.md in the AminoPET repository for the model and the literature behind it.
"""


def write_dataset_files(
    root: Path,
    *,
    participants: Sequence[Mapping[str, Any]],
    sessions: Mapping[str, Sequence[Mapping[str, Any]]],
    groundtruth: Sequence[Mapping[str, Any]],
    seed: int,
    version: str,
) -> None:
    """Write the dataset-level files: description, README, participants, sessions, truth table."""
    root.mkdir(parents=True, exist_ok=True)
    generated = [{"Name": "AminoPET ml.phantoms", "Version": version,
                  "Description": f"synthetic cohort generator, seed {seed}"}]
    _write_json(root / "dataset_description.json", {
        "Name": f"AminoPET synthetic FDOPA glioma cohort (seed {seed})",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["AminoPET synthetic cohort generator"],
        "GeneratedBy": generated,
        "HowToAcknowledge": "Synthetic data; cite the AminoPET project.",
    })
    (root / "README").write_text(_README, encoding="utf-8")
    (root / ".bidsignore").write_text("", encoding="utf-8")
    _write_tsv(root / "participants.tsv", PARTICIPANT_COLUMNS, participants)
    _write_json(root / "participants.json", _PARTICIPANTS_JSON)
    _write_json(root / "sessions.json", _SESSIONS_JSON)
    for sub, rows in sessions.items():
        _write_tsv(root / sub / f"{sub}_sessions.tsv", SESSION_COLUMNS, rows)
    deriv = root / "derivatives" / PIPELINE
    deriv.mkdir(parents=True, exist_ok=True)
    _write_json(deriv / "dataset_description.json", {
        "Name": "AminoPET synthetic cohort ground truth",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": generated,
    })
    _write_tsv(deriv / "groundtruth.tsv", GROUNDTRUTH_COLUMNS, groundtruth)
    _write_json(deriv / "groundtruth.json", {
        c: {"Description": c.replace("_", " ")} for c in GROUNDTRUTH_COLUMNS
    } | {
        "true_suvmax": {"Description": "SUV set for the hottest tumour compartment (no PSF, no noise, no calibration error)"},
        "true_tbr_max": {"Description": "true_suvmax / suv_background_region"},
        "true_ts_max": {"Description": "true_suvmax / suv_striatum"},
        "true_ttp_min": {"Description": "time to peak of the volume-weighted tumour TAC", "Units": "min"},
        "aggressive_centroid_x_mm": {"Description": "world (RAS, scanner) x of the aggressive subregion centroid", "Units": "mm"},
        "aggressive_pattern": {"Description": "static: the aggressive subregion is the static hotspot; dynamic: "
                               "early peak and washout at static uptake no higher than the rest of the tumour "
                               "(only the dynamics show it, Kunz 2011); none: no aggressive subregion"},
    })
