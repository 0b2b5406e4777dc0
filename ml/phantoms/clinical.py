"""Clinical and molecular labels of synthetic glioma patients, drawn from published frequencies.

WHO CNS5 2021 classification of adult-type diffuse gliomas (Louis et al. 2021, Neuro-Oncol
23:1231): IDH-wildtype diffuse astrocytic tumours are glioblastomas, grade 4; IDH-mutant tumours
are oligodendrogliomas (1p/19q codeleted, grade 2-3) or astrocytomas (grade 2-4). 1p/19q is only
tested (and only codeleted) in IDH-mutant tumours; TERT promoter mutation is frequent in
glioblastoma and oligodendroglioma, rare in IDH-mutant astrocytoma; MGMT promoter methylation is
found in about 45 % of glioblastomas (Hegi et al. 2005, NEJM 352:997) and most IDH-mutant
gliomas. The proportions below are those of amino-acid PET cohorts (Ginet et al. 2020, EJNMMI
47:1381; Zaragori et al. 2020, EJNMMI Res 10:56), see ``docs/phantoms.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PatientLabels", "draw_labels", "P_IDH_MUTANT", "P_CODELETED_GIVEN_IDHMUT"]

#: Fraction of IDH-mutant tumours among adult diffuse gliomas referred for amino-acid PET.
P_IDH_MUTANT = 0.45
#: Fraction of 1p/19q codeleted (oligodendroglioma) among IDH-mutant gliomas.
P_CODELETED_GIVEN_IDHMUT = 0.40
#: Grade distributions by WHO 2021 type.
_GRADES = {
    "oligodendroglioma": ((2, 3), (0.65, 0.35)),
    "astrocytoma": ((2, 3, 4), (0.45, 0.35, 0.20)),
    "glioblastoma": ((4,), (1.0,)),
}
#: MGMT promoter methylation probability by type.
_P_MGMT = {"oligodendroglioma": 0.95, "astrocytoma": 0.85, "glioblastoma": 0.45}
#: TERT promoter mutation probability by type.
_P_TERT = {"oligodendroglioma": 0.95, "astrocytoma": 0.07, "glioblastoma": 0.78}
#: Age at diagnosis (mean, SD) by type.
_AGE = {"oligodendroglioma": (45.0, 12.0), "astrocytoma": (38.0, 11.0), "glioblastoma": (62.0, 11.0)}
#: Probability of true progression at the suspected-recurrence exam, by grade.
_P_PROGRESSION = {2: 0.60, 3: 0.65, 4: 0.70}
#: Median days from diagnosis to the suspected-recurrence exam, by grade (PFS-like).
_DAYS = {2: 1100.0, 3: 700.0, 4: 260.0}


@dataclass(frozen=True)
class PatientLabels:
    """Clinical truth of one patient (``participants.tsv`` and ``sessions.tsv`` columns).

    Attributes:
        participant_id: ``sub-<label>``.
        site: site name.
        age: age at diagnosis (years).
        sex: ``"M"`` or ``"F"``.
        weight_kg: body weight (kg), used for SUV.
        idh: ``"mutant"`` or ``"wildtype"``.
        codeletion_1p19q: ``"codeleted"``, ``"intact"`` or ``"n/a"`` (IDH-wildtype: not tested).
        mgmt: ``"methylated"`` or ``"unmethylated"``.
        tertp: ``"mutant"`` or ``"wildtype"``.
        who_grade: 2, 3 or 4.
        who_type: ``"astrocytoma"``, ``"oligodendroglioma"`` or ``"glioblastoma"``.
        diagnosis: at suspected recurrence, ``"progression"`` or ``"treatment_related"``.
        diagnosis_basis: ``"histology"`` or ``"follow_up"``.
        recurrence_day: day of the suspected-recurrence exam after the first exam.
        resected: whether surgery left a resection cavity before the second exam.
    """

    participant_id: str
    site: str
    age: int
    sex: str
    weight_kg: float
    idh: str
    codeletion_1p19q: str
    mgmt: str
    tertp: str
    who_grade: int
    who_type: str
    diagnosis: str
    diagnosis_basis: str
    recurrence_day: int
    resected: bool


def draw_labels(rng: np.random.Generator, *, participant_id: str, site: str) -> PatientLabels:
    """Draw one patient's labels.

    Args:
        rng: the patient's random generator.
        participant_id: ``sub-<label>``.
        site: site name.

    Returns:
        The patient's :class:`PatientLabels`.
    """
    idh_mut = bool(rng.random() < P_IDH_MUTANT)
    if idh_mut:
        codel = bool(rng.random() < P_CODELETED_GIVEN_IDHMUT)
        who_type = "oligodendroglioma" if codel else "astrocytoma"
    else:
        codel = False
        who_type = "glioblastoma"
    grades, probs = _GRADES[who_type]
    grade = int(rng.choice(grades, p=probs))
    mean_age, sd_age = _AGE[who_type]
    age = int(np.clip(round(rng.normal(mean_age, sd_age)), 18, 88))
    sex = "M" if rng.random() < (0.60 if who_type == "glioblastoma" else 0.55) else "F"
    weight = float(np.clip(rng.normal(80.0 if sex == "M" else 66.0, 13.0), 45.0, 135.0))
    progression = bool(rng.random() < _P_PROGRESSION[grade])
    # Histology is obtained when the patient is re-operated, more often for progression.
    histology = bool(rng.random() < (0.45 if progression else 0.25))
    day = int(np.clip(rng.lognormal(np.log(_DAYS[grade]), 0.45), 60, 4000))
    return PatientLabels(
        participant_id=participant_id,
        site=site,
        age=age,
        sex=sex,
        weight_kg=round(weight, 1),
        idh="mutant" if idh_mut else "wildtype",
        codeletion_1p19q=("codeleted" if codel else "intact") if idh_mut else "n/a",
        mgmt="methylated" if rng.random() < _P_MGMT[who_type] else "unmethylated",
        tertp="mutant" if rng.random() < _P_TERT[who_type] else "wildtype",
        who_grade=grade,
        who_type=who_type,
        diagnosis="progression" if progression else "treatment_related",
        diagnosis_basis="histology" if histology else "follow_up",
        recurrence_day=day,
        resected=bool(rng.random() < (0.75 if grade >= 3 else 0.6)),
    )
