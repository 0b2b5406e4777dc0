"""Map aggressive subregions of prepared exams and plan biopsy targets (WP2 on the platform, issue 13).

:func:`subregions_map` runs the library (:mod:`ml.subregions`) on the channel stacks of a cohort's
prepared exams (:func:`apps.registry.foundation.exam_stack`):

1. voxel features of each exam's tumour: the PET dynamics (TBR, SUV over the tumour median, voxel
   TTP and late slope; TBR and relative SUV only when a cohort exam has no dynamic PET) and, with a
   foundation encoder, its patch embeddings (stored :class:`~apps.registry.models.ExamEmbedding`,
   computed for exams that have none);
2. habitats: a Gaussian mixture fitted on the pooled tumour voxels of the cohort (k fixed or chosen
   by BIC in 2..5), ordered by mean TTP (habitat 1 = earliest peak), then applied to each exam;
   the exam's habitat signature (fractions, SUVmean / SUVmax / TTP per habitat);
3. the aggressiveness map: a mean-pooled logistic marker model (WHO grade 4 vs 2-3; IDH-wildtype when
   the cohort has no usable grades) fitted on the cohort's metabolically active tumour voxels
   (TBR >= 1.6), its exact attribution per voxel (in-sample: the exam's own label
   is among the training labels, stated in ``aggressiveness_source``). Without labels in two
   classes the map is a stated heuristic (local TBR high, local TTP early);
4. three biopsy targets with the safety margin from the tumour border: the learned map's peak,
   the SUVmax hotspot and the earliest-TTP cluster (Kunz 2011); each in common-grid voxels, MNI mm
   and scanner mm (the T1c's scanner coordinates through the registration's inverse, what a
   navigation system loaded with the T1c uses), with hit / distance to the true aggressive
   subregion when the exam has one (generator truth or a site's mask);
5. stored files on the 2 mm common grid (habitat labels, aggressiveness map, target region) and a
   DICOM SEG of the target region on the native T1c series (zip with the series it references);
6. for a cohort, the association of the habitat signature (one exam per patient, the initial
   diagnosis preferred) with IDH, 1p/19q and WHO grade, Benjamini-Hochberg corrected.

Re-running replaces the rows of the same (exam, key) in one transaction; files are content-addressed
(:class:`~apps.cohorts.services.store.StoreTransaction`), so a failed run leaves the previous maps.
"""
from __future__ import annotations

import dataclasses
import io
import math
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from django.db import transaction

from apps.audit.services import audit_record
from apps.cohorts.models import Cohort, Exam
from apps.cohorts.services.store import StoreTransaction, media_path
from apps.subregions.models import TARGET_METHODS, SubregionCohortAnalysis, SubregionMap

Progress = Callable[[float, str], None]
#: Grid the stored maps are on (the prepared common grid the viewer shows).
DISPLAY_VOXEL_MM = 2.0
#: TBR threshold of the metabolically active tumour the marker model reads (Pauleit et al. 2005).
BTV_MIN_TBR = 1.6
MARKER_PREFERENCE = ("who_grade", "idh")
MARKER_WORDING = {"who_grade": "WHO grade 4 (vs 2-3)", "idh": "IDH-wildtype (vs mutant)"}


class SubregionError(ValueError):
    """A mapping cannot run (unknown cohort, not a foundation model, no tumour voxels...)."""


@dataclasses.dataclass(frozen=True)
class SubregionReport:
    """What :func:`subregions_map` did.

    Attributes:
        key: ``"dynamic"`` or ``"model-<id>"``.
        maps: ids of the stored :class:`SubregionMap` rows.
        skipped: ``[{exam, reason}]``.
        n_habitats: habitats of the fitted model.
        analysis: id of the cohort's :class:`SubregionCohortAnalysis`, or None.
        aggressiveness_source: what the map is.
    """

    key: str
    maps: list[int]
    skipped: list[dict]
    n_habitats: int
    analysis: int | None
    aggressiveness_source: str

    @property
    def message(self) -> str:
        return (f"Mapped {len(self.maps)} exams ({self.key}, {self.n_habitats} habitats; "
                f"{len(self.skipped)} skipped)")


