"""``manage.py train_classifier`` (issue 12) inline on a tiny prepared cohort: a CNN with an external site,
the T/S max rule with leave-one-site-out, the foundation encoder probed from a registered encoder; the
registered versions (artifact + SHA-256, metrics with CIs, plots, exams seen, parent), deep predictions
with explanation maps; bad input as CommandError; the job kind goes to the GPU queue."""
from __future__ import annotations

import hashlib

import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import override_settings

from apps.cohorts.models import Exam
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.cohorts.services.store import StoreTransaction, media_path
from apps.jobs.models import Job
from apps.registry.models import ModelVersion, Prediction
from ml.classify.artifact import TrainedClassifier
from ml.foundation.model import EncoderConfig, FoundationEncoder, save_encoder
from ml.phantoms import generate_cohort

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def balanced_bids(tmp_path_factory):
    """8 patients on 2 sites (nancy, paris), each site 2 progression + 2 treatment-related (seed 7)."""
    out = tmp_path_factory.mktemp("wp3") / "bids"
    generate_cohort(out, n_patients=8, n_sites=2, seed=7, workers=1)
    return out


def _prepared_cohort(path) -> list[Exam]:
    bids_import(path=path, cohort_name="wp3")
    exams = list(Exam.objects.filter(timepoint="suspected_recurrence").order_by("pk"))
    for exam in exams:
        exam_prepare(exam=exam)
    return exams


def _encoder_version(tmp_path) -> ModelVersion:
    torch.manual_seed(0)
    enc = FoundationEncoder(EncoderConfig(img_size=(16, 16, 16), patch_size=8, hidden_size=24, mlp_dim=48,
                                          num_layers=1, num_heads=2, voxel_mm=4.0))
    path = save_encoder(enc, tmp_path / "enc.pt")
    name, sha = StoreTransaction().put_file(path, category="models")
    return ModelVersion.objects.create(name="foundation-vit", version=1, task="pretraining", family="foundation",
                                       algorithm="vit-ssl", threshold=None, artifact=name, artifact_sha256=sha)


def test_train_classifier_inline_registers_versions_and_predicts_with_maps(balanced_bids, tmp_path, capsys):
    exams = _prepared_cohort(balanced_bids)
    assert len(exams) == 8
    call_command("train_classifier", "--family", "cnn", "--cohort", "wp3", "--external-site", "paris",
                 "--epochs", "2", "--crop", "16", "--bootstrap", "50", "--seed", "3", "--quiet")
    out = capsys.readouterr().out
    mv = ModelVersion.objects.get(name="progression-cnn")
    assert f"model id {mv.pk}" in out and "external:paris" in out
    assert (mv.family, mv.task, mv.external_site.name, mv.config["seed"]) == ("cnn", "progression", "paris", 3)
    # the artifact is stored with its SHA-256 and loads as a calibrated classifier
    path = media_path(mv.artifact.name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == mv.artifact_sha256
    trained = TrainedClassifier.load(path)
    assert trained.family == "cnn" and trained.threshold == pytest.approx(mv.threshold)
    # external metrics on the 4 paris exams only; training/validation on nancy only
    ext = mv.metrics["external"]
    site_of = {str(e.pk): e.patient.site.name for e in exams}
    assert ext["n"] == 4 and {site_of[c] for c in ext["cases"]} == {"paris"}
    assert {site_of[str(k)] for k in mv.exams_seen} == {"nancy"} and len(mv.exams_seen) == 4
    for m in ext["metrics"].values():
        assert m["estimate"] is None or m["lower"] <= m["estimate"] <= m["upper"]
    assert set(ext["calibration_stats"]) >= {"slope", "intercept", "brier"}
    assert {"external_roc", "external_calibration", "training_curve"} <= set(mv.plots)
    job = Job.objects.get(kind="train_classifier")
    assert job.status == "succeeded" and "epoch 1: training loss" in job.log
    # deep predictions: calibrated probability, decision at the stored threshold, an explanation map each
    call_command("predict", "--model", str(mv.pk), "--cohort", "wp3", "--quiet")
    preds = list(Prediction.objects.filter(model_version=mv))
    assert len(preds) == 8
    # developed on nancy only: the paris exams carry a site warning, nancy's none
    assert mv.config["development"]["sites"] == ["nancy"]
    for p in preds:
        assert p.decision == (p.probability >= mv.threshold)
        stored = p.maps["integrated_gradients"]
        assert media_path(stored).is_file()
        codes = [w["code"] for w in p.warnings]
        if p.exam.patient.site.name == "paris":  # its own scanner: frame schedule and voxel size too
            assert codes == ["site_unseen", "frame_schedule_unseen", "voxel_size_unseen"], codes
        else:
            assert codes == [], codes
    import nibabel as nib
    img = nib.load(media_path(preds[0].maps["integrated_gradients"]))
    data = img.get_fdata()
    assert data.shape == (48, 56, 48) and data.max() > 0 and data.min() >= 0

    # the T/S max rule with leave-one-site-out
    capsys.readouterr()
    call_command("train_classifier", "--family", "ts_rule", "--cohort", "wp3", "--loso", "--bootstrap", "50",
                 "--quiet")
    printed = capsys.readouterr().out
    rule = ModelVersion.objects.get(name="progression-ts-rule")
    for site in ("nancy", "paris"):  # each held-out site's own figure, not only the pooled one
        assert f"leave-one-site-out {site}: n=4 AUC" in printed
    assert set(rule.metrics["loso"]["per_site"]) == {"nancy", "paris"}
    assert rule.metrics["loso"]["pooled"]["n"] == 8 and rule.family == "rule"
    assert rule.metrics["internal"]["n"] == 2  # registered model: internal test of 1 patient per class

    # the foundation encoder, linear-probed: parent = the encoder version
    enc = _encoder_version(tmp_path)
    call_command("train_classifier", "--family", "probe", "--cohort", "wp3", "--external-site", "nancy",
                 "--encoder", str(enc.pk), "--crop", "16", "--bootstrap", "50", "--quiet")
    probe = ModelVersion.objects.get(name="progression-probe")
    assert probe.parent == enc and probe.family == "foundation" and probe.algorithm == "vit-probe"
    assert probe.config["details"]["probe_C"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--family", "cnn", "--cohort", "nope"], "no cohort named"),
    (["--family", "cnn", "--cohort", "wp3", "--label-fraction", "0"], "label-fraction"),
])
def test_train_classifier_bad_input_is_a_command_error(args, message):
    from apps.cohorts.models import Cohort
    Cohort.objects.create(name="wp3")
    with pytest.raises(CommandError, match=message):
        call_command("train_classifier", *args, "--quiet")


