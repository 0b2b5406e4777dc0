"""Registration of an exam to the common grid (no Django): PET -> T1c, T1c -> MNI152.

Built on SimpleITK (ITK's registration framework; docs/architecture.md says why). World
coordinates are RAS+ mm as everywhere in AminoPET; SimpleITK's LPS is confined to
:mod:`ml.registration.sitk`.

Convention (ITK's): a :class:`Transform` maps points of the *fixed* space to the *moving* space,
``moving = T(fixed)``; resampling the moving image onto a grid of the fixed space looks it up at
``T(x)`` for every grid point ``x``. So ``register_rigid_mi(moving=pet, fixed=t1c)`` gives
``pet_from_t1c`` and ``register_affine(t1c, template)`` gives ``t1c_from_template``;
``compose(t1c_from_template, pet_from_t1c)`` is ``pet_from_template``, which
:func:`resample` uses to bring the PET onto the common (template) grid in one interpolation.

Entry points:
    register_rigid_mi(moving, fixed) -> Transform          PET -> T1c, Mattes mutual information
    register_affine(moving, template) -> Transform         T1c -> MNI152, rigid then affine
    compose(first, second) -> Transform
    resample(image, transform, grid, kind="image"|"mask"|"fraction") -> np.ndarray
    normalized_mutual_information(a, b, mask) -> float     the similarity figure of QC
    target_registration_error(true, estimated, points) -> np.ndarray (mm)
    register_exam(mri=..., pet=...) -> ExamRegistration, registration_similarity(...) -> QC dict
    mni_template() -> Image                               nilearn's MNI152 2009 T1, 2 mm
"""
from __future__ import annotations

from ml.registration.exam import (
    POOR_NMI,
    ExamRegistration,
    common_template,
    register_exam,
    registration_similarity,
)
from ml.registration.register import (
    register_affine,
    register_rigid_mi,
)
from ml.registration.resample import resample
from ml.registration.similarity import edge_map, normalized_mutual_information
from ml.registration.template import mni_brain_mask, mni_template
from ml.registration.transform import (
    Image,
    Transform,
    as_image,
    compose,
    landmarks_in_mask,
    target_registration_error,
)

__all__ = [
    "POOR_NMI",
    "ExamRegistration",
    "common_template",
    "register_exam",
    "registration_similarity",
    "Image",
    "Transform",
    "as_image",
    "compose",
    "edge_map",
    "landmarks_in_mask",
    "mni_brain_mask",
    "mni_template",
    "normalized_mutual_information",
    "register_affine",
    "register_rigid_mi",
    "resample",
    "target_registration_error",
]
