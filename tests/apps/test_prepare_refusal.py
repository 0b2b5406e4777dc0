"""Issue 10: a registration marked failed (coordinator QC "fail" on a registered volume) or flagged
poor by the similarity QC blocks what is computed from it: quantification with automatic VOIs
refuses the exam with the reason, predictions refuse it and withdraw an earlier one (audited), and
the reader study cannot take it; a coordinator's "pass" or a new registration lifts it."""
from __future__ import annotations

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.cohorts.models import Cohort, Exam, Volume
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare, registration_refusal
from apps.cohorts.services.qc import volume_qc_set
from apps.jobs.services import job_run_inline
from apps.quantification.models import ExamQuantification
from apps.quantification.services import RegistrationRefused, exam_quantify, registration_refusals
from apps.registry.models import Prediction
from apps.registry.services import TrainingError, classical_train, predictions_make
from tests.factories import (
    ExamFactory,
    ExamQuantificationFactory,
    SiteFactory,
    VolumeFactory,
    user_with,
)

pytestmark = pytest.mark.django_db


def test_failed_or_poor_registration_blocks_automatic_vois(one_subject):
    # the site supplies no PET masks for ses-01 (automatic VOIs need the registration), all of
    # them for ses-02 (the registration is not used there)
    for mask in one_subject.glob("derivatives/*/sub-*/ses-01/*/*desc-*_mask.nii.gz"):
        mask.unlink()
    bids_import(path=one_subject)
    auto, supplied = Exam.objects.get(code="01"), Exam.objects.get(code="02")
    coordinator = user_with("coordinator", auto.patient.site)
    for exam in (auto, supplied):
        exam_prepare(exam=exam)
        assert registration_refusal(exam) is None
    first = exam_quantify(exam=auto, radiomics=False)
    assert first.voi_sources["tumor"] == "automatic" and registration_refusals([auto.pk]) == {}

    for exam in (auto, supplied):
        pet = exam.volumes.get(kind="pet_static", space="common")
        volume_qc_set(volume=pet, status="fail", note="PET 8 mm off the MRI", user=coordinator)
    reason = registration_refusal(auto)
    assert "marked failed by" in reason and coordinator.get_username() in reason and "8 mm off" in reason
    client = Client()
    client.force_login(coordinator)
    page = client.get(reverse("cohorts:exam", args=[auto.pk])).content.decode()
    assert "on hold" in page and "8 mm off" in page
    with pytest.raises(RegistrationRefused, match="automatic VOIs need the registration.*marked failed"):
        exam_quantify(exam=auto, radiomics=False)
    job = job_run_inline(kind="quantify_exam", params={"exam": auto.pk, "radiomics": False})
    assert job.status == "failed" and "marked failed" in job.message, job.message
    # the stored result, made before the verdict, is refused downstream with the reason
    assert "used automatic VOIs" in registration_refusals([auto.pk, supplied.pk])[auto.pk]
    # supplied masks on the native PET grid: the registration is not used, nothing to refuse
    assert exam_quantify(exam=supplied, radiomics=False).voi_sources["tumor"] == "supplied"
    assert supplied.pk not in registration_refusals([auto.pk, supplied.pk])

    # the coordinator reviews the registration again and passes it: allowed again
    volume_qc_set(volume=auto.volumes.get(kind="pet_static", space="common"), status="pass", user=coordinator)
    assert registration_refusal(auto) is None
    assert exam_quantify(exam=auto, radiomics=False).tbr_max == pytest.approx(first.tbr_max)

    # a poor similarity flag blocks until a coordinator passes the volume of the poor pair
    pet = auto.volumes.get(kind="pet_static", space="common")
    volume_qc_set(volume=pet, status="pending", user=coordinator)
    for vol in auto.volumes.filter(space="common"):
        reg = vol.metadata["registration"]
        reg["similarity"]["pet_mri"] |= {"nmi": 1.01, "poor": True}
        reg["similarity"]["poor"] = reg["poor"] = True
        Volume.objects.filter(pk=vol.pk).update(metadata=vol.metadata)
    reason = registration_refusal(auto)
    assert "flagged poor" in reason and "PET vs MRI NMI 1.010 < 1.04" in reason
    # a pass on the MRI does not answer for the PET -> MRI pair
    volume_qc_set(volume=auto.volumes.get(kind="t1c", space="common"), status="pass", user=coordinator)
    assert registration_refusal(auto) is not None
    volume_qc_set(volume=pet, status="pass", user=coordinator)
    assert registration_refusal(auto) is None


