"""``manage.py pretrain`` inline on a tiny prepared cohort with a tiny config (issue 11): the registered
encoder (checkpoint and its SHA-256, config, exams seen, held-out patients, parent), per-task losses in
the job log, probe / retrieval / reconstructions / curves, resume and init; bad input as CommandError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.cohorts.models import Exam
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.cohorts.services.store import media_path
from apps.jobs.models import Job
from apps.registry.foundation import _resolve_init
from apps.registry.models import ModelVersion
from ml.foundation.model import file_sha256, load_encoder
from tests.factories import ModelVersionFactory, SiteFactory, user_with

pytestmark = pytest.mark.django_db

TINY = {
    "seed": 1, "epochs": 2, "batch_size": 2, "lr": 1e-3, "warmup_epochs": 0, "noise_std": 0.0,
    "encoder": {"img_size": [16, 16, 16], "patch_size": 8, "hidden_size": 24, "mlp_dim": 48, "num_layers": 1,
                "num_heads": 2, "voxel_mm": 4.0},
    "pretext": {"decoder_hidden_size": 16, "decoder_layers": 1, "decoder_heads": 2, "decoder_mlp_dim": 32,
                "proj_dim": 16},
}


def _config(tmp_path: Path, name: str = "tiny", **changes) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(TINY | changes))
    return path


def test_pretrain_inline_registers_the_encoder(generated_bids, tmp_path, capsys):
    bids_import(path=generated_bids, cohort_name="tiny")
    exams = list(Exam.objects.order_by("pk"))
    prepared = exams[:5]  # 3 patients (preparation takes seconds); the others are left out, with the reason
    for exam in prepared:
        exam_prepare(exam=exam)
    config = _config(tmp_path)
    call_command("pretrain", "--config", str(config), "--cohort", "tiny", "--held-out", "0.25")
    out = capsys.readouterr().out
    mv = ModelVersion.objects.get(name="foundation-vit")
    assert f"model id {mv.pk}" in out
    assert (mv.task, mv.family, mv.threshold, mv.version) == ("pretraining", "foundation", None, 1)
    # the checkpoint is stored with its SHA-256 and loads as an encoder with the config's sizes
    checkpoint = media_path(mv.artifact.name)
    assert file_sha256(checkpoint) == mv.artifact_sha256
    encoder, run_config = load_encoder(checkpoint)
    assert encoder.config.hidden_size == 24 and run_config["seed"] == 1
    assert mv.config["epochs"] == 2 and mv.config["encoder"]["img_size"] == [16, 16, 16]
    # one of the 3 patients with prepared exams is held out of pretraining; unprepared exams are left out
    held = mv.config["platform"]["held_out_patients"]
    assert len(held) == 1
    seen = Exam.objects.filter(pk__in=mv.exams_seen)
    assert exams[-1].pk not in mv.exams_seen and not seen.filter(patient__pk__in=map(int, held)).exists()
    assert len(mv.exams_seen) == sum(1 for e in prepared if str(e.patient.pk) not in held)
    assert mv.training_cohort.name == "tiny" and mv.parent is None
    # per-task losses, per epoch, in the job log (shown on the jobs page)
    job = Job.objects.get(kind="pretrain")
    assert job.status == "succeeded" and job.params["config"]["seed"] == 1
    for epoch in (1, 2):
        assert f"epoch {epoch}/2: loss" in job.log
    assert "inpainting" in job.log and "crossmodal" in job.log and "contrastive" in job.log
    assert f"exam {exams[-1].pk} left out" in job.log
    assert set(mv.metrics["final_losses"]) == {"loss", "inpainting", "crossmodal", "contrastive"}
    assert all(v > 0 for v in mv.metrics["final_losses"].values())
    assert mv.metrics["first_losses"] == pytest.approx({k: mv.metrics["history"][0][k] for k in mv.metrics["final_losses"]})
    # the contrastive loss beside its chance level, log(2B - 1), and the verdict the job message repeats
    assert mv.metrics["loss_chance"] == {"contrastive": pytest.approx(np.log(2 * mv.config["batch_size"] - 1))}
    stuck = mv.metrics["final_losses"]["contrastive"] >= 0.98 * mv.metrics["loss_chance"]["contrastive"]
    assert mv.metrics["at_chance"] == (["contrastive"] if stuck else [])
    assert ("contrastive at chance: did not learn" in job.result["message"]) == stuck
    # the representation's quality: a probe row per task (AUCs with CIs, or why not), retrieval
    # for the global embedding and the lesion one
    probes = [mv.metrics[key] for key in ("probe", "probe_max", "probe_lesion")]
    assert all(set(p) == {"progression", "idh"} for p in probes)
    for row in [row for p in probes for row in p.values()]:
        # 3 patients: the probe runs on all of them, or says why not
        assert "error" in row or (0 <= row["encoder"]["estimate"] <= 1 and 0 <= row["random"]["estimate"] <= 1
                                  and row["scope"].startswith("all patients"))
        if "error" not in row:  # the baseline: the mean over three differently initialised random encoders
            random = row["random"]
            assert random["runs"] == 3 and len(random["aucs"]) == 3
            assert random["estimate"] == pytest.approx(np.mean(random["aucs"]))
            assert random["min"] == min(random["aucs"]) and random["max"] == max(random["aucs"])
            assert row["difference"] == pytest.approx(row["encoder"]["estimate"] - random["estimate"])
    lines = job.log.splitlines()
    assert any("probe progression (global embedding)" in line for line in lines)
    assert any("probe progression (lesion embedding)" in line for line in lines)
    queries = mv.metrics["retrieval"]["queries"]
    assert queries and all(len(q["neighbours"]) >= 1 for q in queries)
    patient_of = {e.pk: e.patient_id for e in exams}
    for q in queries:  # neighbours are other patients' exams, most similar first
        sims = [n["similarity"] for n in q["neighbours"]]
        assert sims == sorted(sims, reverse=True)
        assert all(patient_of[n["exam"]] != patient_of[q["exam"]] for n in q["neighbours"])
    assert "curves" in mv.plots
    assert any(k.startswith("recon_inpainting_") for k in mv.plots)
    assert any(k.startswith("recon_crossmodal_") for k in mv.plots)
    for stored in mv.plots.values():
        assert media_path(stored).read_bytes()[:4] == b"\x89PNG"
    # the page shows it to a researcher
    from django.test import Client

    client = Client()
    client.force_login(user_with("researcher", SiteFactory(name="nancy")))
    html = client.get(reverse("registry:detail", args=[mv.pk])).content.decode()
    assert "Linear probe" in html and mv.artifact_sha256 in html

    # resume: the same run (config, cohort, exams) continues from its checkpoint; complete, it
    # trains nothing more and registers the same weights
    call_command("pretrain", "--config", str(config), "--cohort", "tiny", "--held-out", "0.25", "--quiet",
                 "--resume")
    resumed = ModelVersion.objects.get(name="foundation-vit", version=2)
    assert resumed.artifact_sha256 == mv.artifact_sha256 and resumed.parent is None
    # a job retried after its worker was lost (second attempt) resumes on its own; a first attempt
    # of the same run starts afresh
    from apps.jobs.services import job_run

    first = Job.objects.filter(kind="pretrain").order_by("pk").first()
    retried = Job.objects.create(kind="pretrain", params={**first.params, "resume": False}, attempts=1)
    job_run(job_pk=retried.pk)
    retried.refresh_from_db()
    assert retried.status == "succeeded" and retried.attempts == 2, retried.error
    assert "resuming run" in retried.log and "from its last checkpoint" in retried.log
    assert ModelVersion.objects.get(pk=retried.result["model"]).artifact_sha256 == mv.artifact_sha256
    assert "resuming run" not in first.log
    # init from the first version: parent recorded, matching weights loaded
    call_command("pretrain", "--config", str(config), "--cohort", "tiny", "--held-out", "0.25", "--quiet",
                 "--init", str(mv.pk))
    child = ModelVersion.objects.get(name="foundation-vit", version=4)
    assert child.parent == mv
    init_job = Job.objects.filter(kind="pretrain").order_by("-pk").first()
    assert "init from" in init_job.log and "tensors loaded" in init_job.log
    # the same checkpoint given as a file finds its registered version as the parent
    assert _resolve_init(str(checkpoint)) == (checkpoint, mv)
    # a run outside the worker (torchrun): export the index, train with the library's entry point,
    # register the folder; the exams are the exported ones and the split is the same
    export = tmp_path / "export"
    call_command("pretrain", "--config", str(config), "--cohort", "tiny", "--held-out", "0.25",
                 "--export-index", str(export))
    assert "torchrun" in capsys.readouterr().out
    exported = pd.read_csv(export / "index.csv", dtype=str)
    assert sorted(map(int, exported["key"])) == sorted(mv.exams_seen)
    from ml.foundation.train import main as train_main

    assert train_main(["--config", str(config), "--index", str(export), "--out", str(tmp_path / "run")]) == 0
    call_command("pretrain", "--config", str(config), "--cohort", "tiny", "--held-out", "0.25", "--quiet",
                 "--register-run", str(tmp_path / "run"), "--name", "torchrun")
    outside = ModelVersion.objects.get(name="torchrun")
    assert sorted(outside.exams_seen) == sorted(mv.exams_seen)
    assert outside.artifact_sha256 == file_sha256(tmp_path / "run" / "model.pt") and "probe" in outside.metrics
    with pytest.raises(CommandError, match="differs from the given one"):
        call_command("pretrain", "--config", str(_config(tmp_path, "three", epochs=3)), "--cohort", "tiny", "--held-out",
                     "0.25", "--quiet", "--register-run", str(tmp_path / "run"))
    with pytest.raises(CommandError, match="not this cohort's pretraining exams"):
        call_command("pretrain", "--config", str(config), "--cohort", "tiny", "--held-out", "0.5", "--quiet",
                     "--register-run", str(tmp_path / "run"))


@pytest.mark.parametrize("args, message", [
    (["--cohort", "nope"], "no cohort named 'nope'"),
    (["--cohort", "empty", "--init", "/nonexistent/ckpt.pt"], "no such checkpoint file"),
    (["--cohort", "empty", "--init", "999999"], "no model version with that id"),
    (["--cohort", "empty", "--held-out", "1.5"], "--held-out must be in"),
    (["--cohort", "empty"], "has no exams"),
])
def test_pretrain_bad_input_is_a_command_error(tmp_path, args, message):
    from tests.factories import CohortFactory

    CohortFactory(name="empty")
    with pytest.raises(CommandError, match=message):
        call_command("pretrain", "--config", str(_config(tmp_path)), *args, "--quiet")


@pytest.mark.parametrize("content, message", [
    ("seed: [", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("seeed: 1\n", "unknown keys"),
    ("epochs: 0\n", "epochs must be >= 1"),
])
def test_pretrain_bad_config_is_a_command_error(tmp_path, content, message):
    from tests.factories import CohortFactory

    CohortFactory(name="empty")
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(CommandError, match=message):
        call_command("pretrain", "--config", str(path), "--cohort", "empty", "--quiet")
    with pytest.raises(CommandError, match="no such config file"):
        call_command("pretrain", "--config", str(tmp_path / "missing.yaml"), "--cohort", "empty", "--quiet")


def test_init_from_a_foundation_version_without_checkpoint_is_refused(tmp_path):
    from tests.factories import CohortFactory

    CohortFactory(name="empty")
    mv = ModelVersionFactory(task="pretraining", family="foundation", threshold=None, artifact="models/gone.pt")
    with pytest.raises(CommandError, match="checkpoint 'models/gone.pt' is missing"):
        call_command("pretrain", "--config", str(_config(tmp_path)), "--cohort", "empty", "--init", str(mv.pk),
                     "--quiet")

