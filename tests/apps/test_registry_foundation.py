"""Issue 11 in the registry: deep-model fields and their constraints, the migration's back-fill,
channel stacks of prepared exams, stored embeddings (idempotent), the GPU queue, and the model page
of a foundation encoder for every role."""
from __future__ import annotations

import importlib
import io
import zipfile

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.urls import reverse

from apps.cohorts.models import Exam, Mask, Volume
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.cohorts.services.store import StoreTransaction, media_path
from apps.jobs.models import Job
from apps.jobs.services import job_queue, job_submit
from apps.registry.foundation import (
    FoundationError,
    embeddings_compute,
    exam_stack,
    exam_stack_path,
)
from apps.registry.models import ExamEmbedding, ModelVersion, Prediction
from ml.foundation.model import EncoderConfig, FoundationEncoder, encode, save_encoder
from ml.io.nifti import load_nifti
from tests.factories import (
    ExamFactory,
    ModelVersionFactory,
    PredictionFactory,
    SiteFactory,
    _png,
    user_with,
)

pytestmark = pytest.mark.django_db


# --- fields and constraints ----------------------------------------------------------------------

def _violates(**fields) -> bool:
    try:
        with transaction.atomic():
            ModelVersionFactory(**fields)
    except IntegrityError:
        return True
    return False


def test_pretraining_has_no_threshold_and_is_a_foundation_model():
    assert not _violates(task="pretraining", family="foundation", threshold=None, name="enc")
    assert _violates(task="pretraining", family="foundation", threshold=0.5, name="enc")  # decides nothing
    assert _violates(task="pretraining", family="classical", threshold=None, name="enc")
    assert _violates(task="progression", threshold=None)  # a clinical model decides with a threshold
    assert _violates(task="progression", threshold=1.5)
    assert _violates(task="survival", threshold=0.5)


def test_parent_exams_seen_sha_and_prediction_maps():
    parent = ModelVersionFactory(task="pretraining", family="foundation", threshold=None, name="enc")
    child = ModelVersionFactory(task="pretraining", family="foundation", threshold=None, name="enc",
                                parent=parent, exams_seen=[3, 4], artifact_sha256="a" * 64)
    assert list(parent.children.all()) == [child] and child.exams_seen == [3, 4]
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=parent.pk).update(parent=parent)  # not its own parent
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):  # provenance: a version others started from stays
        parent.delete()
    pred = PredictionFactory()
    assert pred.maps == {}
    pred.maps = {"integrated_gradients": "maps/ab/ab.nii.gz"}
    pred.save()
    assert Prediction.objects.get(pk=pred.pk).maps["integrated_gradients"].endswith(".nii.gz")