def _noop(pct: float, msg: str = "") -> None:
    return None


def mapping_key(model_version) -> str:
    return "dynamic" if model_version is None else f"model-{model_version.pk}"


def _upsample(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour copy of a (4 mm) common-grid array onto the 2 mm grid (exact: the 4 mm grid
    is 2 x 2 x 2 blocks of the 2 mm one, ml.io.grid.common_grid)."""
    if factor == 1:
        return array
    return np.repeat(np.repeat(np.repeat(array, factor, 0), factor, 1), factor, 2)


def _json_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return float(f"{f:.8g}") if math.isfinite(f) else None  # 8 significant digits (small p-values)


def _embeddings(model_version, exams: list[Exam], report: Progress) -> dict[int, Any]:
    """Patch embeddings of ``exams`` by ``model_version`` (computed for those without a stored one)."""
    from apps.registry.foundation import FoundationError, embeddings_compute
    from apps.registry.models import ExamEmbedding

    rows = {e.exam_id: e for e in ExamEmbedding.objects.filter(model_version=model_version, exam__in=exams)}
    missing = [e for e in exams if e.pk not in rows]
    if missing:
        report(8, f"Encoding {len(missing)} exams with {model_version}")
        try:
            embeddings_compute(model_version=model_version, exams=missing)
        except FoundationError as exc:
            raise SubregionError(str(exc)) from exc
        rows = {e.exam_id: e for e in ExamEmbedding.objects.filter(model_version=model_version, exam__in=exams)}
    out = {}
    for exam_id, row in rows.items():
        with np.load(media_path(row.patches.name)) as z:
            out[exam_id] = SimpleNamespace(patches=z["patches"], patch_affine=z["patch_affine"])
    return out


def _select(cohort: str | Cohort | None, exam: Exam | None) -> tuple[Cohort | None, list[Exam], list[Exam]]:
    """(cohort, exams the models are fitted on, exams mapped)."""
    if cohort is None and exam is None:
        raise SubregionError("give a cohort or an exam")
    cohort_obj = None
    if cohort is not None:
        cohort_obj = cohort if isinstance(cohort, Cohort) else Cohort.objects.filter(name=cohort).first()
        if cohort_obj is None:
            raise SubregionError(f"no cohort named {cohort!r}")
    elif exam is not None:
        cohort_obj = exam.cohorts.order_by("pk").first() if hasattr(exam, "cohorts") else None
    if cohort_obj is not None:
        fit = list(cohort_obj.exams.select_related("patient__site").order_by("pk"))
    else:
        fit = [exam]
    if exam is not None and exam.pk not in {e.pk for e in fit}:
        raise SubregionError(f"exam {exam.pk} is not in cohort {cohort_obj.name!r}")
    return cohort_obj, fit, ([exam] if exam is not None else fit)


def _scanner_transform(exam: Exam) -> tuple[np.ndarray | None, str]:
    """MNI mm -> scanner mm of the exam's T1c (navigation reference), from its preparation."""
    from ml.registration.transform import Transform

    for kind in ("t1c", "t1", "flair", "pet_static"):
        vol = exam.volumes.filter(kind=kind, space="common").first()
        reg = ((vol.metadata or {}).get("registration") or {}) if vol is not None else {}
        if reg.get("transform"):
            return Transform.from_dict(reg["transform"]).matrix, kind
    return None, ""


def _habitat_words(means: dict[str, float], cohort_means: dict[str, float]) -> str:
    """A habitat in words from its mean PET parameters compared with the cohort's tumour voxels."""
    parts = []
    if "ttp_min" in means and means["ttp_min"] is not None:
        rel = "early" if means["ttp_min"] < cohort_means.get("ttp_min", means["ttp_min"]) else "late"
        parts.append(f"{rel} peak (TTP {means['ttp_min']:.1f} min)")
    if "tbr" in means and means["tbr"] is not None:
        rel = "high" if means["tbr"] >= cohort_means.get("tbr", means["tbr"]) else "low"
        parts.append(f"{rel} uptake (TBR {means['tbr']:.1f})")
    if "slope" in means and means["slope"] is not None:
        parts.append("rising" if means["slope"] > 0 else "falling" if means["slope"] < 0 else "flat")
    return ", ".join(parts)


def _seg_zip(region_2mm: np.ndarray, exam: Exam, method: str, tmp: Path) -> bytes | None:
    """DICOM SEG of a common-grid region on the exam's native T1c grid, zipped with the minimal T1c
    series it references; None when the exam has no native T1c or registration."""
    from ml.io.grid import common_grid
    from ml.io.nifti import load_nifti
    from ml.registration.transform import Transform
    from ml.subregions.export import write_region_seg

    native = exam.volumes.filter(kind="t1c", space="native").first()
    common = exam.volumes.filter(kind="t1c", space="common").first()
    reg = ((common.metadata or {}).get("registration") or {}) if common is not None else {}
    if native is None or not reg.get("transform"):
        return None
    t1c = load_nifti(media_path(native.file.name))
    scanner_from_mni = Transform.from_dict(reg["transform"]).matrix
    grid = common_grid(DISPLAY_VOXEL_MM)
    # each native voxel centre -> MNI -> nearest common-grid voxel
    m = np.linalg.inv(grid.affine) @ np.linalg.inv(scanner_from_mni) @ t1c.affine
    shape = t1c.array.shape[:3]
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    c = np.rint(m[:3, :3].astype(np.float32) @ ijk + m[:3, 3:4].astype(np.float32)).astype(np.int64)
    inside = np.all((c >= 0) & (c < np.array(region_2mm.shape)[:, None]), axis=0)
    native_region = np.zeros(ijk.shape[1], bool)
    native_region[inside] = region_2mm[c[0, inside], c[1, inside], c[2, inside]] > 0
    native_region = native_region.reshape(shape)
    if not native_region.any():
        return None
    out = tmp / "seg" / "target_seg.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_region_seg(native_region, t1c.affine, out, source_values=t1c.array[..., 0] if t1c.array.ndim == 4
                     else t1c.array, method=method, label="Biopsy target")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(out.parent.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(out.parent)), date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def _marker_model(stacks: list, btv: list, random_state: int | None) -> tuple[Any, str, str]:
    """The marker model on the labelled exams, or (None, "", reason) without two classes.

    The mean-pooled logistic model, whose exact voxel attribution (what Integrated Gradients gives for
    a linear model) hit the true aggressive subregion most often in bench_subregions (5 mm margin:
    80.5 % vs 77.5 % for the multiple-instance model and 71.0 % for the SUVmax hotspot)."""
    from ml.subregions.aggressiveness import MarkerAttributionModel
    from ml.subregions.signature import encode_marker

    for marker in MARKER_PREFERENCE:
        y = encode_marker(marker, [s.meta.get(marker, "n/a") for s in stacks])
        ok = np.isfinite(y)
        if ok.sum() >= 4 and min((y[ok] == 1).sum(), (y[ok] == 0).sum()) >= 2:
            idx = np.flatnonzero(ok)
            model = MarkerAttributionModel(C=1.0, random_state=random_state).fit([btv[i] for i in idx],
                                                                                 y[idx].astype(int))
            return model, marker, (f"voxel attribution of a mean-pooled logistic model of "
                                   f"{MARKER_WORDING[marker]} fitted on {len(idx)} exams of the cohort "
                                   f"(TBR >= {BTV_MIN_TBR:g} voxels; in-sample)")
    return None, "", ("heuristic (no WHO grade or IDH labels in two classes): local TBR high and local TTP "
                      "early, standardised")


