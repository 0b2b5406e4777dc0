"""The imaging cohort: patients, exams, volumes, masks, labels and named cohorts.

Patients are pseudonymous (a code unique per site, never a name) and exams carry a day offset
instead of a date. Files live in MEDIA_ROOT under content-addressed names (their SHA-256).
Constraints are in the database, not only in Python.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.accounts.models import Site


class Idh(models.TextChoices):
    MUTANT = "mutant"
    WILDTYPE = "wildtype"


class Codeletion(models.TextChoices):
    CODELETED = "codeleted"
    INTACT = "intact"


class Mgmt(models.TextChoices):
    METHYLATED = "methylated"
    UNMETHYLATED = "unmethylated"


Tertp = Idh  # same values: mutant / wildtype


class WhoType(models.TextChoices):
    ASTROCYTOMA = "astrocytoma", "Astrocytoma, IDH-mutant"
    OLIGODENDROGLIOMA = "oligodendroglioma", "Oligodendroglioma, IDH-mutant and 1p/19q-codeleted"
    GLIOBLASTOMA = "glioblastoma", "Glioblastoma, IDH-wildtype"
    OTHER = "other", "Other"


class Patient(models.Model):
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="patients")
    code = models.CharField(max_length=64, help_text="Pseudonymous code, unique per site. Never a name.")
    sex = models.CharField(max_length=1, blank=True, choices=[("M", "M"), ("F", "F"), ("O", "O")])
    age = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Age at first exam, years")
    idh = models.CharField(max_length=16, choices=Idh.choices, blank=True)
    codeletion_1p19q = models.CharField(max_length=16, choices=Codeletion.choices, blank=True)
    mgmt = models.CharField(max_length=16, choices=Mgmt.choices, blank=True)
    tertp = models.CharField(max_length=16, choices=Tertp.choices, blank=True)
    who_type = models.CharField(max_length=32, choices=WhoType.choices, blank=True)
    who_grade = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["site__name", "code"]
        constraints = [
            models.UniqueConstraint(fields=["site", "code"], name="patient_code_unique_per_site"),
            models.CheckConstraint(condition=Q(idh__in=["", *Idh.values]), name="patient_idh_valid"),
            models.CheckConstraint(
                condition=Q(codeletion_1p19q__in=["", *Codeletion.values]), name="patient_1p19q_valid"
            ),
            models.CheckConstraint(condition=Q(mgmt__in=["", *Mgmt.values]), name="patient_mgmt_valid"),
            models.CheckConstraint(condition=Q(tertp__in=["", *Tertp.values]), name="patient_tertp_valid"),
            models.CheckConstraint(
                condition=Q(who_type__in=["", *WhoType.values]), name="patient_who_type_valid"
            ),
            models.CheckConstraint(
                condition=Q(who_grade__isnull=True) | Q(who_grade__gte=1, who_grade__lte=4),
                name="patient_who_grade_1_4",
            ),
            # WHO 2021: 1p/19q codeletion defines oligodendroglioma, which is IDH-mutant.
            models.CheckConstraint(
                condition=~Q(codeletion_1p19q="codeleted") | ~Q(idh="wildtype"),
                name="patient_codeletion_requires_idh_mutant",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.site.name}/{self.code}"


class Timepoint(models.TextChoices):
    INITIAL_DIAGNOSIS = "initial_diagnosis", "Initial diagnosis"
    SUSPECTED_RECURRENCE = "suspected_recurrence", "Suspected recurrence"


class Diagnosis(models.TextChoices):
    PROGRESSION = "progression", "Progression"
    TREATMENT_RELATED = "treatment_related", "Treatment-related change"
    UNKNOWN = "unknown", "Unknown"


class DiagnosisBasis(models.TextChoices):
    HISTOLOGY = "histology", "Histology"
    FOLLOW_UP = "follow_up", "Clinical and imaging follow-up"
    UNKNOWN = "unknown", "Unknown"


class Exam(models.Model):
    """One imaging time point of a patient (a BIDS session)."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="exams")
    code = models.CharField(max_length=64, help_text="Session label, unique per patient")
    timepoint = models.CharField(max_length=32, choices=Timepoint.choices)
    day = models.IntegerField(default=0, help_text="Days since the patient's first exam (no dates)")
    tracer = models.CharField(max_length=16, default="FDOPA")
    diagnosis = models.CharField(max_length=24, choices=Diagnosis.choices, default=Diagnosis.UNKNOWN)
    diagnosis_basis = models.CharField(
        max_length=16, choices=DiagnosisBasis.choices, default=DiagnosisBasis.UNKNOWN
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient__site__name", "patient__code", "day", "code"]
        constraints = [
            models.UniqueConstraint(fields=["patient", "code"], name="exam_code_unique_per_patient"),
            models.CheckConstraint(condition=Q(timepoint__in=Timepoint.values), name="exam_timepoint_valid"),
            models.CheckConstraint(condition=Q(diagnosis__in=Diagnosis.values), name="exam_diagnosis_valid"),
            models.CheckConstraint(
                condition=Q(diagnosis_basis__in=DiagnosisBasis.values), name="exam_basis_valid"
            ),
            models.CheckConstraint(condition=Q(day__gte=0), name="exam_day_not_negative"),
            # A known diagnosis needs its basis.
            models.CheckConstraint(
                condition=Q(diagnosis="unknown") | ~Q(diagnosis_basis="unknown"),
                name="exam_diagnosis_has_basis",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.patient}/{self.code}"

    @property
    def site(self) -> Site:
        return self.patient.site


class VolumeKind(models.TextChoices):
    T1 = "t1", "T1"
    T1C = "t1c", "T1 contrast-enhanced"
    T2 = "t2", "T2"
    FLAIR = "flair", "FLAIR"
    PET_STATIC = "pet_static", "PET static"
    PET_DYNAMIC = "pet_dynamic", "PET dynamic"


class Space(models.TextChoices):
    NATIVE = "native", "As acquired"
    COMMON = "common", "Common analysis grid"


class QcStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PASS = "pass", "Pass"
    FAIL = "fail", "Fail"


class Volume(models.Model):
    """One stored NIfTI image of an exam, native or resampled to the common grid."""

    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="volumes")
    kind = models.CharField(max_length=16, choices=VolumeKind.choices)
    space = models.CharField(max_length=8, choices=Space.choices, default=Space.NATIVE)
    file = models.FileField(max_length=255)
    sha256 = models.CharField(max_length=64)
    source_name = models.CharField(max_length=255, blank=True, help_text="File name at import")
    shape = models.JSONField()
    voxel_size = models.JSONField()
    affine = models.JSONField()
    stored_dtype = models.CharField(max_length=16, blank=True)
    units = models.CharField(max_length=16, blank=True, help_text="PET: Bq/mL or SUV; MRI: blank")
    suv_factor = models.FloatField(
        null=True, blank=True, help_text="Multiply Bq/mL values by this to get body-weight SUV"
    )
    frame_start_s = models.JSONField(null=True, blank=True)
    frame_duration_s = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    qc_status = models.CharField(max_length=8, choices=QcStatus.choices, default=QcStatus.PENDING)
    qc_note = models.CharField(max_length=500, blank=True)
    qc_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Who set the QC status last (the audit trail keeps every change)",
    )
    qc_at = models.DateTimeField(null=True, blank=True, help_text="When the QC status was set last")
    thumbnail = models.ImageField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["exam", "space", "kind"]
        constraints = [
            models.UniqueConstraint(fields=["exam", "kind", "space"], name="volume_one_per_kind_space"),
            models.CheckConstraint(condition=Q(kind__in=VolumeKind.values), name="volume_kind_valid"),
            models.CheckConstraint(condition=Q(space__in=Space.values), name="volume_space_valid"),
            models.CheckConstraint(condition=Q(qc_status__in=QcStatus.values), name="volume_qc_valid"),
            models.CheckConstraint(
                condition=~Q(kind="pet_dynamic")
                | (Q(frame_start_s__isnull=False) & Q(frame_duration_s__isnull=False)),
                name="volume_dynamic_pet_has_frames",
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=["pet_static", "pet_dynamic"]) | Q(units__in=["Bq/mL", "SUV"]),
                name="volume_pet_units_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.exam} {self.kind} ({self.space})"

    @property
    def is_pet(self) -> bool:
        return self.kind in (VolumeKind.PET_STATIC, VolumeKind.PET_DYNAMIC)


class MaskKind(models.TextChoices):
    TUMOR = "tumor", "Tumour VOI"
    STRIATUM = "striatum", "Striatum (reference)"
    BACKGROUND = "background", "Healthy background (reference)"
    AGGRESSIVE = "aggressive", "Aggressive subregion"


class Mask(models.Model):
    """A binary mask of an exam on the grid of one of its volumes."""

    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="masks")
    kind = models.CharField(max_length=16, choices=MaskKind.choices)
    space = models.CharField(max_length=8, choices=Space.choices, default=Space.NATIVE)
    grid = models.ForeignKey(
        Volume, on_delete=models.CASCADE, related_name="masks", help_text="The volume whose grid it is on"
    )
    file = models.FileField(max_length=255)
    sha256 = models.CharField(max_length=64)
    source_name = models.CharField(max_length=255, blank=True)
    n_voxels = models.PositiveIntegerField()
    volume_ml = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["exam", "space", "kind"]
        constraints = [
            models.UniqueConstraint(fields=["exam", "kind", "grid"], name="mask_one_per_kind_grid"),
            models.CheckConstraint(condition=Q(kind__in=MaskKind.values), name="mask_kind_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.exam} {self.kind} mask"


class CohortPurpose(models.TextChoices):
    TRAINING = "training", "Training"
    EXTERNAL_VALIDATION = "external_validation", "External validation"
    READER_STUDY = "reader_study", "Reader-study set"
    OTHER = "other", "Other"


class Cohort(models.Model):
    """A named set of exams (training, external validation, reader-study set...)."""

    name = models.SlugField(max_length=100, unique=True)
    purpose = models.CharField(max_length=24, choices=CohortPurpose.choices, default=CohortPurpose.OTHER)
    description = models.TextField(blank=True)
    exams = models.ManyToManyField(Exam, related_name="cohorts", blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(purpose__in=CohortPurpose.values), name="cohort_purpose_valid"),
        ]

    def __str__(self) -> str:
        return self.name