def test_new_registration_resets_the_verdict(one_subject):
    bids_import(path=one_subject)
    exam = Exam.objects.get(code="01")
    coordinator = user_with("coordinator", exam.patient.site)
    exam_prepare(exam=exam)
    pet = exam.volumes.get(kind="pet_static", space="common")
    volume_qc_set(volume=pet, status="fail", user=coordinator)
    exam_prepare(exam=exam)  # the same (deterministic) registration: the verdict stays
    assert Volume.objects.get(pk=pet.pk).qc_status == "fail"
    # a different transform (as after re-registering with another start): the review starts again
    reg = pet.metadata["registration"]
    reg["transform"]["matrix"][0][3] += 5.0
    Volume.objects.filter(pk=pet.pk).update(metadata=pet.metadata)
    exam_prepare(exam=exam)
    again = Volume.objects.get(pk=pet.pk)
    assert again.qc_status == "pending" and again.qc_by is None
    event = AuditEvent.objects.filter(action="volume.qc", object_id=str(pet.pk)).latest("id")
    assert event.details["before"]["qc_status"] == "fail" and "re-registered" in event.details["reason"]
    assert registration_refusal(exam) is None


def _registered(exam, *, qc: str) -> None:
    meta = {"registration": {"reference": "t1c", "poor": False, "transform": {"matrix": np.eye(4).tolist()},
                             "similarity": {"poor": False}}}
    for kind in ("t1c", "pet_static"):
        VolumeFactory(exam=exam, kind=kind, space="common", units="" if kind == "t1c" else "SUV",
                      metadata=meta, qc_status=qc if kind == "pet_static" else "pending")


def test_predictions_refuse_exams_of_a_failed_registration():
    site = SiteFactory(name="home")
    train, external = Cohort.objects.create(name="train"), Cohort.objects.create(name="ext")
    for i in range(12):
        progression = i % 2 == 0
        exam = ExamFactory(patient__site=site, patient__code=f"H{i:02d}", code="02",
                           diagnosis="progression" if progression else "treatment_related",
                           diagnosis_basis="histology")
        ExamQuantificationFactory(exam=exam, tbr_max=(2.4 if progression else 1.6) + 0.05 * i)
        train.exams.add(exam)
    exams = []
    for i, tbr in enumerate((1.5, 2.8, 3.1)):
        exam = ExamFactory(patient__site=site, patient__code=f"E{i}", code="02")
        ExamQuantificationFactory(exam=exam, tbr_max=tbr,
                                  voi_sources={"tumor": "automatic", "striatum": "automatic",
                                               "background": "mirrored"})
        _registered(exam, qc="pending")
        external.exams.add(exam)
        exams.append(exam)
    mv = classical_train(task="progression", cohort="train", algorithm="threshold", threshold_feature="tbr_max",
                         n_bootstrap=20)
    assert predictions_make(model_version=mv, cohort="ext") == 3
    bad = exams[1]
    before = Prediction.objects.get(model_version=mv, exam=bad).probability
    coordinator = user_with("coordinator", site)
    volume_qc_set(volume=bad.volumes.get(kind="pet_static", space="common"), status="fail", user=coordinator)
    assert predictions_make(model_version=mv, cohort="ext") == 2
    assert not Prediction.objects.filter(model_version=mv, exam=bad).exists()
    made = AuditEvent.objects.filter(action="predictions.make").latest("id")
    assert "marked failed" in made.details["refused"][str(bad.pk)]
    assert made.details["withdrawn"] == [{"exam": bad.pk, "before": before, "reason": made.details["refused"][str(bad.pk)]}]
    # (a reader study takes only exams with a prediction of its model: reader_study.services)
    # every exam refused: a clear error, not an empty success
    for exam in exams:
        volume_qc_set(volume=exam.volumes.get(kind="pet_static", space="common"), status="fail", user=coordinator)
    with pytest.raises(TrainingError, match="every quantified suspected_recurrence exam is refused"):
        predictions_make(model_version=mv, cohort="ext")
    # passed again: predicted again
    volume_qc_set(volume=bad.volumes.get(kind="pet_static", space="common"), status="pass", user=coordinator)
    assert predictions_make(model_version=mv, cohort="ext") == 1
    assert ExamQuantification.objects.filter(exam=bad).exists()
