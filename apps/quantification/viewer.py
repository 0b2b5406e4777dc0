"""The viewer configuration of an exam: the JSON the NiiVue viewer (frontend/src/config.js) reads.

One builder for the exam page and the reading page. It shows the exam's prepared common-grid volumes
(2 mm, ml/io/grid.py): an MRI base (T1c, FLAIR as the alternative), the static PET in SUV fused on
top with a clinical window, the tumour VOI and the parametric maps as overlays (hidden until the
reader turns them on), an optional AI heat map, the dynamic PET with its frame times, and the
time-activity curves of the tumour VOI and the reference regions. The crosshair opens on the lesion:
the tumour's SUVmax voxel on the common grid the viewer shows (found once per pair of stored files;
``ExamQuantification.lesion_mm`` is the native-grid position, in scanner coordinates, used only when
the exam has no common-grid tumour mask).

Blinding: the configuration names layers by what they are ("T1c", "pet.nii.gz"), never by the site,
patient, exam code, day or stored file name; URLs come from the caller's ``url_for``, so the reading
page can pass signed, opaque reader URLs.

Every number the viewer shows carries its unit here (``unit``) and the window its basis
(``window_basis``).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from apps.cohorts.models import Exam, Mask, Volume
from apps.cohorts.services.store import media_path
from apps.quantification.lesion import lesion_position_mm

#: Lower end of the default PET window as a tumour-to-background ratio: 1.6 x the background's mean
#: SUV is the usual biological tumour volume threshold of amino-acid PET (Pauleit et al., Brain 2005;
#: the MTV threshold of ml.quant.static), so healthy brain stays uncoloured and what lights up is
#: tumour-like uptake. The upper end is the tumour SUVmax, so the hottest voxel saturates.
PET_WINDOW_MIN_TBR = 1.6
#: Upper end when the tumour is not above the lower end (SUVmax < 1.6 x background): a fixed TBR.
PET_WINDOW_FALLBACK_MAX_TBR = 2.5

#: MRI bases the reader can switch between, by preference (the first present is shown first).
MRI_BASES: dict[str, tuple[str, str]] = {
    "t1c": ("T1c", "T1-weighted MRI after contrast (signal intensity, arbitrary units)"),
    "flair": ("FLAIR", "T2-FLAIR MRI (signal intensity, arbitrary units)"),
    "t1": ("T1", "T1-weighted MRI (signal intensity, arbitrary units)"),
    "t2": ("T2", "T2-weighted MRI (signal intensity, arbitrary units)"),
}
#: Which bases are offered: T1c and FLAIR; T1 or T2 only when neither exists.
PREFERRED_BASES = ("t1c", "flair")

TAC_CURVES: dict[str, tuple[str, str]] = {
    "tumor": ("Tumour VOI", "#e0483a"),
    "background": ("Background (reference)", "#9aa5a6"),
    "striatum": ("Striatum (reference)", "#3c8fd6"),
}

UrlFor = Callable[[Any], str]


def _rounded(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


def _bases(common: dict[str, Volume], url_for: UrlFor) -> list[dict]:
    kinds = [k for k in PREFERRED_BASES if k in common] or [k for k in MRI_BASES if k in common][:1]
    return [
        {"key": kind, "url": url_for(common[kind]), "name": MRI_BASES[kind][0], "filename": f"{kind}.nii.gz",
         "colormap": "gray", "opacity": 1.0, "unit": "a.u.", "description": MRI_BASES[kind][1]}
        for kind in kinds
    ]


def load_nifti(path):
    """ml.io.nifti.load_nifti, imported when a configuration is first built from files (nibabel):
    not when the module is, so a web process does not load it before it needs it."""
    from ml.io.nifti import load_nifti as load

    return load(path)


def _array(obj: Volume | Mask) -> tuple[np.ndarray, np.ndarray]:
    data = load_nifti(media_path(obj.file.name))
    return data.array, data.affine


@lru_cache(maxsize=512)
def _common_grid_lesion(pet_name: str, tumor_name: str) -> tuple[tuple[float, float, float], float] | None:
    """The tumour SUVmax voxel found on the common-grid PET the viewer shows, and the SUV there (files
    are content-addressed, so a name always means the same bytes and the answer can be kept)."""
    suv = load_nifti(media_path(pet_name)).array
    mask = load_nifti(media_path(tumor_name))
    tumor = mask.array > 0.5
    if tumor.shape != suv.shape[:3] or not tumor.any():
        return None
    return tuple(lesion_position_mm(suv, tumor, mask.affine)), float(suv[tumor].max())


def _suv_reference(quant, pet: Volume, tumor: Mask | None, background: Mask | None) -> dict:
    """SUVmax of the tumour, background mean SUV and the lesion position, from the quantification
    when it has them, else measured on the common-grid PET and masks (rows quantified before)."""
    out: dict[str, Any] = {"suv_max": None, "background_mean": None, "lesion_mm": None, "source": None,
                           "displayed_suv_max": None}
    if quant is not None:
        out["suv_max"] = quant.suv_max
        out["background_mean"] = (quant.config.get("static") or {}).get("background_mean")
        out["lesion_mm"] = quant.lesion_mm
        out["source"] = "quantification"
    if tumor is not None:
        # The viewer shows the common grid (registered to the template): the crosshair opens on the
        # hottest tumour voxel there, so the read-out at the lesion is the SUVmax the reader sees.
        lesion = _common_grid_lesion(pet.file.name, tumor.file.name)
        if lesion is not None:
            out["lesion_mm"], out["displayed_suv_max"] = list(lesion[0]), lesion[1]
            out["source"] = out["source"] or "mask"
    if out["lesion_mm"] is not None and out["suv_max"] is not None and out["background_mean"]:
        return out
    if tumor is None:
        return out
    suv, affine = _array(pet)
    mask = _array(tumor)[0] > 0.5
    if mask.shape != suv.shape or not mask.any():
        return out
    if out["lesion_mm"] is None:
        out["lesion_mm"] = lesion_position_mm(suv, mask, affine)
        out["source"] = out["source"] or "mask"
    if out["suv_max"] is None:
        out["suv_max"] = float(suv[mask].max())
    if not out["background_mean"] and background is not None:
        bg = _array(background)[0] > 0.5
        if bg.shape == suv.shape and bg.any():
            out["background_mean"] = float(suv[bg].mean())
    return out


def _pet_window(ref: dict) -> dict:
    """The default PET window in SUV (see :data:`PET_WINDOW_MIN_TBR`); empty without a background."""
    bg, suv_max = ref["background_mean"], ref["suv_max"]
    if not bg or bg <= 0 or suv_max is None:
        return {"window_basis": "automatic (robust intensity range of the image)"}
    lo = PET_WINDOW_MIN_TBR * bg
    if suv_max > lo:
        hi, basis = suv_max, (f"from {PET_WINDOW_MIN_TBR} x background mean SUV (TBR {PET_WINDOW_MIN_TBR}) "
                              "to the tumour SUVmax")
    else:
        hi, basis = PET_WINDOW_FALLBACK_MAX_TBR * bg, (
            f"from TBR {PET_WINDOW_MIN_TBR} to TBR {PET_WINDOW_FALLBACK_MAX_TBR} (the tumour SUVmax lies below "
            f"TBR {PET_WINDOW_MIN_TBR})")
    return {"cal_min": _rounded(lo), "cal_max": _rounded(hi), "window_basis": basis}


def _tac(quant) -> dict | None:
    tacs = quant.tacs if quant is not None else None
    if not tacs or "tumor" not in tacs:
        return None
    curves = []
    for key, (name, color) in TAC_CURVES.items():
        tac = tacs.get(key)
        if not tac or not tac.get("values"):
            continue
        curves.append({
            "key": key, "name": name, "color": color,
            "t_min": [_rounded(t / 60.0, 3) for t in tac["mid_times_s"]],
            "values": [_rounded(v, 4) for v in tac["values"]],
        })
    return {"x_label": "time after injection", "x_unit": "min", "y_label": "mean SUV in the region",
            "y_unit": "SUV", "curves": curves}


def _dynamic(dynamic: Volume | None, url_for: UrlFor) -> dict | None:
    if dynamic is None or not dynamic.frame_start_s or not dynamic.frame_duration_s:
        return None
    start = np.asarray(dynamic.frame_start_s, dtype=float)
    duration = np.asarray(dynamic.frame_duration_s, dtype=float)
    if start.shape != duration.shape or len(dynamic.shape) != 4 or dynamic.shape[3] != start.size:
        return None
    return {
        "url": url_for(dynamic), "filename": "pet_dynamic.nii.gz", "name": "Dynamic PET", "unit": "SUV",
        "frames_mid_min": [_rounded(v) for v in (start + duration / 2) / 60.0],
        "frames_duration_min": [_rounded(v) for v in duration / 60.0],
        "description": "one frame at a time; its mid-time after injection in minutes",
    }


def exam_viewer_config(exam: Exam, *, url_for: UrlFor, heatmap_url: str | None = None) -> dict | None:
    """The viewer configuration of ``exam``, or None while it has no static PET on the common grid.

    Args:
        exam: the exam.
        url_for: ``url_for(obj) -> str`` for a :class:`Volume`, a :class:`Mask` or a tuple
            ``(exam, map_name)`` with ``map_name`` in ``("ttp", "slope")``. The exam page passes
            ordinary URLs (``cohorts:volume-file``, ``cohorts:mask-file``, ``quantification:map``),
            the reading page signed reader URLs.
        heatmap_url: URL of the AI heat map (NIfTI on the common grid) in the aided arm, else None.

    Returns:
        The JSON-ready configuration documented in frontend/README.md.
    """
    common = {v.kind: v for v in exam.volumes.filter(space="common")}
    pet = common.get("pet_static")
    bases = _bases(common, url_for)
    if pet is None or not bases:
        return None
    quant = getattr(exam, "quantification", None)
    masks = {m.kind: m for m in Mask.objects.filter(exam=exam, space="common", grid=pet)}
    tumor = masks.get("tumor")
    ref = _suv_reference(quant, pet, tumor, masks.get("background"))
    tracer = exam.tracer.strip() or "amino-acid"

    pet_layer = {
        "key": "pet", "url": url_for(pet), "name": f"{tracer} PET", "filename": "pet.nii.gz",
        "colormap": "warm", "opacity": 0.6, "unit": "SUV",
        "description": "static PET, standardised uptake value (body weight)",
        **_pet_window(ref),
    }
    overlays = []
    if tumor is not None:
        overlays.append({"key": "voi", "url": url_for(tumor), "name": "Tumour VOI", "filename": "voi.nii.gz",
                         "colormap": "red", "opacity": 0.4, "visible": False, "unit": "",
                         "description": "tumour volume of interest (1 inside, 0 outside)",
                         "cal_min": 0.5, "cal_max": 1.0})
    if quant is not None and quant.ttp_map:
        overlays.append({"key": "ttp", "url": url_for((exam, "ttp")), "name": "TTP map", "filename": "ttp.nii.gz",
                         "colormap": "plasma", "opacity": 0.6, "visible": False, "unit": "min",
                         "description": "time to peak of each voxel's time-activity curve (early peak: "
                                        "aggressive tumour)"})
    if quant is not None and quant.slope_map:
        overlays.append({"key": "slope", "url": url_for((exam, "slope")), "name": "Slope map",
                         "filename": "slope.nii.gz", "colormap": "green", "colormap_negative": "electric_blue",
                         "opacity": 0.6, "visible": False, "unit": "SUV/h",
                         "description": "late slope of each voxel's time-activity curve (green rising, "
                                        "blue falling)"})
    if heatmap_url:
        overlays.append({"key": "heatmap", "url": heatmap_url, "name": "AI heat map", "filename": "heatmap.nii.gz",
                         "colormap": "cool", "opacity": 0.5, "visible": False, "unit": "relevance (a.u.)",
                         "description": "where the model's evidence lies (relative, not a probability)"})

    config: dict[str, Any] = {
        "volumes": [bases[0], pet_layer],
        "bases": bases,
        "petIndex": 1,
        "overlays": overlays,
        "sliceType": "multiplanar",
        "crosshair": None,
        "markers": [],
    }
    if ref["lesion_mm"] is not None:
        mm = [_rounded(v, 2) for v in ref["lesion_mm"]]
        config["crosshair"] = mm
        config["lesion"] = {"mm": mm, "label": "tumour SUVmax", "suv_max": _rounded(ref["suv_max"], 2),
                            "unit": "SUV", "source": ref["source"],
                            "displayed_suv_max": (None if ref["displayed_suv_max"] is None
                                                  else _rounded(ref["displayed_suv_max"], 2))}
        config["markers"].append({"name": "Lesion (SUVmax)", "mm": mm, "color": "#ffd24a"})
    tac = _tac(quant)
    if tac is not None:
        config["tac"] = tac
    dynamic = _dynamic(common.get("pet_dynamic"), url_for)
    if dynamic is not None:
        config["dynamic"] = dynamic
    return config