def _heuristic_map(stack, feats, affine) -> np.ndarray:
    from ml.subregions.target import smooth_in_mask

    m = np.asarray(stack.masks["tumor"]) > 0
    tbr = smooth_in_mask(np.asarray(stack.image[2], float), m, affine, 8.0)
    score = (tbr - tbr[m].mean()) / max(tbr[m].std(), 1e-9)
    if stack.ttp_min is not None:
        t = np.asarray(stack.ttp_min, float)
        t = np.where(np.isfinite(t), t, np.nanmedian(t[m]))
        ttp = smooth_in_mask(t, m, affine, 8.0)
        score = score - (ttp - ttp[m].mean()) / max(ttp[m].std(), 1e-9)
    return np.where(m, score, np.nan).astype(np.float32)


def _target_dict(t, *, truth: np.ndarray | None, dist_truth: np.ndarray | None,
                 scanner_from_mni: np.ndarray | None, scanner_kind: str, voxel_mm: float) -> dict:
    mni = np.array([*t.point_mm, 1.0])
    out = {
        "method": t.method, "voxel": list(t.voxel), "voxel_mm": voxel_mm,
        "mni_mm": [round(float(v), 2) for v in t.point_mm],
        "scanner_mm": ([round(float(v), 2) for v in (scanner_from_mni @ mni)[:3]]
                       if scanner_from_mni is not None else None),
        "scanner_reference": scanner_kind,
        "margin_mm": t.margin_mm, "border_distance_mm": round(t.border_distance_mm, 2),
        "radius_mm": t.radius_mm, "fallback": bool(t.fallback), "note": t.note,
        "region_ml": round(float(t.region.sum()) * voxel_mm ** 3 / 1000.0, 3),
        "hit": None, "distance_mm": None,
    }
    if truth is not None and dist_truth is not None:
        out["hit"] = bool(truth[t.voxel])
        out["distance_mm"] = round(float(dist_truth[t.voxel]), 2)
    return out


