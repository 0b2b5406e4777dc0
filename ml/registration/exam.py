"""One exam to the template: PET -> MRI (rigid) and MRI -> MNI152 (affine), with QC figures.

The exam's MRI sequences share one world frame (one session on one scanner) and so do its PET
images; the PET is registered to the MRI and the MRI to the template, and every volume is
resampled once through its composed transform (``pet_from_template``, ``mri_from_template``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ml.io.grid import common_grid
from ml.registration.register import register_affine, register_rigid_mi
from ml.registration.resample import resample
from ml.registration.similarity import normalized_mutual_information
from ml.registration.template import mni_brain_mask, mni_template
from ml.registration.transform import Transform, compose

__all__ = ["POOR_NMI", "ExamRegistration", "common_template", "register_exam", "registration_similarity"]

#: NMI (32 bins, inside the template brain, on the common grid) below which a registration is
#: flagged as poor. Set between the registered synthetic exams and the same exams misregistered
#: by 5 degrees / 5 mm (docs/architecture.md gives the measured values).
POOR_NMI: dict[str, float] = {"mri_template": 1.04, "pet_mri": 1.04}


@dataclass(frozen=True)
class ExamRegistration:
    """The transforms of one exam (``None`` where an image is missing) and the time taken.

    Attributes:
        mri_from_template: template (common grid) world -> MRI world, affine.
        pet_from_mri: MRI world -> PET world, rigid.
        method: what was done, in words.
        seconds: wall time of the registrations.
    """

    mri_from_template: Transform | None
    pet_from_mri: Transform | None
    method: str
    seconds: float

    @property
    def pet_from_template(self) -> Transform | None:
        if self.mri_from_template is None:
            return Transform.identity() if self.pet_from_mri is None else None
        if self.pet_from_mri is None:
            return None
        return compose(self.mri_from_template, self.pet_from_mri)

    def for_volume(self, is_pet: bool) -> Transform:
        """The transform that puts a volume of the exam onto the common grid."""
        t = self.pet_from_template if is_pet else self.mri_from_template
        return t if t is not None else Transform.identity()

    def to_dict(self) -> dict[str, Any]:
        def d(t: Transform | None) -> dict | None:
            return None if t is None else t.to_dict()

        return {"method": self.method, "seconds": round(self.seconds, 2),
                "mri_from_template": d(self.mri_from_template), "pet_from_mri": d(self.pet_from_mri)}


def register_exam(*, mri=None, pet=None) -> ExamRegistration:
    """Register an exam: ``pet`` (static PET or the mean of a dynamic one) to ``mri`` (T1c
    preferred), ``mri`` to MNI152. Without an MRI nothing is registered (identity: the exam is
    assumed to be in template space, and the QC flags it).

    Raises:
        ValueError: an image that cannot be registered (constant, NaN, sheared axes).
    """
    start = time.perf_counter()
    if mri is None:
        return ExamRegistration(None, None, "none (no MRI): assumed in template space", 0.0)
    mri_from_template = register_affine(mri)
    pet_from_mri = None if pet is None else register_rigid_mi(pet, mri)
    method = "MRI -> MNI152 affine (Mattes MI)" + ("; PET -> MRI rigid (Mattes MI)" if pet is not None else "")
    return ExamRegistration(mri_from_template, pet_from_mri, method, time.perf_counter() - start)


@lru_cache(maxsize=2)
def common_template(voxel_mm: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 and its brain mask on the common grid (cached)."""
    grid = common_grid(voxel_mm)
    t1 = resample(mni_template(), Transform.identity(), grid)
    brain = resample(mni_brain_mask(), Transform.identity(), grid, kind="mask") > 0
    return t1, brain


def registration_similarity(*, mri: np.ndarray | None = None, pet: np.ndarray | None = None) -> dict[str, Any]:
    """NMI of the registered MRI with the template and of the registered PET with the MRI, inside
    the template brain on the common grid, each with its threshold and a ``poor`` flag.

    Args:
        mri: the registered MRI on the common grid (X, Y, Z).
        pet: the registered PET on the common grid (X, Y, Z; 4D: frame mean).
    """
    t1, brain = common_template()
    out: dict[str, Any] = {}
    if mri is not None:
        v = normalized_mutual_information(mri, t1, brain)
        out["mri_template"] = {"nmi": round(v, 4), "threshold": POOR_NMI["mri_template"],
                               "poor": bool(v < POOR_NMI["mri_template"])}
    if pet is not None and mri is not None:
        p = pet.mean(axis=3) if pet.ndim == 4 else pet
        v = normalized_mutual_information(p, mri, brain)
        out["pet_mri"] = {"nmi": round(v, 4), "threshold": POOR_NMI["pet_mri"], "poor": bool(v < POOR_NMI["pet_mri"])}
    out["poor"] = any(x["poor"] for x in out.values() if isinstance(x, dict)) or mri is None
    return out

