"""Issue 5 in the platform: quantification jobs, the CSV, training with nested CV and an external
site, the registry pages and API, predictions with SHAP on the exam page."""
from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command
from django.db.models import F
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.cohorts.models import Exam
from apps.cohorts.services.bids import bids_import
from apps.quantification.models import ExamQuantification, RadiomicsFeatures
from apps.quantification.services import CSV_COLUMNS, exam_quantify
from apps.registry.models import ModelVersion, Prediction
from ml.quant import quantify_files
from tests.factories import SiteFactory, user_with

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def training_bids(tmp_path_factory):
    from ml.phantoms import generate_cohort

    out = tmp_path_factory.mktemp("train") / "bids"
    generate_cohort(out, n_patients=24, n_sites=2, seed=5)
    return out


def test_quantify_matches_the_library_on_the_bids_files(one_subject, settings):
    bids_import(path=one_subject)
    exam = Exam.objects.get(code="02")
    quant = exam_quantify(exam=exam)
    # independent path: the library reading the BIDS files and sidecars directly
    ses = next(one_subject.glob("sub-*/ses-02"))
    der = next(one_subject.glob("derivatives/groundtruth/sub-*/ses-02/pet"))
    ref = quantify_files(
        pet_static=next(ses.glob("pet/*acstat_pet.nii.gz")), pet_dynamic=next(ses.glob("pet/*acdyn_pet.nii.gz")),
        tumor_mask=next(der.glob("*desc-tumor_mask.nii.gz")), striatum_mask=next(der.glob("*desc-striatum_mask.nii.gz")),
        background_mask=next(der.glob("*desc-background_mask.nii.gz")),
    ).to_row()
    for key in ("suv_max", "tbr_max", "ts_max", "mtv_ml", "ttp_min", "slope_suv_per_h"):
        assert getattr(quant, key) == pytest.approx(ref[key], rel=1e-6), key
    assert quant.curve_class == ref["curve_class"]
    assert set(quant.tacs) >= {"tumor", "background", "striatum"} and quant.ttp_map and quant.tac_plot
    assert RadiomicsFeatures.objects.filter(exam=exam, image_type="pet_suv").exists()
    # the exam page shows the table, the TAC plot and the viewer with the parametric maps (on the
    # common grid, so once the exam is prepared)
    from apps.cohorts.services.prepare import exam_prepare

    exam_prepare(exam=exam)
    client_user = user_with("coordinator", exam.patient.site)
    from django.test import Client

    client = Client()
    client.force_login(client_user)
    html = client.get(reverse("cohorts:exam", args=[exam.pk])).content.decode()
    assert "TBRmax" in html and f"{quant.tbr_max:.2f}" in html
    assert reverse("quantification:map", args=[exam.pk, "ttp"]) in html and "data-aminopet-viewer" in html
    tac = client.get(reverse("quantification:map", args=[exam.pk, "tac"]))
    assert b"".join(tac.streaming_content)[:4] == b"\x89PNG"


def test_quantify_command_writes_the_csv(one_subject, tmp_path):
    bids_import(path=one_subject, cohort_name="one")
    out = tmp_path / "q.csv"
    call_command("quantify", "--cohort", "one", "--csv", str(out), "--no-radiomics", "--quiet")
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 2
    assert all(float(r["tbr_max"]) > 1.0 for r in rows)
    with pytest.raises(CommandError, match="no cohort named"):
        call_command("quantify", "--cohort", "nope")
    with pytest.raises(CommandError, match="no radiomics features"):
        call_command("quantify", "--cohort", "one", "--features-csv", str(tmp_path / "f.csv"), "--quiet",
                     "--no-radiomics")
    call_command("quantify", "--cohort", "one", "--timepoint", "initial_diagnosis",
                 "--features-csv", str(tmp_path / "f.csv"), "--quiet")
    table = pd.read_csv(tmp_path / "f.csv", index_col="exam")
    assert len(table) == 1 and "pet_suv__original_firstorder_Maximum" in table.columns
    # radiomics resample to 2 mm isotropic first (ml/radiomics/params.yaml): close to SUVmax, not equal
    assert table["pet_suv__original_firstorder_Maximum"].iloc[0] == pytest.approx(
        ExamQuantification.objects.get(exam__code="01").suv_max, rel=0.12)


def test_quantify_without_masks_uses_automatic_vois(one_subject):
    """Issue 10: a site that supplies no masks gets automatic tumour, striatum and background VOIs,
    and the stored quantification says so."""
    for mask in one_subject.glob("derivatives/*/sub-*/ses-01/*/*desc-*_mask.nii.gz"):
        mask.unlink()
    bids_import(path=one_subject)
    from apps.jobs.services import job_run_inline

    exam = Exam.objects.get(code="01")
    assert not exam.masks.exists()
    job = job_run_inline(kind="quantify_exam", params={"exam": exam.pk})
    assert job.status == "succeeded", job.message
    quant = ExamQuantification.objects.get(exam=exam)
    assert quant.voi_sources == {"tumor": "automatic", "striatum": "automatic", "background": "mirrored"}
    assert quant.config["auto_voi"]["config"]["threshold_tbr"] == 1.6
    assert quant.tbr_max > 1.6 and quant.mtv_ml > 0 and quant.ts_max > 0


