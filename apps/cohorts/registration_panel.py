"""The exam page's registration panel: similarity figures, the QC overlays of the registered
volumes and the coordinator's QC form on them (a failed registration is a failed common volume)."""
from __future__ import annotations

from apps.cohorts.models import Volume

MRI_NAMES = {"t1c": "T1c", "t1": "T1", "flair": "FLAIR", "t2": "T2"}
CAPTIONS = {
    "mri": "Contours of the registered {kind} (green) on the MNI152 template",
    "pet": "PET (SUV, hot colours) on the registered MRI",
}


def registration_panel(exam, user) -> dict | None:
    # prepare loads the imaging stack: imported here, not at start-up
    from apps.cohorts.services.prepare import registration_refusal

    commons = [v for v in exam.volumes.all() if v.space == "common" and (v.metadata or {}).get("registration")]
    if not commons:
        return None
    reg = commons[0].metadata["registration"]
    reference = reg.get("reference") or ""
    shown: list[tuple[Volume, str]] = []
    for vol in sorted(commons, key=lambda v: (not v.is_pet, v.kind)):
        if vol.kind == reference:
            shown.append((vol, CAPTIONS["mri"].format(kind=vol.get_kind_display())))
        elif vol.kind == "pet_static":
            shown.append((vol, CAPTIONS["pet"]))
    similarity = reg.get("similarity", {})
    figures = [(label, similarity[key]) for key, label in (("mri_template", f"{MRI_NAMES.get(reference, 'MRI')} vs MNI152 template"),
                                                          ("pet_mri", "PET vs MRI")) if key in similarity]
    return {"template": "cohorts/_registration_panel.html", "registration": reg, "figures": figures,
            "shown": shown, "failed": any(v.qc_status == "fail" for v, _ in shown),
            "refusal": registration_refusal(exam)}