def test_embedding_is_unique_per_model_and_exam():
    mv = ModelVersionFactory(task="pretraining", family="foundation", threshold=None, name="enc")
    exam = ExamFactory()
    fields = dict(model_version=mv, exam=exam, dim=2, pooled=[0.1, 0.2], patches="embeddings/x.npz",
                  patches_sha256="b" * 64, grid_shape=[1, 1, 1], patch_affine=np.eye(4).tolist(), voxel_mm=4.0)
    ExamEmbedding.objects.create(**fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        ExamEmbedding.objects.create(**fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        ExamEmbedding.objects.create(**(fields | {"exam": ExamFactory(), "dim": 0}))


def test_migration_backfills_the_sha256_from_the_stored_name():
    from django.apps import apps as django_apps

    migration = importlib.import_module("apps.registry.migrations.0003_foundation_models")
    sha = "0123456789abcdef" * 4
    named = ModelVersionFactory(artifact=f"models/01/{sha}.joblib", artifact_sha256="")
    odd = ModelVersionFactory(artifact="models/none.joblib", artifact_sha256="")
    migration.artifact_sha256_from_name(django_apps, None)
    named.refresh_from_db()
    odd.refresh_from_db()
    assert named.artifact_sha256 == sha and odd.artifact_sha256 == ""


# --- the GPU queue ------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_pretrain_and_encode_jobs_go_to_the_gpu_queue(settings):
    from config.celery import app

    default = settings.CELERY_TASK_DEFAULT_QUEUE
    settings.AMINOPET_GPU_QUEUE = gpu = f"{default}-gpu"
    assert job_queue("pretrain") == job_queue("encode_exams") == gpu
    assert job_queue("prepare_exam") == default
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for q in (default, gpu):
            channel.queue_declare(queue=q, durable=True, auto_delete=False)
            channel.queue_purge(q)
        try:
            job = job_submit(kind="pretrain", params={"cohort": "none", "config": {}})
            job_submit(kind="encode_exams", params={"model": 0, "cohort": "none"})
            # a declare answers the message count (passive would refuse an empty queue on Redis: no key)
            assert channel.queue_declare(queue=gpu, durable=True, auto_delete=False)[1] == 2
            assert channel.queue_declare(queue=default, durable=True, auto_delete=False)[1] == 0
            message = channel.basic_get(gpu, no_ack=True)
            assert message.headers["task"] == "apps.jobs.tasks.run_job"
            args, kwargs, _ = message.decode()
            assert kwargs == {"job_pk": job.pk}
        finally:
            for q in (default, gpu):
                channel.queue_purge(q)
            channel.queue_delete(gpu)


# --- stacks and embeddings on prepared exams ------------------------------------------------------

@pytest.fixture
def prepared(one_subject):
    """One generated patient imported as cohort ``one``; its recurrence exam prepared on the common
    grid, its first exam not (preparation takes seconds: one is enough)."""
    bids_import(path=one_subject, cohort_name="one")
    exam = Exam.objects.get(timepoint="suspected_recurrence")
    exam_prepare(exam=exam)
    return exam


def _encoder_version(tmp_path, *, voxel_mm: float = 4.0) -> tuple[ModelVersion, FoundationEncoder]:
    torch.manual_seed(0)
    encoder = FoundationEncoder(EncoderConfig(img_size=(16, 16, 16), patch_size=8, hidden_size=24, mlp_dim=48,
                                              num_layers=1, num_heads=2, voxel_mm=voxel_mm))
    ckpt = save_encoder(encoder, tmp_path / "enc.pt")
    name, sha = StoreTransaction().put_file(ckpt, category="models")
    mv = ModelVersionFactory(task="pretraining", family="foundation", threshold=None, name="enc",
                             algorithm="vit-ssl", artifact=name, artifact_sha256=sha, metrics={})
    return mv, encoder.eval()


def test_stack_of_a_prepared_exam_keeps_suv_masks_and_current_labels(prepared):
    exam = prepared
    stack = exam_stack(exam=exam, voxel_mm=4.0)
    assert stack.image.shape == (5, 48, 56, 48) and stack.voxel_mm == 4.0 and stack.key == str(exam.pk)
    assert {"brain", "tumor", "striatum"} <= set(stack.masks)
    assert stack.ttp_min is not None  # the generated exams have a dynamic PET
    # independent path: the prepared 2 mm PET and tumour mask read directly
    pet = exam.volumes.get(kind="pet_static", space="common")
    tumor = Mask.objects.get(exam=exam, kind="tumor", space="common", grid=pet)
    pet2 = load_nifti(media_path(pet.file.name)).array
    tum2 = load_nifti(media_path(tumor.file.name)).array > 0.5
    assert stack.suv[stack.masks["tumor"] > 0].mean() == pytest.approx(pet2[tum2].mean(), rel=0.1)
    assert stack.masks["tumor"].sum() * 64 == pytest.approx(tum2.sum() * 8, rel=0.25)  # same volume in mm3
    assert stack.meta["diagnosis"] == exam.diagnosis and stack.meta["site"] == exam.patient.site.name
    # labels imported later count, the cached arrays are reused
    path = exam_stack_path(exam=exam, voxel_mm=4.0)
    mtime = path.stat().st_mtime_ns
    exam.patient.idh = "mutant"
    exam.patient.save()
    exam.refresh_from_db()
    assert exam_stack(exam=exam, voxel_mm=4.0).meta["idh"] == "mutant"
    assert exam_stack_path(exam=exam, voxel_mm=4.0) == path and path.stat().st_mtime_ns == mtime
    # a changed preparation makes a new stack (and the old one goes)
    Volume.objects.filter(pk=pet.pk).update(sha256="f" * 64)
    new_path = exam_stack_path(exam=exam, voxel_mm=4.0)
    assert new_path != path and not path.exists()
    with pytest.raises(FoundationError, match="multiple of the prepared"):
        exam_stack_path(exam=exam, voxel_mm=3.0)


def test_embeddings_are_stored_once_per_exam_and_match_encode(prepared, tmp_path):
    mv, encoder = _encoder_version(tmp_path)
    unprepared = Exam.objects.get(timepoint="initial_diagnosis")
    done = embeddings_compute(model_version=mv, exams=[prepared, unprepared])
    assert (done.created, done.updated, done.unchanged) == (1, 0, 0)
    assert [s["exam"] for s in done.skipped] == [unprepared.pk] and "prepare_exams" in done.skipped[0]["reason"]
    for exam in [prepared]:
        row = ExamEmbedding.objects.get(model_version=mv, exam=exam)
        expected = encode(encoder, exam_stack(exam=exam, voxel_mm=4.0))
        with np.load(media_path(row.patches.name)) as z:
            np.testing.assert_allclose(z["patches"], expected.patches, atol=1e-5)
            np.testing.assert_allclose(z["patch_affine"], expected.patch_affine)
        np.testing.assert_allclose(row.pooled, expected.pooled, atol=1e-5)
        assert row.dim == 24 and row.grid_shape == [6, 7, 6] and row.voxel_mm == 4.0
        # patch (1, 2, 3) covers voxels 8..15 etc.: its centre is voxel 11.5, 19.5, 27.5 on the 4 mm grid
        centre = np.asarray(row.patch_affine) @ [1, 2, 3, 1]
        assert centre[:3] == pytest.approx([-93 + 4 * 11.5, -129 + 4 * 19.5, -75 + 4 * 27.5])
        with zipfile.ZipFile(io.BytesIO(media_path(row.patches.name).read_bytes())) as zf:
            assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())  # reproducible bytes
    again = embeddings_compute(model_version=mv, cohort="one")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 1)
    assert ExamEmbedding.objects.filter(model_version=mv).count() == 1
    with pytest.raises(FoundationError, match="no exam could be encoded"):
        embeddings_compute(model_version=mv, exams=[unprepared])