@pytest.mark.slow
def test_train_register_predict(training_bids, client):
    bids_import(path=training_bids, cohort_name="train")
    sites = sorted(set(Exam.objects.values_list("patient__site__name", flat=True)))
    call_command("quantify", "--cohort", "train", "--timepoint", "suspected_recurrence", "--no-radiomics",
                 "--quiet")
    call_command("train_classical", "--task", "progression", "--cohort", "train", "--model", "logreg",
                 "--external-site", sites[1], "--bootstrap", "200", "--quiet")
    mv = ModelVersion.objects.get()
    cv, ext = mv.metrics["cv"], mv.metrics["external"]
    recurrences = Exam.objects.filter(timepoint="suspected_recurrence")
    assert cv["n"] + ext["n"] == recurrences.exclude(diagnosis="unknown").count()
    assert ext["name"] == f"external:{sites[1]}" and mv.external_site.name == sites[1]
    for ev in (cv, ext):
        auc = ev["metrics"]["auc"]
        assert auc["lower"] <= auc["estimate"] <= auc["upper"]
        # the stored AUC is the Mann-Whitney AUC of the stored per-case predictions
        y, p = np.array(ev["y_true"]), np.array(ev["prob"])
        pos, neg = p[y == 1], p[y == 0]
        mw = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
        assert auc["estimate"] == pytest.approx(mw)
    assert set(mv.plots) >= {"cv_roc", "cv_calibration", "external_roc", "external_calibration"}
    # the threshold rule, the routine comparator
    call_command("train_classical", "--task", "progression", "--cohort", "train", "--model", "threshold",
                 "--bootstrap", "100", "--quiet")
    rule = ModelVersion.objects.get(algorithm="threshold")
    assert rule.metrics["rule"]["feature"] == "ts_max" and rule.family == "rule"
    # ts_max rule on the development data: the cut-off separates as Youden says
    q = pd.DataFrame.from_records(ExamQuantification.objects.filter(exam__in=recurrences)
                                  .values("ts_max", "exam__diagnosis"))
    assert q["ts_max"].min() <= rule.metrics["rule"]["cutoff"] <= q["ts_max"].max()

    call_command("predict", "--model", str(mv.pk), "--cohort", "train", "--quiet")
    preds = Prediction.objects.filter(model_version=mv)
    assert preds.count() == recurrences.count()
    p = preds.first()
    assert 0 <= p.probability <= 1 and p.decision == (p.probability >= p.threshold)
    assert p.explanation["contributions"] and p.explanation["contributions"][0]["feature"] in mv.features
    # registrations and predictions are in the audit trail; a prediction that changes is never silent
    assert AuditEvent.objects.filter(action="model.register").count() == 2
    made = AuditEvent.objects.get(action="predictions.make")
    assert made.details["created"] == preds.count() and made.details["changed"] == []
    changed_exam = preds.order_by("probability").first().exam_id
    ExamQuantification.objects.filter(exam_id=changed_exam).update(ts_max=F("ts_max") * 4, tbr_max=F("tbr_max") * 4)
    call_command("predict", "--model", str(mv.pk), "--cohort", "train", "--quiet")
    again = AuditEvent.objects.filter(action="predictions.make").latest("id")
    assert again.details["created"] == 0
    assert [c["exam"] for c in again.details["changed"]] == [changed_exam]
    assert again.details["changed"][0]["after"] == Prediction.objects.get(model_version=mv, exam_id=changed_exam).probability

    researcher = user_with("researcher", SiteFactory(name=sites[0]))
    client.force_login(researcher)
    page = client.get(reverse("registry:detail", args=[mv.pk])).content.decode()
    assert f"{cv['metrics']['auc']['estimate']:.3f}" in page and "external:" in page
    assert client.get(reverse("registry:plot", args=[mv.pk, "cv_roc"])).status_code == 200
    api = client.get(reverse("api:model-detail", args=[mv.pk])).json()
    assert api["metrics"]["cv"]["metrics"]["auc"]["estimate"] == cv["metrics"]["auc"]["estimate"]
    exam_page = client.get(reverse("cohorts:exam", args=[p.exam_id])).content.decode()
    assert "Model predictions" in exam_page or p.exam.patient.site.name != sites[0]
    with pytest.raises(CommandError, match="no model version"):
        call_command("predict", "--model", "9999", "--cohort", "train")
