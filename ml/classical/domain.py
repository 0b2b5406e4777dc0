"""Where a model stands: the description of its development data, and warnings for new inputs.

A model is only known to work on data like its development data. :func:`describe_development`
records, at training, the sites, each feature's range (min/max and the 1st-99th percentiles), the
dynamic frame schedules, the PET voxel sizes and the background methods of the development exams;
:func:`domain_warnings` compares one exam against it and returns plain-language warnings (a site
not in the development data, a feature outside the range seen, an unseen frame schedule, voxel
size or background method). A prediction carries them wherever it is shown. Checking each input
against the training range is the simplest applicability-domain check (OECD QSAR principle 3;
Sahigara et al., Molecules 2012;17:4791, "range-based methods"); it flags what was never seen,
it does not prove the model wrong. No Django here.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["describe_development", "domain_warnings", "frame_schedule_key"]

#: Relative tolerance on voxel sizes (a scanner's 2.73 vs 2.734 mm is the same protocol).
VOXEL_TOLERANCE = 0.05


def frame_schedule_key(frame_duration_s: Iterable[float] | None) -> str | None:
    """A frame schedule as text, runs collapsed: ``"6x10s 4x30s 4x60s"``; None without dynamic PET."""
    if not frame_duration_s:
        return None
    runs: list[list[float]] = []
    for d in frame_duration_s:
        d = round(float(d), 1)
        if runs and runs[-1][1] == d:
            runs[-1][0] += 1
        else:
            runs.append([1, d])
    return " ".join(f"{n}x{d:g}s" for n, d in runs)


def describe_development(features: pd.DataFrame, context: pd.DataFrame) -> dict[str, Any]:
    """JSON-safe description of the development data (stored in the model's config).

    Args:
        features: the development exams' numeric features (one row per exam).
        context: same index, columns ``site``, ``frame_schedule`` (:func:`frame_schedule_key` or
            None), ``voxel_mm`` (list of 3 floats or None), ``background_source``.
    """
    ranges = {}
    for column in features.columns:
        values = pd.to_numeric(features[column], errors="coerce").dropna().to_numpy(dtype=float)
        if values.size == 0:
            continue
        ranges[column] = {"min": float(values.min()), "max": float(values.max()),
                          "p01": float(np.percentile(values, 1)), "p99": float(np.percentile(values, 99))}
    voxels = sorted({tuple(round(float(v), 3) for v in vx) for vx in context.get("voxel_mm", []) if vx})
    return {
        "n_exams": int(len(features)),
        "sites": sorted({str(s) for s in context.get("site", []) if s}),
        "feature_ranges": ranges,
        "frame_schedules": sorted({s for s in context.get("frame_schedule", []) if s}),
        "voxel_sizes_mm": [list(v) for v in voxels],
        "background_methods": sorted({str(s) for s in context.get("background_source", []) if s}),
    }


def _voxel_seen(voxel: Iterable[float], seen: Iterable[Iterable[float]]) -> bool:
    v = np.asarray(list(voxel), dtype=float)
    return any(np.allclose(v, np.asarray(s, dtype=float), rtol=VOXEL_TOLERANCE) for s in seen)


def domain_warnings(
    description: Mapping[str, Any] | None, features: Mapping[str, Any], context: Mapping[str, Any]
) -> list[dict[str, str]]:
    """Warnings for one exam against :func:`describe_development`'s description.

    Returns ``[{"code", "message"}]``: ``site_unseen``, ``feature_out_of_range``,
    ``frame_schedule_unseen``, ``voxel_size_unseen``, ``background_method_unseen``,
    ``no_description`` (a model registered before descriptions were stored).
    """
    if not description:
        return [{"code": "no_description",
                 "message": "This model was registered without a description of its development data; "
                            "whether this exam resembles it cannot be checked."}]
    out: list[dict[str, str]] = []
    site = context.get("site")
    if site and description.get("sites") and site not in description["sites"]:
        out.append({"code": "site_unseen",
                    "message": f"Site {site} was not in the model's development data "
                               f"({', '.join(description['sites'])}): its performance here is unknown."})
    for name, rng in description.get("feature_ranges", {}).items():
        value = features.get(name)
        if value is None or isinstance(value, str) or not math.isfinite(float(value)):
            continue
        if float(value) < rng["min"] or float(value) > rng["max"]:
            out.append({"code": "feature_out_of_range",
                        "message": f"{name} = {float(value):.3g} lies outside the range seen in development "
                                   f"({rng['min']:.3g} to {rng['max']:.3g})."})
    schedule = context.get("frame_schedule")
    if schedule and description.get("frame_schedules") and schedule not in description["frame_schedules"]:
        out.append({"code": "frame_schedule_unseen",
                    "message": f"Dynamic frame schedule {schedule} was not seen in development "
                               f"({'; '.join(description['frame_schedules'])})."})
    voxel = context.get("voxel_mm")
    if voxel and description.get("voxel_sizes_mm") and not _voxel_seen(voxel, description["voxel_sizes_mm"]):
        seen = "; ".join("x".join(f"{v:g}" for v in s) for s in description["voxel_sizes_mm"])
        out.append({"code": "voxel_size_unseen",
                    "message": f"PET voxel size {'x'.join(f'{float(v):.3g}' for v in voxel)} mm was not seen in "
                               f"development ({seen} mm)."})
    method = context.get("background_source")
    if method and description.get("background_methods") and method not in description["background_methods"]:
        out.append({"code": "background_method_unseen",
                    "message": f"Background region {method} was not used in development "
                               f"({', '.join(description['background_methods'])})."})
    return out