def subregions_map(*, cohort: str | Cohort | None = None, exam: Exam | None = None, model_version=None,
                   k: int | None = None, margin_mm: float = 5.0, radius_mm: float = 5.0,
                   voxel_mm: float | None = None, user=None, progress: Progress | None = None,
                   random_state: int | None = 0) -> SubregionReport:
    """Habitats, aggressiveness map and biopsy targets of a cohort's (or one exam's) prepared exams.

    Args:
        cohort: cohort (name or row) whose tumour voxels the habitats and the marker model are fitted on.
        exam: map only this exam (fitted on ``cohort``, or on the exam's first cohort when None).
        model_version: a foundation encoder (its embeddings join the features), or None for the
            PET dynamics only.
        k: number of habitats, None to choose it by BIC in 2..5.
        margin_mm: safety margin of the targets from the tumour border (>= 0).
        radius_mm: radius of the target region.
        voxel_mm: analysis grid (the encoder's by default, else 4 mm); maps are stored at 2 mm.
        user: who ran it (audit, ``created_by``).
        progress: ``progress(percent, message)``.
        random_state: seed of the habitat and marker models.

    Raises:
        SubregionError: bad arguments, no mappable exam, or too few tumour voxels.
    """
    from scipy import ndimage as ndi

    from apps.registry.foundation import FoundationError, exam_stack
    from ml.io.grid import common_grid
    from ml.io.nifti import nifti_bytes
    from ml.subregions.habitats import (
        CONTEXT_FEATURES,
        DYNAMIC_FEATURES,
        HabitatModel,
        habitat_volume,
        pooled_frame,
        voxel_features,
    )
    from ml.subregions.signature import habitat_signature
    from ml.subregions.target import earliest_ttp_target, map_target, suvmax_target

    report = progress or _noop
    if margin_mm < 0 or not math.isfinite(margin_mm):
        raise SubregionError(f"margin_mm must be a finite number >= 0, got {margin_mm}")
    if k is not None and not 1 <= int(k) <= 8:
        raise SubregionError(f"k must be between 1 and 8, got {k}")
    if model_version is not None and model_version.family != "foundation":
        raise SubregionError(f"{model_version} is a {model_version.family} model, not a foundation encoder")
    cohort_obj, fit_exams, map_exams = _select(cohort, exam)
    key = mapping_key(model_version)
    if voxel_mm is None:
        voxel_mm = 4.0
        if model_version is not None:
            cfg = model_version.config or {}
            voxel_mm = float((cfg.get("platform") or {}).get("voxel_mm") or (cfg.get("encoder") or {}).get("voxel_mm")
                             or 4.0)
    factor = int(round(voxel_mm / DISPLAY_VOXEL_MM))
    if voxel_mm not in (2.0, 4.0):
        raise SubregionError(f"voxel_mm must be 2 or 4, got {voxel_mm:g}")

    # 1. stacks and features of the exams the models are fitted on
    stacks, skipped = [], []
    for i, ex in enumerate(fit_exams):
        report(2 + 20.0 * i / max(1, len(fit_exams)), f"Channel stack of exam {ex.pk} ({i + 1}/{len(fit_exams)})")
        try:
            s = exam_stack(exam=ex, voxel_mm=voxel_mm)
        except FoundationError as exc:
            skipped.append({"exam": ex.pk, "reason": str(exc)})
            continue
        if "tumor" not in s.masks or not np.any(s.masks["tumor"]):
            skipped.append({"exam": ex.pk, "reason": "no tumour VOI on the common grid"})
            continue
        stacks.append((ex, s))
    if not stacks:
        raise SubregionError("no exam could be mapped: " + "; ".join(s["reason"] for s in skipped[:3]))
    if not any(ex.pk in {m.pk for m in map_exams} for ex, _ in stacks):
        raise SubregionError(f"exam {map_exams[0].pk} cannot be mapped: "
                             + "; ".join(s["reason"] for s in skipped if s["exam"] == map_exams[0].pk))
    embeddings = _embeddings(model_version, [ex for ex, _ in stacks], report) if model_version else {}
    has_ttp = all(s.ttp_min is not None for _, s in stacks)
    dynamic = DYNAMIC_FEATURES if has_ttp else ("tbr", "suv_rel")
    feats, btv = [], []
    for ex, s in stacks:
        emb = embeddings.get(ex.pk)
        if model_version is not None and emb is None:
            raise SubregionError(f"exam {ex.pk} has no embedding by {model_version}")
        feats.append(voxel_features(s, embeddings=emb, dynamic=dynamic))
        extra = tuple(dynamic) + (CONTEXT_FEATURES if has_ttp else ())
        try:
            btv.append(voxel_features(s, embeddings=emb, dynamic=extra, min_tbr=BTV_MIN_TBR))
        except ValueError:  # no voxel above the threshold (low-uptake glioma): the whole tumour
            btv.append(voxel_features(s, embeddings=emb, dynamic=extra))

    # 2. habitats
    report(30, "Fitting the habitats on the cohort's tumour voxels")
    try:
        habitats = HabitatModel(method="gmm", k=k, k_range=(2, 3, 4, 5),
                                order_by="ttp_min" if has_ttp else "tbr", ascending=has_ttp,
                                random_state=random_state).fit(pooled_frame(feats, random_state=random_state))
    except ValueError as exc:
        raise SubregionError(f"habitats: {exc}") from exc
    n_hab = int(habitats.n_habitats_)
    means = habitats.means_frame()
    pet_cols = [c for c in means.columns if not str(c).startswith("emb_")]
    pooled = pooled_frame(feats, random_state=random_state)
    cohort_means = {c: float(pooled[c].mean()) for c in pet_cols}

    # 3. the aggressiveness map
    report(40, "Fitting the marker model")
    marker_model, marker, source = _marker_model([s for _, s in stacks], btv, random_state)

    scanner_cache: dict[int, tuple] = {}
    grid2 = common_grid(DISPLAY_VOXEL_MM)
    store = StoreTransaction()
    map_ids: list[int] = []
    signatures: dict[int, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="subregions-") as tmpdir:
            targets_of: dict[int, dict] = {}
            for n, ((ex, s), vf, bf) in enumerate(zip(stacks, feats, btv)):
                labels = habitat_volume(habitats, vf)
                signatures[ex.pk] = habitat_signature(labels, n_hab, suv=s.suv, ttp_min=s.ttp_min)
                if ex.pk not in {m.pk for m in map_exams}:
                    continue
                report(45 + 50.0 * n / len(stacks), f"Mapping exam {ex.pk} ({n + 1}/{len(stacks)})")
                tm = np.asarray(s.masks["tumor"]) > 0
                if marker_model is not None:
                    vol = marker_model.attribution_volume(bf)
                    vals = vol[tuple(vf.ijk.T)]
                    agg = vf.to_volume(np.where(np.isfinite(vals), vals, 0.0), fill=np.nan)
                else:
                    agg = _heuristic_map(s, vf, s.affine)
                kw = {"margin_mm": margin_mm, "radius_mm": radius_mm}
                found = {"map": map_target(agg, tm, s.affine, method="map", **kw),
                         "suvmax": suvmax_target(s.suv, tm, s.affine, **kw)}
                if s.ttp_min is not None:
                    found["earliest_ttp"] = earliest_ttp_target(s.ttp_min, tm, s.affine,
                                                                random_state=random_state, **kw)
                truth = np.asarray(s.masks["aggressive"]) > 0 if "aggressive" in s.masks else None
                if truth is not None and not truth.any():
                    truth = None
                dist = (ndi.distance_transform_edt(~truth, sampling=[voxel_mm] * 3) if truth is not None else None)
                if ex.pk not in scanner_cache:
                    scanner_cache[ex.pk] = _scanner_transform(ex)
                scanner, ref_kind = scanner_cache[ex.pk]
                targets = {name: _target_dict(found[name], truth=truth, dist_truth=dist, scanner_from_mni=scanner,
                                              scanner_kind=ref_kind, voxel_mm=voxel_mm)
                           for name in TARGET_METHODS if name in found}
                targets_of[ex.pk] = targets
                # files on the 2 mm common grid
                hab_name, hab_sha = store.put_bytes(
                    nifti_bytes(_upsample(labels, factor).astype(np.int16), grid2.affine, dtype=np.int16),
                    category="subregions", suffix=".nii.gz")
                agg_name, agg_sha = store.put_bytes(
                    nifti_bytes(np.nan_to_num(_upsample(agg, factor)).astype(np.float32), grid2.affine),
                    category="subregions", suffix=".nii.gz")
                region2 = _upsample(found["map"].region.astype(np.uint8), factor)
                reg_name, reg_sha = store.put_bytes(nifti_bytes(region2, grid2.affine, dtype=np.uint8),
                                                    category="subregions", suffix=".nii.gz")
                seg_bytes = _seg_zip(region2, ex, "learned map", Path(tmpdir) / str(ex.pk))
                seg_name, seg_sha = ("", "")
                if seg_bytes is not None:
                    seg_name, seg_sha = store.put_bytes(seg_bytes, category="subregions", suffix=".zip")
                summary = []
                for h in range(n_hab):
                    hm = {c: _json_float(means.loc[h, c]) for c in pet_cols}
                    summary.append({"habitat": h + 1, "fraction": _json_float(signatures[ex.pk][f"frac_h{h}"]),
                                    "suv_mean": _json_float(signatures[ex.pk][f"suvmean_h{h}"]),
                                    "ttp_min": _json_float(signatures[ex.pk].get(f"ttp_h{h}")),
                                    "cohort_means": hm, "words": _habitat_words(hm, cohort_means)})
                fields = {
                    "model_version": model_version, "cohort": cohort_obj, "n_habitats": n_hab,
                    "margin_mm": float(margin_mm), "voxel_mm": float(voxel_mm), "features": list(vf.frame.columns),
                    "habitats": hab_name, "habitats_sha256": hab_sha, "aggressiveness": agg_name,
                    "aggressiveness_sha256": agg_sha, "region": reg_name, "region_sha256": reg_sha,
                    "seg": seg_name, "seg_sha256": seg_sha,
                    "signature": {c: _json_float(v) for c, v in signatures[ex.pk].items()},
                    "habitat_summary": summary, "targets": targets,
                    "aggressiveness_source": source[:300], "created_by": user,
                }
                with transaction.atomic():
                    row, _ = SubregionMap.objects.update_or_create(exam=ex, key=key, defaults=fields)
                map_ids.append(row.pk)
        analysis_id = None
        if cohort_obj is not None and exam is None:
            report(96, "Association of the habitat signature with the markers")
            analysis_id = _cohort_analysis(cohort_obj, key, model_version, habitats, [ex for ex, _ in stacks],
                                           signatures, marker=marker, source=source, margin_mm=margin_mm,
                                           random_state=random_state)
        audit_record(action="subregions.map", actor=user, target=cohort_obj or map_exams[0],
                     details={"key": key, "maps": map_ids, "k": n_hab, "margin_mm": margin_mm,
                              "skipped": [s["exam"] for s in skipped]})
    except BaseException:
        store.rollback()
        raise
    store.release()
    report(100, f"{len(map_ids)} exams mapped")
    return SubregionReport(key=key, maps=map_ids, skipped=skipped, n_habitats=n_hab, analysis=analysis_id,
                           aggressiveness_source=source)


