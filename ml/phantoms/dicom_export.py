"""Export one synthetic exam as DICOM series (PET and MR), for the platform's import tests.

The series are written by :func:`ml.io.dicom_write.write_series` (one file per slice and frame)
with headers a scanner would send: patient and study identity, site manufacturer and model, and
for PET the radiopharmaceutical (18F-FDOPA), injected dose, injection time, patient weight and
``DecayCorrection START``. The NIfTI images are decay-corrected to injection; DICOM values are
decay-corrected to the series start, so the static series (which starts 10 or 20 min after
injection) is multiplied by ``exp(-ln2 t0 / T1/2)`` and ``SeriesTime`` is injection + t0, exactly
what the QIBA SUV flow chart undoes.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from ml.phantoms.exam import F18_HALF_LIFE_MIN, Exam

__all__ = ["export_exam_dicom", "SERIES"]

#: Series exported, with their DICOM SeriesDescription and number.
SERIES = {
    "pet_static": ("PET Brain FDOPA static", 1),
    "pet_dynamic": ("PET Brain FDOPA dynamic", 2),
    "t1w": ("T1 3D", 3),
    "t1c": ("T1 3D GADO", 4),
    "t2w": ("T2 TSE", 5),
    "flair": ("FLAIR 3D", 6),
}


def export_exam_dicom(
    exam: Exam,
    out_dir: str | Path,
    *,
    series: tuple[str, ...] = ("pet_static", "pet_dynamic", "t1w", "t1c", "flair"),
    study_date: str = "20240102",
) -> dict[str, list[Path]]:
    """Write the requested series of ``exam`` under ``out_dir/<series name>/``.

    Args:
        exam: an exam from :func:`~ml.phantoms.exam.make_exam` or :func:`render_exam`.
        out_dir: destination folder (created).
        series: keys of :data:`SERIES` to export.
        study_date: DICOM date (YYYYMMDD) of the exam.

    Returns:
        Paths written per series.

    Raises:
        ValueError: unknown series name or an MR series missing from the exam.
    """
    from ml.io.dicom_write import write_series  # written alongside; imported late on purpose

    unknown = [s for s in series if s not in SERIES]
    if unknown:
        raise ValueError(f"unknown series {unknown}: choose from {sorted(SERIES)}")
    out = Path(out_dir)
    labels, site, truth = exam.labels, exam.site, exam.truth
    key = f"{labels.participant_id}/{exam.session_id}"
    study_uid = generate_uid(entropy_srcs=[key, "study"])
    frame_uid = generate_uid(entropy_srcs=[key, "frame"])
    inj = datetime.strptime(f"{study_date}{exam.time_zero}", "%Y%m%d%H:%M:%S")
    birth_year = int(study_date[:4]) - labels.age
    common: dict[str, Any] = {
        "PatientName": f"Synthetic^{labels.participant_id.removeprefix('sub-')}",
        "PatientID": labels.participant_id.removeprefix("sub-"),
        "PatientBirthDate": f"{birth_year}0101",
        "PatientSex": labels.sex,
        "PatientAge": f"{labels.age:03d}Y",
        "PatientWeight": truth.body_weight_kg,
        "InstitutionName": f"{site.name.capitalize()} University Hospital (synthetic)",
        "StudyDate": study_date,
        "StudyTime": (inj - timedelta(minutes=15)).strftime("%H%M%S"),
        "StudyInstanceUID": study_uid,
        "FrameOfReferenceUID": frame_uid,
        "AccessionNumber": key.replace("/", "").replace("-", "")[:16],
        "StudyDescription": "Brain 18F-FDOPA PET and MRI",
    }
    written: dict[str, list[Path]] = {}
    for name in series:
        desc, number = SERIES[name]
        header = dict(common, SeriesDescription=desc, SeriesNumber=number,
                      SeriesInstanceUID=generate_uid(entropy_srcs=[key, name]))
        if name.startswith("pet"):
            t0_min = site.static_window_min[0] if name == "pet_static" else 0.0
            start = inj + timedelta(minutes=t0_min)
            header.update({
                "Manufacturer": site.manufacturer,
                "ManufacturerModelName": site.model,
                "SeriesDate": study_date,
                "SeriesTime": start.strftime("%H%M%S"),
                "AcquisitionTime": start.strftime("%H%M%S"),
                "Radiopharmaceutical": "Fluorodopa F^18^",
                "RadionuclideTotalDose": truth.injected_mbq * 1e6,
                "RadiopharmaceuticalStartTime": inj.strftime("%H%M%S.000000"),
                "RadiopharmaceuticalStartDateTime": inj.strftime("%Y%m%d%H%M%S.000000"),
                "ReconstructionMethod": site.recon_method,
                "ConvolutionKernel": f"Gaussian {site.recon_filter_mm} mm",
            })
            if name == "pet_static":
                decay = math.exp(-math.log(2.0) * t0_min / F18_HALF_LIFE_MIN)
                t0, t1 = site.static_window_min
                written[name] = write_series(
                    exam.pet_static.data * decay, exam.pet_static.affine, out / name, modality="PT",
                    header=header, frame_start_s=[0.0], frame_duration_s=[(t1 - t0) * 60.0])
            else:
                written[name] = write_series(
                    exam.pet_dynamic.data, exam.pet_dynamic.affine, out / name, modality="PT",
                    header=header, frame_start_s=list(exam.frame_start_s),
                    frame_duration_s=list(exam.frame_duration_s))
        else:
            vol = getattr(exam, name)
            if vol is None:
                raise ValueError(f"exam has no {name} volume (rendered with include_mr=False)")
            mr_time = inj - timedelta(days=1)
            header.update({
                "Manufacturer": site.mri_manufacturer,
                "ManufacturerModelName": site.mri_model,
                "MagneticFieldStrength": site.mri_field_t,
                "SeriesDate": mr_time.strftime("%Y%m%d"),
                "SeriesTime": mr_time.strftime("%H%M%S"),
            })
            written[name] = write_series(vol.data, vol.affine, out / name, modality="MR", header=header)
    return written
