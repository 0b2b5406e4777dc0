"""The biopsy-target task of a diagnosis reader study with the subregion map (issue 13).

* Aided arm: the case viewer gets the exam's aggressiveness map (apps.subregions) as an overlay and
  the learned biopsy target as a "Go to" marker (:func:`aided_layers`), served through the reader's
  signed image URLs like the other layers (``what`` = :data:`AGGRESSIVENESS`); never in the unaided arm.
* Every reading's placed target is scored against the exam's true aggressive subregion on the
  common grid (``Mask`` kind ``aggressive``, space ``common``: the generator's truth or a site's
  mask): a hit when the target voxel lies inside it (:func:`reading_hit`).
* Results: hit rates unaided vs aided, Obuchowski-Rockette MRMC on the binary figure of merit
  (``reader_study.analysis.or_from_fom_covariance`` with the jackknife covariance of the hit
  proportion: the "sensitivity" FOM of :func:`reader_study.analysis.fom.binary_components` with
  every case positive, the hit being the positive decision), on the cases every reader read in
  both arms and whose truth is known (:func:`biopsy_results`).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from reader_study.models import Arm, Reading, Study, StudyCase, StudyTask

#: The signed-image ``what`` of the aggressiveness map.
AGGRESSIVENESS = "subregion:aggressiveness"
AI_TARGET_NAME = "AI biopsy target (learned map)"


def study_map(study: Study, exam_id: int):
    """The subregion map the aided arm shows: the one of the study's model version when it is a
    foundation encoder, else the exam's latest."""
    from apps.subregions.models import SubregionMap

    maps = SubregionMap.objects.filter(exam_id=exam_id)
    if study.model_version_id:
        own = maps.filter(model_version_id=study.model_version_id).first()
        if own is not None:
            return own
    return maps.order_by("-created_at", "-pk").first()


def aided_layers(config: dict | None, case: StudyCase, arm: str, url_for) -> dict | None:
    """Add the aggressiveness map and the learned target to a biopsy study's aided viewer (in place)."""
    if config is None or arm != Arm.AIDED or case.study.task != StudyTask.BIOPSY_TARGET:
        return config
    sm = study_map(case.study, case.exam_id)
    if sm is None:
        return config
    url = url_for(AGGRESSIVENESS)
    if url:
        from apps.subregions.panels import aggressiveness_layer

        config.setdefault("overlays", []).append(aggressiveness_layer(sm, url, name="AI aggressiveness",
                                                                      visible=True))
    target = (sm.targets or {}).get("map")
    if target:
        config.setdefault("markers", []).append({"name": AI_TARGET_NAME, "mm": target["mni_mm"], "color": "#39ff14"})
    return config


def aggressiveness_file(case: StudyCase) -> tuple[str, str] | None:
    """(stored name, sha256) of the map the aided arm shows, or None."""
    sm = study_map(case.study, case.exam_id)
    if sm is None or not sm.aggressiveness:
        return None
    return sm.aggressiveness.name, sm.aggressiveness_sha256


@lru_cache(maxsize=256)
def _truth_array(name: str) -> np.ndarray:
    from apps.cohorts.services.store import media_path
    from ml.io.nifti import load_nifti

    return load_nifti(media_path(name)).array > 0.5


def truth_mask_name(exam_id: int) -> str | None:
    """Stored name of the exam's true aggressive subregion on the 2 mm common grid, or None."""
    from apps.cohorts.models import Mask

    mask = (Mask.objects.filter(exam_id=exam_id, kind="aggressive", space="common", n_voxels__gt=0)
            .order_by("pk").first())
    return mask.file.name if mask is not None else None


