"""Linear probes, retrieval and the figures."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ml.foundation.model import encode
from ml.foundation.probe import (
    embed_stacks,
    embed_stacks_pooled,
    linear_probe,
    nearest_neighbours,
    probe_labels,
    probe_report,
    random_encoder,
    reconstruction_png,
    training_curve_png,
)
from ml.foundation.train import pretrain

from .conftest import tiny_encoder_config


def test_linear_probe_separates_informative_features_and_not_noise():
    rng = np.random.default_rng(0)
    n_pat = 40
    groups = np.repeat(np.arange(n_pat), 2)
    y = np.repeat(rng.integers(0, 2, n_pat), 2)
    noise = rng.normal(size=(len(y), 16))
    informative = noise.copy()
    informative[:, 0] += 3.0 * y
    good = linear_probe(informative, y, groups, task="t", n_boot=200)
    bad = linear_probe(noise, y, groups, task="t", n_boot=200)
    assert good.auc > 0.85 and good.ci_low < good.auc < good.ci_high
    assert bad.auc < good.auc - 0.2
    assert good.n_exams == 80 and good.n_positive == int(y.sum())


def test_linear_probe_keeps_patients_apart():
    """A feature that identifies the patient (not the label) must not help: with patient-grouped
    folds a patient's exams are never in training and test at once."""
    rng = np.random.default_rng(1)
    n_pat = 30
    groups = np.repeat(np.arange(n_pat), 2)
    y = np.repeat(rng.integers(0, 2, n_pat), 2)
    patient_code = rng.normal(size=(n_pat, 8))[groups]  # memorising a patient would give AUC ~ 1
    result = linear_probe(patient_code, y, groups, n_boot=100)
    assert result.auc < 0.8


def test_linear_probe_errors():
    with pytest.raises(ValueError, match="at least 2 exams of each class"):
        linear_probe(np.zeros((4, 2)), np.array([0, 0, 0, 1]), np.arange(4))
    with pytest.raises(ValueError, match="differ"):
        linear_probe(np.zeros((4, 2)), np.array([0, 1]), np.arange(4))


def test_probe_labels_and_retrieval(foundation_stacks):
    table = embed_stacks(random_encoder(tiny_encoder_config(img_size=(32, 32, 32))), foundation_stacks)
    assert len(table) == 8 and "e31" in table.columns and "diagnosis" in table.columns
    rows, y, groups = probe_labels(table, "progression")
    assert rows.sum() == 4 and set(table.loc[rows, "timepoint"]) == {"suspected_recurrence"}
    assert list(y) == [int(d == "progression") for d in table.loc[rows, "diagnosis"]]
    rows, y, _ = probe_labels(table, "idh")
    assert set(table.loc[rows, "timepoint"]) == {"initial_diagnosis"}
    query = table.index[0]
    hits = nearest_neighbours(table, query, k=3)
    assert len(hits) == 3 and query not in [h.key for h in hits]
    assert hits[0].similarity >= hits[1].similarity >= hits[2].similarity
    assert set(hits[0].labels) >= {"timepoint", "diagnosis", "idh", "site"}
    with pytest.raises(ValueError, match="unknown probe task"):
        probe_labels(table, "mgmt")


def test_probe_report_pretrained_vs_random_on_a_tiny_cohort(foundation_index, tiny_config, tmp_path):
    run = pretrain(dataclasses.replace(tiny_config, epochs=1), foundation_index, out_dir=tmp_path / "run")
    report = probe_report(run.checkpoint, foundation_index, tasks=("progression",), n_boot=100)
    for side in (report.pretrained, report.random):
        r = side["progression"]
        assert 0.0 <= r.auc <= 1.0 and r.n_exams == 4 and r.n_positive == 2
        assert np.isnan(r.ci_low) or r.ci_low <= r.ci_high
    assert report.difference["progression"] == pytest.approx(
        report.pretrained["progression"].auc - report.random["progression"].auc)
    assert set(report.to_dict()) == {"pretrained", "random", "difference"}


