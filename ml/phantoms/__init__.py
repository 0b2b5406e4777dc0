"""Synthetic multi-centre 18F-FDOPA PET / MRI glioma cohorts with known truth.

No real patient data may be used or downloaded, so every demo, test, model and reader study of
AminoPET runs on cohorts made here: MNI152 anatomy with a per-patient deformation, irregular
gliomas with an aggressive subregion, necrosis and oedema, labels drawn from published
frequencies (WHO 2021), dynamic PET from tissue time-activity curves, site profiles (frames, PSF,
noise, calibration, dose, orientation, storage type) and a BIDS-PET writer. Plain Python, no
Django. ``docs/phantoms.md`` describes the model and the literature behind each number.

Entry points:
    generate_cohort(out_dir, *, n_patients, n_sites, seed, resolution=2, progress=None)
    make_exam(*, seed=0, patient_index=0, site=0, timepoint="initial_diagnosis", ...)
    calibration_report(bids_dir) -> CalibrationResults
    export_exam_dicom(exam, out_dir) -> dict[str, list[Path]]
    python -m ml.phantoms --out DIR --patients N --sites K --seed S [--resolution 2]
"""
from __future__ import annotations

from ml.phantoms.calibration import CalibrationResults, calibration_from_exams, calibration_report
from ml.phantoms.cohort import CohortSummary, generate_cohort
from ml.phantoms.dicom_export import export_exam_dicom
from ml.phantoms.exam import (
    TIMEPOINTS,
    Exam,
    ExamTruth,
    Volume,
    draw_patient,
    make_exam,
    render_exam,
)
from ml.phantoms.sites import SITES, SiteProfile

__all__ = [
    "CalibrationResults",
    "CohortSummary",
    "Exam",
    "ExamTruth",
    "SITES",
    "SiteProfile",
    "TIMEPOINTS",
    "Volume",
    "calibration_from_exams",
    "calibration_report",
    "draw_patient",
    "export_exam_dicom",
    "generate_cohort",
    "make_exam",
    "render_exam",
]