def test_encode_exams_command(prepared, tmp_path, capsys):
    mv, _ = _encoder_version(tmp_path)
    call_command("encode_exams", "--model", str(mv.pk), "--cohort", "one", "--quiet")
    captured = capsys.readouterr()
    assert "1 exams embedded" in captured.out and "1 skipped" in captured.out
    assert "no prepared" in captured.err  # the unprepared exam is named with the reason
    job = Job.objects.get(kind="encode_exams")
    assert job.status == "succeeded" and job.result["created"] == 1
    classical = ModelVersionFactory()
    with pytest.raises(CommandError, match="not a foundation encoder"):
        call_command("encode_exams", "--model", str(classical.pk), "--cohort", "one", "--quiet")
    with pytest.raises(CommandError, match="no cohort named"):
        call_command("encode_exams", "--model", str(mv.pk), "--cohort", "nope", "--quiet")
    with pytest.raises(CommandError, match="no model version"):
        call_command("encode_exams", "--model", "999999", "--cohort", "one", "--quiet")
    # an encoder for another grid than the checkpoint's stacks is refused by name
    mv2, _ = _encoder_version(tmp_path / "b", voxel_mm=3.0)
    with pytest.raises(CommandError, match="multiple of the prepared"):
        call_command("encode_exams", "--model", str(mv2.pk), "--cohort", "one", "--quiet")


# --- the model page ---------------------------------------------------------------------------------

def foundation_version(site, other_site) -> tuple[ModelVersion, Exam, Exam, Exam]:
    """A registered encoder with the metrics and plots the pretraining service writes."""
    query = ExamFactory(patient__site=site, timepoint="suspected_recurrence")
    mine = ExamFactory(patient__site=site, diagnosis="treatment_related", diagnosis_basis="follow_up")
    theirs = ExamFactory(patient__site=other_site)
    parent = ModelVersionFactory(task="pretraining", family="foundation", threshold=None, name="general",
                                 metrics={})
    auc = {"estimate": 0.81, "lower": 0.62, "upper": 0.95}
    rnd = {"estimate": 0.55, "lower": 0.35, "upper": 0.74}
    mv = ModelVersionFactory(
        task="pretraining", family="foundation", threshold=None, name="foundation-vit", algorithm="vit-ssl",
        parent=parent, exams_seen=[1, 2, 3, 4, 5], artifact_sha256="c0ffee" * 10 + "beef",
        config={"seed": 3, "epochs": 2, "encoder": {"hidden_size": 24}, "plot_captions": {
            "recon_inpainting_1": "Inpainting, held-out exam 1"}},
        plots={"curves": _png(), "recon_inpainting_1": _png(), "recon_crossmodal_1": _png()},
        metrics={
            "final_losses": {"inpainting": 0.4321, "crossmodal": 0.5, "contrastive": 2.7051},
            "first_losses": {"inpainting": 0.9876, "crossmodal": 0.8, "contrastive": 3.9},
            "loss_chance": {"contrastive": 2.70805}, "at_chance": ["contrastive"],
            "training": {"epochs": 2, "seconds": 12.0, "held_out": 2},
            "probe": {"progression": {"scope": "held-out patients", "n_exams": 12, "n_positive": 5,
                                      "n_patients": 12, "n_folds": 5, "encoder": auc, "random": rnd,
                                      "difference": 0.26},
                      "idh": {"error": "needs at least 2 exams of each class, got [1, 3]"}},
            "probe_max": {"idh": {"scope": "held-out patients", "n_exams": 12, "n_positive": 6, "n_patients": 12,
                                  "n_folds": 5, "encoder": {"estimate": 0.777, "lower": 0.6, "upper": 0.9},
                                  "random": {"estimate": 0.654, "runs": 3, "min": 0.6, "max": 0.7,
                                             "aucs": [0.6, 0.662, 0.7]},
                                  "difference": 0.123}},
            "probe_lesion": {"progression": {"scope": "held-out patients", "n_exams": 12, "n_positive": 5,
                                             "n_patients": 12, "n_folds": 5,
                                             "encoder": {"estimate": 0.912, "lower": 0.8, "upper": 0.99},
                                             "random": {"estimate": 0.7, "runs": 3, "min": 0.65, "max": 0.72,
                                                        "aucs": [0.65, 0.72, 0.73]},
                                             "difference": 0.212}},
            "retrieval": {"k": 2, "labels": "diagnosis", "queries": [
                {"exam": query.pk, "label": "progression", "neighbours": [
                    {"exam": mine.pk, "label": "treatment_related", "similarity": 0.93},
                    {"exam": theirs.pk, "label": "progression", "similarity": 0.91}]},
                {"exam": theirs.pk, "label": "progression", "neighbours": []}]},
        },
    )
    return mv, query, mine, theirs