def reading_hit(reading: Reading, truth_name: str | None = None) -> bool | None:
    """True when the reading's target voxel lies in the true aggressive subregion; None without a
    target or a truth mask."""
    if reading.target_voxel is None:
        return None
    name = truth_name if truth_name is not None else truth_mask_name(reading.case.exam_id)
    if name is None:
        return None
    truth = _truth_array(name)
    i, j, k = (int(v) for v in reading.target_voxel)
    if not (0 <= i < truth.shape[0] and 0 <= j < truth.shape[1] and 0 <= k < truth.shape[2]):
        return False
    return bool(truth[i, j, k])


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "—"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def hit_matrix(study: Study) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Hits (2 arms: unaided, aided; R readers; K cases) as 1/0, NaN where not read or no truth;
    with the reader codes, case codes and notes."""
    readings = list(Reading.objects.filter(reader__study=study, submitted_at__isnull=False)
                    .select_related("reader", "case"))
    readers = sorted({r.reader.code for r in readings})
    cases = sorted({r.case.code for r in readings})
    truth_names = {c.code: truth_mask_name(c.exam_id) for c in study.cases.filter(code__in=cases)}
    arms = (Arm.UNAIDED, Arm.AIDED)
    hits = np.full((2, len(readers), len(cases)), np.nan)
    notes = []
    no_truth = sorted(c for c, n in truth_names.items() if n is None)
    if no_truth:
        notes.append(f"{len(no_truth)} case(s) without a known aggressive subregion left out: {', '.join(no_truth)}")
    for r in readings:
        name = truth_names.get(r.case.code)
        if name is None or r.arm not in arms:
            continue
        hit = reading_hit(r, name)
        if hit is not None:
            hits[arms.index(r.arm), readers.index(r.reader.code), cases.index(r.case.code)] = float(hit)
    return hits, readers, cases, notes


def biopsy_results(study: Study, *, alpha: float = 0.05) -> dict[str, Any] | None:
    """Hit rates unaided vs aided with the MRMC (OR, RRRC) comparison; None for other study tasks."""
    from reader_study.analysis.covariance import jackknife_covariance
    from reader_study.analysis.fom import wilson_interval
    from reader_study.analysis.or_ import or_from_fom_covariance

    if study.task != StudyTask.BIOPSY_TARGET:
        return None
    hits, readers, cases, notes = hit_matrix(study)
    out: dict[str, Any] = {"fom": "hit rate (target inside the true aggressive subregion)", "notes": notes,
                           "arms": [], "readers": [], "mrmc": None, "n_readers": 0, "n_cases": 0}
    for t, arm in enumerate((Arm.UNAIDED, Arm.AIDED)):
        h = hits[t][np.isfinite(hits[t])]
        lo, hi = wilson_interval(float(h.sum()), float(len(h)), alpha)
        out["arms"].append({"arm": arm, "label": Arm(arm).label, "n_readings": int(len(h)),
                            "hits": int(h.sum()), "hit_rate": float(h.mean()) if len(h) else None,
                            "ci_low": lo, "ci_high": hi})
    for r, code in enumerate(readers):
        row = {"reader": code}
        for t, arm in enumerate((Arm.UNAIDED, Arm.AIDED)):
            h = hits[t, r][np.isfinite(hits[t, r])]
            row[arm] = float(h.mean()) if len(h) else None
            row[f"n_{arm}"] = int(len(h))
        out["readers"].append(row)
    # fully crossed part: readers who read every kept case in both arms
    complete_cases = np.all(np.isfinite(hits), axis=(0, 1))
    full = hits[:, :, complete_cases]
    k = int(complete_cases.sum())
    out["n_readers"], out["n_cases"] = len(readers), k
    if len(readers) < 2 or k < 3:
        notes.append(f"MRMC comparison needs 2 or more readers and 3 or more cases read by every reader in both "
                     f"arms (now {len(readers)} readers, {k} cases)")
        return out
    theta = full.mean(axis=2)
    jk = (k * theta[..., None] - full) / (k - 1)  # leave-one-case-out hit rates, exact for a proportion
    res = or_from_fom_covariance(theta, jackknife_covariance(jk), modalities=(Arm.UNAIDED, Arm.AIDED),
                                 readers=tuple(readers), n_negative=0, n_positive=k, fom="sensitivity",
                                 cov_method="jackknife", alpha=alpha)
    try:
        d = res.rrrc.difference(Arm.AIDED, Arm.UNAIDED)
        est, lo, hi = d.estimate, d.ci_low, d.ci_high
    except KeyError:
        d = res.rrrc.difference(Arm.UNAIDED, Arm.AIDED)
        est, lo, hi = -d.estimate, -d.ci_high, -d.ci_low
    out["mrmc"] = {"method": "Obuchowski-Rockette, readers and cases random (Hillis 2007 df), jackknife covariance",
                   "difference": float(est), "ci_low": float(lo), "ci_high": float(hi),
                   "df": float(d.df) if math.isfinite(d.df) else None, "p_value": float(d.p_value),
                   "p_text": _fmt_p(d.p_value),
                   "theta": {arm: [float(v) for v in theta[t]] for t, arm in enumerate((Arm.UNAIDED, Arm.AIDED))}}
    return out
