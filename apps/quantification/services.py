"""Quantify an exam from its stored volumes and masks (ml.quant, ml.radiomics) and keep the results."""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from django.db import transaction

from apps.cohorts.models import Exam, Mask, Volume
from apps.cohorts.services.prepare import registration_refusal
from apps.cohorts.services.store import StoreTransaction, media_path
from apps.quantification.errors import QuantificationError, RegistrationRefused
from apps.quantification.lesion import lesion_position_mm
from apps.quantification.models import ExamQuantification, RadiomicsFeatures
from ml.io.grid import Grid, common_grid, resample_to_grid
from ml.io.nifti import load_nifti, nifti_bytes
from ml.quant import ROW_COLUMNS, QuantConfig, quantify_exam
from ml.quant.auto_voi import AutoVoiConfig, AutoVois, auto_vois, lesion_on_pet_grid
from ml.radiomics.table import SEPARATOR, exam_features
from ml.registration import Transform, register_exam, registration_similarity, resample

FEATURE_SETS = ("parameters", "radiomics", "all")
#: The CSV of ``manage.py quantify``: ids, then exactly the parameter columns of ml.quant.
CSV_COLUMNS = ["site", "patient", "exam", *ROW_COLUMNS]
PET_GRIDS = ("pet_static", "pet_dynamic")
MRI_KINDS = ("t1c", "t1", "flair", "t2")


