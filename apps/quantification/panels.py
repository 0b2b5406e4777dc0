"""The quantification panel of the exam page: parameter table, TAC plot, viewer with maps."""
from django.urls import reverse

from apps.cohorts.models import Mask

MRI_BASES = ("t1c", "t1", "flair", "t2")  # the base image under the PET, by preference


def _pet_window(pet, quant) -> dict:
    """Window the fused PET from TBR 1.6 (the biological tumour volume threshold) to SUVmax, in the
    stored units, so healthy brain stays uncoloured; NiiVue's own min/max otherwise."""
    background = (quant.config.get("static") or {}).get("background_mean") if quant else None
    if not background or quant.suv_max <= 0:
        return {}
    per_suv = 1.0 / pet.suv_factor if pet.units == "Bq/mL" and pet.suv_factor else 1.0
    return {"cal_min": round(1.6 * background * per_suv, 4), "cal_max": round(quant.suv_max * per_suv, 4)}


def quantification_panel(exam, user) -> dict | None:
    quant = getattr(exam, "quantification", None)
    mri = {v.kind: v for v in exam.volumes.filter(space="native", kind__in=MRI_BASES)}
    base = next((mri[k] for k in MRI_BASES if k in mri), None)
    pet = exam.volumes.filter(space="native", kind="pet_static").first()
    viewer = None
    if pet is not None:
        volumes = []
        if base is not None:
            volumes.append({"url": reverse("cohorts:volume-file", args=[base.pk]), "name": base.kind,
                            "filename": f"{base.kind}.nii.gz", "colormap": "gray"})
        volumes.append({"url": reverse("cohorts:volume-file", args=[pet.pk]), "name": f"PET ({pet.units})",
                        "filename": "pet.nii.gz", "colormap": "warm", "opacity": 0.6, **_pet_window(pet, quant)})
        overlays = []
        tumor = Mask.objects.filter(exam=exam, kind="tumor", space="native", grid=pet).first()
        if tumor is not None:
            overlays.append({"url": reverse("cohorts:mask-file", args=[tumor.pk]), "name": "tumour VOI",
                             "filename": "tumor.nii.gz", "colormap": "red", "opacity": 0.0})
        if quant is not None and quant.ttp_map:
            overlays.append({"url": reverse("quantification:map", args=[exam.pk, "ttp"]), "name": "TTP map (min)",
                             "filename": "ttp.nii.gz", "colormap": "plasma", "opacity": 0.0})
        if quant is not None and quant.slope_map:
            overlays.append({"url": reverse("quantification:map", args=[exam.pk, "slope"]),
                             "name": "slope map (SUV/h)", "filename": "slope.nii.gz", "colormap": "winter",
                             "opacity": 0.0})
        viewer = {"volumes": volumes, "overlays": overlays, "sliceType": "multiplanar", "height": 420}
    return {"template": "quantification/_exam_panel.html", "quant": quant, "viewer_config": viewer,
            "radiomics": exam.radiomics.all()}