def test_repeated_probes_compare_the_means_over_several_random_encoders(foundation_index, tiny_config, tmp_path):
    run = pretrain(dataclasses.replace(tiny_config, epochs=1), foundation_index, out_dir=tmp_path / "run")
    report = probe_report(run.checkpoint, foundation_index, tasks=("progression",), n_boot=20, repeats=3)
    assert len(report.pretrained_runs) == len(report.random_runs) == 3
    assert report.pretrained is report.pretrained_runs[0] and report.random is report.random_runs[0]
    pre, ran = report.aucs("pretrained", "progression"), report.aucs("random", "progression")
    assert report.difference["progression"] == pytest.approx(np.mean(pre) - np.mean(ran))
    assert report.to_dict()["runs"]["progression"] == {"pretrained_auc": pre, "random_auc": ran}
    # each run's random encoder is another draw: their embeddings differ
    stacks = foundation_index
    config = tiny_encoder_config(img_size=(32, 32, 32))
    a = embed_stacks(random_encoder(config, 0), stacks)
    b = embed_stacks(random_encoder(config, 1), stacks)
    assert not np.allclose(a[["e0", "e1"]].to_numpy(), b[["e0", "e1"]].to_numpy())
    single = probe_report(run.checkpoint, foundation_index, tasks=("progression",), n_boot=20)
    assert single.random_runs == () and single.aucs("random", "progression") == [single.random["progression"].auc]
    assert single.random["progression"].auc == ran[0]  # run 0 is the single probe
    with pytest.raises(ValueError, match="repeats"):
        probe_report(run.checkpoint, foundation_index, tasks=("progression",), repeats=0)


def test_figures(foundation_index, foundation_stacks, tiny_config, tmp_path):
    run = pretrain(dataclasses.replace(tiny_config, epochs=1), foundation_index, out_dir=tmp_path / "run")
    for task in ("inpainting", "crossmodal"):
        png = reconstruction_png(run.checkpoint, foundation_stacks[1], tmp_path / f"{task}.png", task=task)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    with pytest.raises(ValueError, match="task must be"):
        reconstruction_png(run.checkpoint, foundation_stacks[1], tmp_path / "x.png", task="denoise")
    curve = training_curve_png(run.history, tmp_path / "curve.png")
    assert curve.read_bytes()[:4] == b"\x89PNG"


def test_embed_stacks_lesion_pooling(foundation_stacks):
    enc = random_encoder(tiny_encoder_config(img_size=(32, 32, 32)))
    tables = embed_stacks_pooled(enc, foundation_stacks)
    glob, lesion = tables["global"], tables["lesion"]
    cols = [f"e{i}" for i in range(32)]
    assert list(glob.index) == list(lesion.index) and set(glob["pooled_on"]) == {"global"}
    with_tumour = [s.key for s in foundation_stacks if s.masks.get("tumor") is not None and s.masks["tumor"].any()]
    assert with_tumour and set(lesion.loc[with_tumour, "pooled_on"]) == {"lesion"}
    assert not np.allclose(glob.loc[with_tumour, cols].to_numpy(), lesion.loc[with_tumour, cols].to_numpy())
    np.testing.assert_allclose(embed_stacks(enc, foundation_stacks, pooling="lesion")[cols], lesion[cols])
    # the global max embedding: every exam has one (no mask needed), it is encode()'s peak
    peak = tables["max"]
    assert list(peak.index) == list(glob.index) and set(peak["pooled_on"]) == {"max"}
    np.testing.assert_allclose(peak[cols].to_numpy(), np.stack([encode(enc, s).peak for s in foundation_stacks]),
                               rtol=1e-5, atol=1e-6)
    assert (peak[cols].to_numpy() >= glob[cols].to_numpy() - 1e-6).all()  # a maximum is at least the mean
    with pytest.raises(ValueError, match="unknown pooling"):
        embed_stacks(enc, foundation_stacks, pooling="median")
