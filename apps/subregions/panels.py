"""The exam page's subregion panel and the habitat / target layers of its viewer."""
from __future__ import annotations

from functools import lru_cache

from django.urls import reverse

from apps.subregions.models import TARGET_METHODS, TARGET_WORDING, SubregionMap

#: Marker colours of the targets (CSS), the learned map first.
TARGET_COLORS = {"map": "#39ff14", "suvmax": "#ffd24a", "earliest_ttp": "#00d5ff"}
#: A cold colormap for the habitats, so they stand apart from the warm PET under them.
HABITAT_COLORMAP = "winter"


def _winter(x: float) -> str:
    """CSS colour of ``winter`` (blue -> green: RGB = (0, x, 1 - x/2), as matplotlib and NiiVue) at x."""
    x = max(0.0, min(1.0, x))
    return f"#00{int(255 * x):02x}{int(255 * (1 - x / 2)):02x}"


def habitat_colors(n: int) -> list[str]:
    """Legend colours of habitats 1..n as the overlay shows them (window 0.5 .. n + 0.5)."""
    return [_winter((h + 0.5) / n) for h in range(n)]


def target_text(method: str, t: dict) -> str:
    """``Biopsy target (learned map): x, y, z mm scanner; 5 mm from the tumour border``."""
    where = t.get("scanner_mm") or t["mni_mm"]
    frame = f"mm scanner ({t.get('scanner_reference') or 'T1c'})" if t.get("scanner_mm") else "mm MNI"
    text = (f"{TARGET_WORDING.get(method, method)}: {where[0]:.1f}, {where[1]:.1f}, {where[2]:.1f} {frame}; "
            f"{t['border_distance_mm']:.0f} mm from the tumour border")
    if t.get("fallback"):
        text += f" (tumour too small for the {t['margin_mm']:g} mm margin: deepest point)"
    return text


def latest_map(exam) -> SubregionMap | None:
    return (SubregionMap.objects.filter(exam=exam).select_related("model_version")
            .order_by("-created_at", "-pk").first())


#: The aggressiveness map is shown from this share of its maximum up: the upper part of the positive
#: values (where the map says "most aggressive"); zero (outside the tumour) and below are transparent.
AGGRESSIVENESS_SHOWN_FROM = 0.25


@lru_cache(maxsize=512)
def aggressiveness_window(name: str) -> tuple[float, float] | None:
    """``(cal_min, cal_max)`` of a stored aggressiveness map (content-addressed: a name always means the
    same bytes): from :data:`AGGRESSIVENESS_SHOWN_FROM` of its positive maximum to that maximum; None
    when it has no positive value. Without a window the viewer would stretch the whole map, zeros
    outside the tumour included, over the brain."""
    import numpy as np

    from apps.cohorts.services.store import media_path
    from ml.io.nifti import load_nifti

    values = load_nifti(media_path(name)).array
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
    if not top > 0:
        return None
    return AGGRESSIVENESS_SHOWN_FROM * top, top


def aggressiveness_layer(sm: SubregionMap, url: str, **extra) -> dict:
    """The viewer overlay of a mapping's aggressiveness map (exam page and the aided biopsy arm); a
    stored file that cannot be read (lost from the store) leaves the page up with a default window,
    and its own URL answers the error."""
    try:
        window = aggressiveness_window(sm.aggressiveness.name)
    except (OSError, ValueError):
        window = None
    lo, hi = window if window else (1e-4, 1.0)
    return {"key": "aggressiveness", "url": url, "filename": "aggressiveness.nii.gz", "colormap": "cool",
            "opacity": 0.6, "unit": "a.u.", "cal_min": lo, "cal_max": hi,
            "description": "where the map places the most aggressive tumour: the upper part of its positive "
                           "values (relative, not a probability)", **extra}


def subregion_layers(config: dict, exam, user) -> None:
    """The latest mapping's habitats (label overlay), aggressiveness map and target markers."""
    sm = latest_map(exam)
    if sm is None:
        return
    k = sm.n_habitats
    config["overlays"].append({
        "key": "habitats", "url": reverse("subregions:file", args=[sm.pk, "habitats"]), "name": "Habitats",
        "filename": "habitats.nii.gz", "colormap": HABITAT_COLORMAP, "opacity": 0.45, "visible": True,
        "unit": "habitat", "cal_min": 0.5, "cal_max": k + 0.5,
        "description": f"{k} tumour habitats (1 = earliest TTP); legend under the viewer",
    })
    config["overlays"].append(aggressiveness_layer(sm, reverse("subregions:file", args=[sm.pk, "aggressiveness"]),
                                                   name="Aggressiveness map", visible=False))
    for method in TARGET_METHODS:
        t = sm.targets.get(method)
        if t:
            config["markers"].append({"name": TARGET_WORDING[method], "mm": t["mni_mm"],
                                      "color": TARGET_COLORS[method]})


def subregions_panel(exam, user) -> dict | None:
    maps = list(SubregionMap.objects.filter(exam=exam).select_related("model_version", "cohort")
                .order_by("-created_at", "-pk"))
    if not maps:
        return None
    shown = maps[0]
    colors = habitat_colors(shown.n_habitats)
    habitats = [{**h, "color": colors[h["habitat"] - 1]} for h in shown.habitat_summary]
    targets = [{"method": m, "name": TARGET_WORDING[m], "color": TARGET_COLORS[m], "text": target_text(m, t), **t}
               for m in TARGET_METHODS if (t := shown.targets.get(m))]
    return {"template": "subregions/_exam_panel.html", "shown": shown, "others": maps[1:],
            "habitats": habitats, "targets": targets}