def _suv_array(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    data = load_nifti(media_path(volume.file.name))
    array = data.array
    if volume.units == "Bq/mL":
        array = array * float(volume.suv_factor)
    return array, data.affine


def _mask(exam: Exam, kind: str, grid: Volume) -> np.ndarray | None:
    mask = Mask.objects.filter(exam=exam, kind=kind, space="native", grid=grid).first()
    if mask is None:
        return None
    return load_nifti(media_path(mask.file.name), ndim=(3,)).array > 0.5


def _tac_plot(tacs: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    colours = {"tumor": "#c0392b", "striatum": "#2471a3", "background": "#7f8c8d"}
    for name, tac in tacs.items():
        t = np.asarray(tac["mid_times_s"]) / 60.0
        ax.plot(t, tac["values"], marker="o", ms=3, label=name, color=colours.get(name))
    ax.set_xlabel("time after injection (min)")
    ax.set_ylabel("SUV")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _pet_registration(exam: Exam, static: Volume) -> tuple[Transform, Transform | None]:
    """The exam's registration, ``(pet_from_template, pet_from_mri)``, as stored by preparation, or
    computed now (the same deterministic registration) when preparation has not run yet.

    Raises:
        QuantificationError: the registration is marked failed, or flagged poor and not passed by a
            coordinator (:func:`apps.cohorts.services.prepare.registration_refusal`); or, computed
            now, its similarity is poor; or there is no MRI to register to.
    """
    refusal = registration_refusal(exam)
    if refusal is not None:
        raise RegistrationRefused(f"exam {exam}: automatic VOIs need the registration, but {refusal}")
    common = exam.volumes.filter(kind="pet_static", space="common").first()
    stored = (common.metadata or {}).get("registration", {}).get("transform") if common else None
    if stored:
        pet_from_mri = common.metadata["registration"].get("pet_from_mri")
        return Transform.from_dict(stored), (Transform.from_dict(pet_from_mri) if pet_from_mri else None)
    mri_vol = next((v for k in ("t1c", "t1", "flair", "t2")
                    for v in exam.volumes.filter(kind=k, space="native")), None)
    if mri_vol is None:
        raise QuantificationError(f"exam {exam}: no masks and no MRI to register the PET to the template")
    mri, pet = load_nifti(media_path(mri_vol.file.name)), load_nifti(media_path(static.file.name))
    reg = register_exam(mri=mri, pet=pet)
    grid = common_grid()
    similarity = registration_similarity(mri=resample(mri, reg.mri_from_template, grid),
                                         pet=resample(pet, reg.pet_from_template, grid))
    if similarity["poor"]:
        figures = "; ".join(f"{k} NMI {v['nmi']:.3f} < {v['threshold']}" for k, v in similarity.items()
                            if isinstance(v, dict) and v["poor"])
        raise RegistrationRefused(f"exam {exam}: automatic VOIs need the registration, but it is poor ({figures}); "
                                  "prepare the exam and review its registration on the exam page")
    return reg.pet_from_template, reg.pet_from_mri


def _mri_lesion(exam: Exam, pet_from_mri: Transform | None, shape, affine) -> np.ndarray | None:
    """The tumour mask the site drew on an MRI sequence, on the PET grid (through the PET -> MRI
    registration), or None when there is none: it guides the automatic tumour (a PET-negative
    lesion is found only with it)."""
    mask = (Mask.objects.filter(exam=exam, kind="tumor", space="native", grid__kind__in=MRI_KINDS)
            .select_related("grid").order_by("grid__kind").first())
    if mask is None or pet_from_mri is None:
        return None
    data = load_nifti(media_path(mask.file.name), ndim=(3,))
    try:
        return lesion_on_pet_grid(data.array > 0.5, data.affine, pet_from_mri, shape, affine)
    except ValueError as exc:
        raise QuantificationError(f"exam {exam}: MRI lesion {mask.source_name or mask.kind}: {exc}") from exc


def registration_refusals(exam_ids: Iterable[int]) -> dict[int, str]:
    """The exams whose stored quantification used their registration (an automatic tumour or
    striatum) while that registration is now refused (:func:`registration_refusal`): ``{pk:
    reason}``. Predictions refuse these exams until they are re-registered or their registration
    QC passes and they are quantified again."""
    out: dict[int, str] = {}
    quants = ExamQuantification.objects.filter(exam_id__in=list(exam_ids)).select_related("exam__patient__site")
    for q in quants:
        sources = q.voi_sources or {}
        if "automatic" not in (sources.get("tumor"), sources.get("striatum")):
            continue  # supplied masks on the native PET grid: the registration was not used
        refusal = registration_refusal(q.exam)
        if refusal is not None:
            out[q.exam_id] = f"exam {q.exam}: its quantification used automatic VOIs, but {refusal}"
    return out


def _auto_vois(exam: Exam, static: Volume, suv, affine, *, tumor, striatum, background,
               threshold_tbr: float) -> AutoVois | None:
    """Automatic tumour and/or striatum VOIs (ml.quant.auto_voi) where the site supplied none; an
    automatic tumour is searched inside the MRI lesion when the site drew one on an MRI sequence.

    None when only the striatum is missing and the exam cannot be registered (no MRI): the
    exam is then quantified without T/S, as before automatic VOIs existed.
    """
    try:
        transform, pet_from_mri = _pet_registration(exam, static)
    except RegistrationRefused:
        raise
    except (QuantificationError, ValueError):
        if tumor is not None:
            return None
        raise
    lesion = _mri_lesion(exam, pet_from_mri, suv.shape, affine) if tumor is None else None
    try:
        return auto_vois(suv, affine, pet_from_template=transform, tumor_mask=tumor,
                         striatum_mask=striatum, background_mask=background, lesion_mask=lesion,
                         config=AutoVoiConfig(threshold_tbr=threshold_tbr))
    except ValueError as exc:
        raise QuantificationError(f"exam {exam}: automatic VOIs failed: {exc}") from exc


def _voi_sources(vois: AutoVois | None, background_source: str, has_striatum: bool) -> dict[str, str]:
    """Which VOIs were supplied with the exam and which were made automatically."""
    if vois is not None:
        return dict(vois.sources)
    return {"tumor": "supplied", "striatum": "supplied" if has_striatum else "none",
            "background": "supplied" if background_source == "given" else "mirrored"}


def _finite(value) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def exam_quantify(
    *, exam: Exam, config: QuantConfig | None = None, radiomics: bool = True,
    progress: Callable[[float, str], None] | None = None,
) -> ExamQuantification:
    """Quantify ``exam`` on its native PET grid; idempotent (replaces the previous result).

    VOIs the site did not supply are made automatically (ml.quant.auto_voi: tumour by the 1.6 x
    background threshold around the hotspot, striatum from the template through the exam's
    registration, mirrored background); ``voi_sources`` records which is which.

    Raises:
        QuantificationError: no static PET, or automatic VOIs impossible (reason named).
    """
    report = progress or (lambda pct, msg="": None)
    static = exam.volumes.filter(kind="pet_static", space="native").first()
    if static is None:
        raise QuantificationError(f"exam {exam}: no static PET to quantify")
    tumor = _mask(exam, "tumor", static)
    dynamic = exam.volumes.filter(kind="pet_dynamic", space="native").first()
    if tumor is None and dynamic is not None:
        # masks may lie on the dynamic grid when it differs from the static one
        tumor_dyn = _mask(exam, "tumor", dynamic)
        if tumor_dyn is not None:
            dyn_data = load_nifti(media_path(dynamic.file.name))
            st = load_nifti(media_path(static.file.name))
            tumor = resample_to_grid(tumor_dyn.astype(np.float32), dyn_data.affine,
                                     Grid(st.shape[:3], st.affine), order=0) > 0.5
    report(10, "Loading PET")
    suv, affine = _suv_array(static)
    striatum, background = _mask(exam, "striatum", static), _mask(exam, "background", static)
    vois = None
    if tumor is None or striatum is None:
        report(15, "Automatic VOIs")
        vois = _auto_vois(exam, static, suv, affine, tumor=tumor, striatum=striatum, background=background,
                          threshold_tbr=(config or QuantConfig()).mtv_threshold_tbr)
        if vois is not None:
            tumor, striatum = vois.tumor, vois.striatum
            background = vois.background if vois.sources["tumor"] == "automatic" else background
    pet_dyn = start = duration = None
    if dynamic is not None:
        pet_dyn, dyn_affine = _suv_array(dynamic)
        if pet_dyn.shape[:3] != suv.shape or not np.allclose(dyn_affine, affine, atol=1e-3):
            pet_dyn = resample_to_grid(pet_dyn, dyn_affine, Grid(suv.shape, affine), order=1)
        start, duration = dynamic.frame_start_s, dynamic.frame_duration_s
    report(30, "Quantifying")
    result = quantify_exam(
        pet_static=suv, affine=affine, tumor_mask=tumor, pet_dynamic=pet_dyn,
        frame_start_s=start, frame_duration_s=duration,
        striatum_mask=striatum, background_mask=background,
        config=config or QuantConfig(),
    )
    summary = result.to_dict()
    voi_sources = _voi_sources(vois, result.background_source, striatum is not None)
    row = summary["row"]
    lesion_mm = lesion_position_mm(suv, tumor, affine)
    features: dict[str, dict[str, float]] = {}
    if radiomics:
        report(60, "Radiomics")
        bg_mean = result.static.background_mean
        images = {"pet_suv": suv}
        if math.isfinite(bg_mean) and bg_mean > 0:
            images["tbr"] = suv / bg_mean
        if result.ttp_map is not None:
            images["ttp"] = np.nan_to_num(result.ttp_map, nan=0.0)
        flat = exam_features(images, tumor, affine)
        for key, value in flat.items():
            name, feature = key.split(SEPARATOR, 1)
            features.setdefault(name, {})[feature] = _finite(value)
    report(85, "Saving maps and plots")
    store = StoreTransaction()
    try:
        files = {}
        for name, array in (("ttp_map", result.ttp_map), ("slope_map", result.slope_map)):
            if array is not None:
                files[name], _ = store.put_bytes(nifti_bytes(np.nan_to_num(array, nan=0.0), affine),
                                                 category="maps", suffix=".nii.gz")
        if summary["tacs"]:
            files["tac_plot"], _ = store.put_bytes(_tac_plot(summary["tacs"]), category="plots", suffix=".png")
        with transaction.atomic():
            quant, _ = ExamQuantification.objects.update_or_create(
                exam=exam,
                defaults={
                    **{k: _finite(row[k]) for k in ROW_COLUMNS if k != "curve_class"},
                    "curve_class": row["curve_class"] or "n/a",
                    "background_source": result.background_source,
                    "tacs": summary["tacs"], "voi_sources": voi_sources,
                    "config": summary["config"] | {"static": summary["static"]}
                    | ({"auto_voi": vois.to_dict()} if vois is not None else {}),
                    "ttp_map": files.get("ttp_map", ""), "slope_map": files.get("slope_map", ""),
                    "tac_plot": files.get("tac_plot", ""),
                    "lesion_mm": lesion_mm,
                },
            )
            for image_type, values in features.items():
                RadiomicsFeatures.objects.update_or_create(
                    exam=exam, image_type=image_type, defaults={"features": values})
    except BaseException:
        store.rollback()
        raise
    return quant


def quantification_rows(exams: Iterable[Exam]) -> list[dict]:
    """One CSV row per quantified exam (columns :data:`CSV_COLUMNS`)."""
    rows = []
    for exam in exams:
        q = getattr(exam, "quantification", None)
        if q is None:
            continue
        rows.append({"site": exam.patient.site.name, "patient": exam.patient.code, "exam": exam.code,
                     **{k: getattr(q, k) for k in ROW_COLUMNS}})
    return rows


def feature_table(exams: Iterable[Exam], *, features: str = "parameters") -> pd.DataFrame:
    """One row per quantified exam (index: exam pk), the clinical parameters and/or radiomics."""
    if features not in FEATURE_SETS:
        raise ValueError(f"features must be one of {FEATURE_SETS}, not {features!r}")
    exams = list(exams)
    quants = {q.exam_id: q for q in ExamQuantification.objects.filter(exam__in=exams)}
    rows: dict[int, dict] = {}
    for exam in exams:
        q = quants.get(exam.pk)
        if q is None:
            continue
        row: dict = {}
        if features in ("parameters", "all"):
            row.update({k: getattr(q, k) for k in ROW_COLUMNS})
        rows[exam.pk] = row
    if features in ("radiomics", "all"):
        for r in RadiomicsFeatures.objects.filter(exam_id__in=rows):
            rows[r.exam_id].update({f"{r.image_type}__{k}": v for k, v in r.features.items()})
    table = pd.DataFrame.from_dict(rows, orient="index")
    numeric = [c for c in table.columns if c != "curve_class"]
    table[numeric] = table[numeric].astype(float)
    return table