@pytest.mark.parametrize("role, status", [
    ("researcher", 200), ("admin", 200), ("coordinator", 403), ("reader", 403), ("statistician", 403),
    (None, 403), ("anon", 302),
])
def test_foundation_page_for_each_role(client, role, status):
    site, other = SiteFactory(name="nancy"), SiteFactory(name="lyon")
    mv, query, mine, theirs = foundation_version(site, other)
    if role != "anon":
        client.force_login(user_with(role, site))
    response = client.get(reverse("registry:detail", args=[mv.pk]))
    assert response.status_code == status
    plot = client.get(reverse("registry:plot", args=[mv.pk, "recon_crossmodal_1"]))
    assert plot.status_code == status
    if status != 200:
        return
    html = response.content.decode()
    for text in ("Self-supervised pretraining", "Exams seen</dt><dd>5 ", "c0ffee", "Started from",
                 reverse("registry:detail", args=[mv.parent.pk]), "0.4321", "0.9876", "Linear probe",
                 "mean squared error of the hidden patches", "chance 2.708 (log(2B − 1))",
                 "at chance: this task did not learn",
                 "<strong>0.810</strong> [0.620, 0.950]", "0.550 [0.350, 0.740]", "0.260",
                 "needs at least 2 exams of each class, got [1, 3]", "12 (5)",
                 "<strong>0.912</strong> [0.800, 0.990]", "0.700 <span class=\"muted\">(3 encoders, 0.650–0.720)",
                 "(one encoder, 95% CI)", "mean over the tumour&#x27;s patches", "mean over the brain",
                 "global max <span class=\"muted\">(each feature&#x27;s maximum over the brain&#x27;s patches)",
                 "<strong>0.777</strong> [0.600, 0.900]", "<td>+0.123</td>", "<td>+0.260</td>", "12: held-out patients, 5 folds", "Inpainting, held-out exam 1",
                 reverse("registry:plot", args=[mv.pk, "curves"]), "Nearest-neighbour retrieval",
                 "seed: 3", "hidden_size: 24", "encode_exams --model"):
        assert text in html, text
    assert "Decision threshold" not in html and "plot_captions" not in html
    assert reverse("cohorts:exam", args=[mine.pk]) in html and "treatment_related" in html
    if role == "researcher":  # another site's exam: rank and similarity, not who or what
        assert reverse("cohorts:exam", args=[theirs.pk]) not in html
        assert "an exam of a site you have no data role at" in html
    else:
        assert reverse("cohorts:exam", args=[theirs.pk]) in html


def test_the_loss_table_of_a_version_registered_before_first_losses_and_chance_levels():
    from apps.registry.selectors import pretraining_losses

    rows = pretraining_losses({"final_losses": {"inpainting": 0.2, "contrastive": 2.70}})
    assert [(r["task"], r["first"], r["last"], r["chance"], r["at_chance"]) for r in rows] == [
        ("inpainting", None, 0.2, None, False), ("contrastive", None, 2.70, None, False)]
    learned = pretraining_losses({"final_losses": {"contrastive": 0.7}, "loss_chance": {"contrastive": 2.708},
                                  "at_chance": []})
    assert learned[0]["chance"] == 2.708 and not learned[0]["at_chance"]


def test_model_list_shows_a_foundation_version(client):
    site = SiteFactory()
    mv, *_ = foundation_version(site, SiteFactory())
    client.force_login(user_with("researcher", site))
    html = client.get(reverse("registry:list")).content.decode()
    assert reverse("registry:detail", args=[mv.pk]) in html and "[, ]" not in html
    assert "probe AUC 0.810" in html


def test_a_pretrained_encoder_predicts_nothing():
    mv = ModelVersionFactory(task="pretraining", family="foundation", threshold=None, name="enc")
    with pytest.raises(CommandError, match="predicts nothing"):
        call_command("predict", "--model", str(mv.pk), "--cohort", "any", "--quiet")
