"""Predictions that know where they stand: the development data's description stored at training,
warnings on exams from an unseen site / frame schedule / voxel size / background method / feature
range (model, API, exam page), model names by task-rule-feature, and the external evaluation once
the labels arrive after the images."""
from __future__ import annotations

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from sklearn.metrics import roc_auc_score

from apps.cohorts.models import Cohort, Exam
from apps.cohorts.services.labels import labels_import
from apps.registry.models import Prediction
from apps.registry.services import TrainingError, classical_train, model_evaluate, predictions_make
from tests.factories import (
    ExamFactory,
    ExamQuantificationFactory,
    SiteFactory,
    VolumeFactory,
    user_with,
)

pytestmark = pytest.mark.django_db

HOME_FRAMES = [10.0] * 6 + [30.0] * 4 + [60.0] * 4 + [120.0] * 4 + [300.0] * 3
AWAY_FRAMES = [15.0] * 8 + [60.0] * 4 + [180.0] * 5 + [360.0]


def _exam(site, code, *, tbr, diagnosis, frames, voxel, background):
    exam = ExamFactory(patient__site=site, patient__code=code, code="02", diagnosis=diagnosis,
                       diagnosis_basis="unknown" if diagnosis == "unknown" else "histology")
    VolumeFactory(exam=exam, kind="pet_static", voxel_size=voxel)
    VolumeFactory(exam=exam, kind="pet_dynamic", voxel_size=voxel, shape=[8, 8, 8, len(frames)],
                  frame_start_s=list(np.cumsum([0.0, *frames[:-1]])), frame_duration_s=frames)
    ExamQuantificationFactory(exam=exam, tbr_max=tbr, ts_max=tbr / 2, background_source=background)
    return exam


@pytest.fixture
def trained():
    home, away = SiteFactory(name="home"), SiteFactory(name="away")
    train = Cohort.objects.create(name="train")
    for i in range(16):
        progression = i % 2 == 0
        tbr = (2.4 if progression else 1.6) + 0.05 * i
        train.exams.add(_exam(home, f"H{i:02d}", tbr=tbr, diagnosis="progression" if progression else
                              "treatment_related", frames=HOME_FRAMES, voxel=[2.0, 2.0, 2.0], background="given"))
    external = Cohort.objects.create(name="external")
    truth = {}
    for i, tbr in enumerate([1.5, 1.7, 2.6, 2.9, 1.8, 9.0]):  # 9.0: far above anything seen
        truth[f"A{i:02d}"] = "progression" if tbr > 2.2 else "treatment_related"
        external.exams.add(_exam(away, f"A{i:02d}", tbr=tbr, diagnosis="unknown", frames=AWAY_FRAMES,
                                 voxel=[4.0, 4.0, 4.0], background="mirrored"))
    mv = classical_train(task="progression", cohort="train", algorithm="threshold", threshold_feature="tbr_max",
                         n_bootstrap=50)
    return {"model": mv, "truth": truth, "home": home, "away": away}


def test_model_name_and_development_description(trained):
    mv = trained["model"]
    assert mv.name == "progression-rule-tbr-max" and mv.family == "rule"
    dev = mv.config["development"]
    assert dev["sites"] == ["home"] and dev["n_exams"] == 16
    assert dev["frame_schedules"] == ["6x10s 4x30s 4x60s 4x120s 3x300s"]
    assert dev["voxel_sizes_mm"] == [[2.0, 2.0, 2.0]] and dev["background_methods"] == ["given"]
    assert dev["feature_ranges"]["tbr_max"]["min"] == pytest.approx(1.65)
    assert dev["feature_ranges"]["tbr_max"]["max"] == pytest.approx(2.4 + 0.05 * 14)


def test_external_site_predictions_carry_warnings(trained, client):
    mv = trained["model"]
    assert predictions_make(model_version=mv, cohort="external") == 6
    assert predictions_make(model_version=mv, cohort="train") == 16
    away = Prediction.objects.filter(exam__patient__site__name="away")
    for p in away:
        codes = {w["code"] for w in p.warnings}
        assert {"site_unseen", "frame_schedule_unseen", "voxel_size_unseen", "background_method_unseen"} <= codes
    far = away.get(exam__patient__code="A05")
    assert any(w["code"] == "feature_out_of_range" and "tbr_max = 9" in w["message"] for w in far.warnings)
    assert not any(w["code"] == "feature_out_of_range" for w in away.get(exam__patient__code="A01").warnings)
    assert all(p.warnings == [] for p in Prediction.objects.filter(exam__patient__site__name="home"))
    # In the API and on the exam page.
    client.force_login(user_with("researcher", trained["away"]))
    rows = client.get(reverse("api:prediction-list")).json()
    rows = rows["results"] if isinstance(rows, dict) else rows
    assert rows and all(any(w["code"] == "site_unseen" for w in r["warnings"]) for r in rows)
    html = client.get(reverse("cohorts:exam", args=[far.exam_id])).content.decode()
    assert "outside its development data" in html and "Site away was not in the model&#x27;s development data" in html


def test_timepoint_override_where_the_task_allows_it(trained):
    with pytest.raises(TrainingError, match="applies to suspected_recurrence exams, not initial_diagnosis"):
        predictions_make(model_version=trained["model"], cohort="external", timepoint="initial_diagnosis")
    with pytest.raises(CommandError, match="applies to suspected_recurrence"):
        call_command("predict", "--model", str(trained["model"].pk), "--site", "away",
                     "--timepoint", "initial_diagnosis")


def test_external_evaluation_once_labels_arrive(trained):
    mv = trained["model"]
    with pytest.raises(TrainingError, match="no suspected_recurrence exam has a known label"):
        model_evaluate(model_version=mv, site="away", n_bootstrap=50)
    spell = {"progression": "PD", "treatment_related": "TRC"}
    tsv = "participant_id\tsession_id\tdiagnosis\tdiagnosis_basis\n" + "".join(
        f"sub-{code}\tses-02\t{spell[d]}\tbiopsy\n" for code, d in trained["truth"].items())
    labels_import(site="away", content=tsv)
    result = model_evaluate(model_version=mv, site="away", n_bootstrap=50)
    assert result["n"] == 6 and result["n_positive"] == 3
    y = [1 if trained["truth"][c] == "progression" else 0 for c in sorted(trained["truth"])]
    prob = {int(pk): p for pk, p in zip(result["cases"], result["prob"], strict=True)}
    codes = {e.pk: e.patient.code for e in Exam.objects.filter(pk__in=prob)}
    ordered = [prob[pk] for pk in sorted(prob, key=lambda pk: codes[pk])]
    assert result["metrics"]["auc"]["estimate"] == pytest.approx(roc_auc_score(y, ordered))
    mv.refresh_from_db()
    assert mv.metrics["evaluations"]["site:away:suspected_recurrence"]["n"] == 6
    out = call_command("evaluate_model", "--model", str(mv.pk), "--site", "away", "--bootstrap", "50")
    assert out is None
