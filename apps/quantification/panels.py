"""The quantification panel of the exam page: parameter table, TAC plot, viewer with maps."""
from django.urls import reverse

from apps.cohorts.models import Mask


def quantification_panel(exam, user) -> dict | None:
    quant = getattr(exam, "quantification", None)
    base = exam.volumes.filter(space="native", kind__in=["t1c", "t1", "flair"]).order_by("kind").first()
    pet = exam.volumes.filter(space="native", kind="pet_static").first()
    viewer = None
    if pet is not None:
        volumes = []
        if base is not None:
            volumes.append({"url": reverse("cohorts:volume-file", args=[base.pk]), "name": base.kind,
                            "filename": f"{base.kind}.nii.gz", "colormap": "gray"})
        volumes.append({"url": reverse("cohorts:volume-file", args=[pet.pk]), "name": "PET (Bq/mL)",
                        "filename": "pet.nii.gz", "colormap": "warm", "opacity": 0.6})
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
