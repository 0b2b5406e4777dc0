"""factory_boy factories for the Django models; volume and mask files are real small NIfTI files."""
from __future__ import annotations

import factory
import numpy as np
from django.contrib.auth import get_user_model

from apps.accounts.models import Membership, Site
from apps.cohorts.models import Cohort, Exam, Mask, Patient, Volume
from apps.cohorts.services.store import StoreTransaction
from apps.jobs.models import Job
from apps.quantification.models import ExamQuantification
from apps.registry.models import ModelVersion, Prediction
from ml.io.nifti import nifti_bytes


class SiteFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Site
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"site{n}")
    display_name = factory.LazyAttribute(lambda o: o.name.title())


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-aminopet-1")


def user_with(role: str | None, site: Site | None = None, **kwargs):
    user = UserFactory(**kwargs)
    if role == "admin":
        user.is_superuser = user.is_staff = True
        user.save()
    elif role:
        Membership.objects.create(user=user, site=site, role=role)
    return user


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Patient

    site = factory.SubFactory(SiteFactory)
    code = factory.Sequence(lambda n: f"P{n:03d}")
    idh = "wildtype"
    who_type = "glioblastoma"
    who_grade = 4


class ExamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Exam

    patient = factory.SubFactory(PatientFactory)
    code = factory.Sequence(lambda n: f"ses{n}")
    timepoint = "suspected_recurrence"
    day = 200
    diagnosis = "progression"
    diagnosis_basis = "histology"


def _stored_nifti(array: np.ndarray, dtype=np.float32) -> tuple[str, str]:
    return StoreTransaction().put_bytes(nifti_bytes(array, np.diag([2.0, 2.0, 2.0, 1.0]), dtype=dtype),
                                        category="volumes", suffix=".nii.gz")


class VolumeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Volume

    exam = factory.SubFactory(ExamFactory)
    kind = "pet_static"
    space = "native"
    units = "SUV"
    shape = [8, 8, 8]
    voxel_size = [2.0, 2.0, 2.0]
    affine = factory.LazyFunction(lambda: np.diag([2.0, 2.0, 2.0, 1.0]).tolist())

    @factory.lazy_attribute
    def file(self):
        return _stored_nifti(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))[0]

    @factory.lazy_attribute
    def thumbnail(self):
        return self.file  # any stored file serves for permission checks

    sha256 = factory.LazyAttribute(lambda o: o.file.rsplit("/", 1)[-1].split(".")[0])


class MaskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Mask

    grid = factory.SubFactory(VolumeFactory)
    exam = factory.SelfAttribute("grid.exam")
    kind = "tumor"
    n_voxels = 8
    volume_ml = 0.064

    @factory.lazy_attribute
    def file(self):
        m = np.zeros((8, 8, 8), np.uint8)
        m[2:4, 2:4, 2:4] = 1
        return _stored_nifti(m, np.uint8)[0]

    sha256 = factory.LazyAttribute(lambda o: o.file.rsplit("/", 1)[-1].split(".")[0])


class CohortFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Cohort

    name = factory.Sequence(lambda n: f"cohort-{n}")
    purpose = "training"

    @factory.post_generation
    def exams(self, create, extracted, **kwargs):
        if create and extracted:
            self.exams.add(*extracted)


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    kind = "prepare_exam"
    status = "failed"
    message = "boom"


def _png() -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return StoreTransaction().put_bytes(buf.getvalue(), category="plots", suffix=".png")[0]


class ExamQuantificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ExamQuantification

    exam = factory.SubFactory(ExamFactory)
    suv_max, suv_mean, tbr_max, tbr_mean, mtv_ml = 4.0, 2.0, 3.0, 1.5, 12.0
    background_source = "given"
    tac_plot = factory.LazyFunction(_png)


class ModelVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelVersion

    name = "progression-logreg"
    version = factory.Sequence(lambda n: n + 1)
    task = "progression"
    family = "classical"
    algorithm = "logreg"
    threshold = 0.5
    artifact = "models/none.joblib"
    plots = factory.LazyFunction(lambda: {"cv_roc": _png()})
    metrics = factory.LazyFunction(lambda: {"cv": {"name": "cross-validation", "n": 10, "n_positive": 5,
                                                    "brier": 0.2, "metrics": {"auc": {"estimate": 0.8,
                                                    "lower": 0.6, "upper": 0.9}}}})


class PredictionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Prediction

    model_version = factory.SubFactory(ModelVersionFactory)
    exam = factory.SubFactory(ExamFactory)
    probability, decision, label, threshold = 0.7, True, "progression", 0.5


# --- reader study -------------------------------------------------------------------------------

class StudyFactory(factory.django.DjangoModelFactory):
    """A draft study on a cohort (cases, readers and opening through reader_study.services)."""

    class Meta:
        model = "reader_study.Study"

    title = factory.Sequence(lambda n: f"Study {n}")
    slug = factory.Sequence(lambda n: f"study-{n}")
    question = "Progression or treatment-related change?"
    cohort = factory.SubFactory(CohortFactory)
    seed = 1234
    questionnaire = factory.LazyFunction(lambda: {"sus": True, "trust_items": ["I trust the AI."]})


def case_exam(site: Site, *, diagnosis: str, pet_value: float = 3.0) -> Exam:
    """A suspected-recurrence exam with common-grid T1c, PET (SUV) and tumour mask (small real NIfTI)."""
    exam = ExamFactory(patient__site=site, diagnosis=diagnosis,
                       diagnosis_basis="histology" if diagnosis == "progression" else "follow_up")
    VolumeFactory(exam=exam, kind="t1c", space="common", units="")
    pet = VolumeFactory(exam=exam, kind="pet_static", space="common", units="SUV", suv_factor=1.0)
    MaskFactory(grid=pet, space="common")
    return exam