def _cohort_analysis(cohort: Cohort, key: str, model_version, habitats, exams: list[Exam],
                     signatures: dict[int, dict], *, marker: str, source: str, margin_mm: float,
                     random_state: int | None) -> int:
    """Signature vs markers on one exam per patient (initial diagnosis preferred), stored."""
    import pandas as pd

    from ml.subregions.signature import marker_association

    chosen: dict[int, Exam] = {}
    for ex in sorted(exams, key=lambda e: (e.timepoint != "initial_diagnosis", e.day, e.pk)):
        chosen.setdefault(ex.patient_id, ex)
    picked = sorted(chosen.values(), key=lambda e: e.pk)
    sig = pd.DataFrame([signatures[e.pk] for e in picked], index=[str(e.pk) for e in picked])
    markers = pd.DataFrame([{"idh": e.patient.idh or "n/a", "codeletion_1p19q": e.patient.codeletion_1p19q or "n/a",
                             "who_grade": str(e.patient.who_grade) if e.patient.who_grade else "n/a"}
                            for e in picked], index=sig.index)
    rows: list[dict] = []
    if len(picked) >= 6:
        res = marker_association(sig, markers, n_boot=500, min_group=3, random_state=random_state)
        for (mk, feat), r in res.table.iterrows():
            rows.append({"marker": mk, "feature": feat, **{c: _json_float(v) for c, v in r.items()}})
    means = habitats.means_frame()
    fields = {
        "model_version": model_version, "n_habitats": int(habitats.n_habitats_),
        "criterion": {str(k): _json_float(v) for k, v in habitats.criterion_.items()},
        "habitat_means": [{c: _json_float(means.loc[h, c]) for c in means.columns if not str(c).startswith("emb_")}
                          for h in range(int(habitats.n_habitats_))],
        "association": rows, "n_exams": len(picked), "exams": [e.pk for e in picked],
        "config": {"marker_model": marker, "aggressiveness_source": source, "margin_mm": margin_mm,
                   "random_state": random_state, "features": list(habitats.feature_names_in_)[:50]},
    }
    with transaction.atomic():
        row, _ = SubregionCohortAnalysis.objects.update_or_create(cohort=cohort, key=key, defaults=fields)
    return row.pk