def test_encoder_must_be_a_foundation_version_with_its_checkpoint():
    from apps.cohorts.models import Cohort
    from tests.factories import ModelVersionFactory
    Cohort.objects.create(name="wp3")
    gone = ModelVersionFactory(task="pretraining", family="foundation", threshold=None, artifact="models/gone.pt")
    with pytest.raises(CommandError, match="checkpoint"):
        call_command("train_classifier", "--family", "foundation", "--cohort", "wp3", "--encoder", str(gone.pk),
                     "--quiet")
    with pytest.raises(CommandError, match="foundation families"):
        call_command("train_classifier", "--family", "cnn", "--cohort", "wp3", "--encoder", str(gone.pk), "--quiet")


@override_settings(AMINOPET_GPU_QUEUE="gpu")
def test_train_classifier_jobs_go_to_the_gpu_queue():
    from apps.jobs.services import handler_kinds, job_queue
    assert "train_classifier" in handler_kinds()
    assert job_queue("train_classifier") == "gpu"


def test_train_classical_loso_holds_out_each_site(balanced_bids, capsys):
    bids_import(path=balanced_bids, cohort_name="wp3")
    call_command("quantify", "--cohort", "wp3", "--timepoint", "suspected_recurrence", "--no-radiomics", "--quiet")
    call_command("train_classical", "--task", "progression", "--cohort", "wp3", "--model", "threshold", "--loso",
                 "--bootstrap", "50", "--quiet")
    out = capsys.readouterr().out
    mv = ModelVersion.objects.get()
    loso = mv.metrics["loso"]
    assert set(loso["per_site"]) == {"nancy", "paris"} and mv.external_site is None
    assert loso["pooled"]["n"] == 8 and all(ev["n"] == 4 for ev in loso["per_site"].values())
    site_of = {str(e.pk): e.patient.site.name for e in Exam.objects.all()}
    for site, ev in loso["per_site"].items():
        assert {site_of[c] for c in ev["cases"]} == {site}
    assert "leave-one-site-out pooled: n=8" in out
    with pytest.raises(CommandError, match="not allowed"):
        call_command("train_classical", "--task", "progression", "--cohort", "wp3", "--loso",
                     "--external-site", "paris", "--quiet")


def test_model_page_shows_the_internal_test_of_a_wp3_version(client):
    from django.urls import reverse

    from ml.classical.evaluation import evaluate_predictions
    from tests.factories import ModelVersionFactory, user_with

    ev = evaluate_predictions("internal test (held-out patients)", [0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9], 0.5,
                              n_bootstrap=20).to_dict()
    mv = ModelVersionFactory(family="cnn", algorithm="densenet3d", threshold=0.5, metrics={"internal": ev},
                             config={"protocol": "ml.classify"})
    client.force_login(user_with("admin"))
    html = client.get(reverse("registry:detail", args=[mv.pk])).content.decode()
    assert "internal test (held-out patients)" in html
    assert "Youden on calibrated validation predictions" in html
