"""A reader logs in and reads a sequential case in Chromium: the viewer renders (canvas not blank),
the unaided arm shows no AI, the answer locks and the aided arm shows the AI, then the next case."""
from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from apps.cohorts.models import Cohort, Exam
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.quantification.services import exam_quantify
from reader_study import services
from reader_study.models import Reading
from tests.factories import (
    ModelVersionFactory,
    PredictionFactory,
    SiteFactory,
    StudyFactory,
    user_with,
)

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
VIEWPORT = {"width": 1280, "height": 720}
SHOTS = os.environ.get("AMINOPET_SCREENSHOTS")  # a folder: keep the pages' screenshots to look at


def _reading_world(bids_copy):
    bids_import(path=bids_copy)
    recurrences = Exam.objects.filter(timepoint="suspected_recurrence").order_by("pk")
    pos = recurrences.filter(diagnosis="progression").first()
    neg = recurrences.filter(diagnosis="treatment_related").first()
    model = ModelVersionFactory()
    for exam, p in ((pos, 0.81), (neg, 0.23)):
        exam_prepare(exam=exam)
        exam_quantify(exam=exam, radiomics=False)
        PredictionFactory(model_version=model, exam=exam, probability=p, decision=p >= 0.5,
                          label="progression" if p >= 0.5 else "treatment_related",
                          explanation={"base_value": 0.0, "output": "log-odds", "contributions": [
                              {"feature": "ts_max", "value": 2.4 if p > 0.5 else 1.3, "shap": 1.2 if p > 0.5 else -1.0},
                              {"feature": "ttp_min", "value": 15.0, "shap": 0.4}]})
    cohort = Cohort.objects.create(name="reading")
    cohort.exams.add(pos, neg)
    coordinator = user_with("coordinator", pos.patient.site)
    reader = user_with("reader", SiteFactory(name=pos.patient.site.name), username="dr-reader")
    reader.set_password("a-long-password-1")
    reader.save()
    study = StudyFactory(cohort=cohort, model_version=model, created_by=coordinator, questionnaire={})
    services.study_cases_set(study=study, user=coordinator)
    services.study_readers_set(study=study, user=coordinator, readers=[reader])
    services.study_open(study=study, user=coordinator)
    return study, reader


def _login(page, base, username):
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "a-long-password-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def _wait_viewer(page):
    page.wait_for_function(
        "() => ['ready', 'drawn', 'error'].includes("
        "document.querySelector('[data-aminopet-viewer]').dataset.viewerState)", timeout=90_000)
    viewer = page.query_selector("[data-aminopet-viewer]")
    # "drawn" (first image on screen) in the current bundle, "ready" in the first one
    assert viewer.get_attribute("data-viewer-state") in ("ready", "drawn"), page.inner_text("[data-aminopet-viewer]")
    page.wait_for_timeout(300)
    png = viewer.query_selector("canvas").screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    assert pixels.std() > 5  # something was drawn
    box = viewer.query_selector("canvas").bounding_box()
    assert box["y"] + box["height"] <= VIEWPORT["height"]  # the images sit above the fold


def test_reader_reads_a_sequential_case(chromium_browser, http_server, bids_copy):
    base = http_server.url
    study, reader = _reading_world(bids_copy)
    context = chromium_browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        _login(page, base, "dr-reader")
        page.click("text=My worklist")
        page.click("text=Open worklist")
        assert "0 / 2" in page.inner_text("main")
        if SHOTS:
            page.screenshot(path=f"{SHOTS}/worklist.png")
        page.click("text=Start reading")
        page.wait_for_url("**/unaided/")
        _wait_viewer(page)
        assert page.query_selector("#ai-output") is None
        text = page.inner_text("main")
        assert "Without AI" in text and "probability" not in text.lower()
        if SHOTS:
            page.screenshot(path=f"{SHOTS}/reading-unaided.png")
        code = page.inner_text(".reading-case strong")
        page.check("input[name=decision][value='1']")
        page.fill("input[name=confidence]", "70")
        page.click("#submit-answer")
        page.wait_for_url("**/aided/")
        _wait_viewer(page)
        ai = page.inner_text("#ai-output")
        assert "probability of progression" in ai and "T/S max" in ai and "towards" in ai
        assert "Research use only" in page.inner_html("#ai-output")
        if SHOTS:
            page.screenshot(path=f"{SHOTS}/reading-aided.png")
        page.check("input[name=decision][value='1']")
        page.check("input[name=ai_agreement][value='agree']")
        page.check("input[name=explanation_usefulness][value='4']")
        page.click("#submit-answer")
        page.wait_for_url("**/unaided/")
        assert page.inner_text(".reading-case strong") != code
        readings = Reading.objects.filter(reader__user=reader, case__code=code, submitted_at__isnull=False)
        assert {r.arm for r in readings} == {"unaided", "aided"}
        unaided = readings.get(arm="unaided")
        assert unaided.confidence == 70 and unaided.active_seconds is not None
        assert not errors, errors
    finally:
        context.close()


def _biopsy_world(bids_copy):
    """An open sequential diagnosis study (biopsy target) of one prepared initial-diagnosis exam."""
    from reader_study.models import StudyTask

    bids_import(path=bids_copy)
    eligible = (Exam.objects.filter(timepoint="initial_diagnosis", patient__who_grade__isnull=False,
                                    masks__kind="aggressive").distinct().order_by("pk"))
    high = eligible.filter(patient__who_grade__gte=3).first()
    low = eligible.filter(patient__who_grade__lt=3).first()
    assert high is not None and low is not None
    model = ModelVersionFactory()
    for exam, p in ((high, 0.7), (low, 0.3)):  # ROC analysis needs a positive and a negative case
        exam_prepare(exam=exam)
        exam_quantify(exam=exam, radiomics=False)
        PredictionFactory(model_version=model, exam=exam, probability=p, decision=p >= 0.5, label="",
                          explanation={"base_value": 0.0, "output": "log-odds", "contributions": [
                              {"feature": "ts_max", "value": 2.1, "shap": 0.8}]})
    exam = high
    cohort = Cohort.objects.create(name="diagnosis")
    from apps.subregions.services import subregions_map

    subregions_map(exam=high, k=2, margin_mm=5.0)  # the aided arm's aggressiveness map and AI target
    cohort.exams.add(high, low)
    coordinator = user_with("coordinator", exam.patient.site)
    reader = user_with("reader", SiteFactory(name=exam.patient.site.name), username="dr-target")
    reader.set_password("a-long-password-1")
    reader.save()
    study = StudyFactory(cohort=cohort, model_version=model, created_by=coordinator, questionnaire={},
                         task=StudyTask.BIOPSY_TARGET, question="Where would you biopsy, and is it high-grade?")
    services.study_cases_set(study=study, user=coordinator)
    services.study_readers_set(study=study, user=coordinator, readers=[reader])
    services.study_open(study=study, user=coordinator)
    return study, reader


def _crosshair(page):
    return page.evaluate("() => document.querySelector('[data-aminopet-viewer]').aminopetViewer.crosshairMm()")


def _click_somewhere_else(page, start):
    """Click in the viewer's canvas until the crosshair leaves ``start`` (the first tile under the
    mouse may be the empty part of the layout); returns the new crosshair in mm."""
    box = page.query_selector("[data-aminopet-viewer] canvas").bounding_box()
    for fx, fy in ((0.2, 0.35), (0.3, 0.6), (0.15, 0.5), (0.6, 0.3), (0.7, 0.6)):
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_timeout(200)
        now = _crosshair(page)
        if max(abs(a - b) for a, b in zip(now, start, strict=True)) > 2.0:
            return now
    raise AssertionError("clicking the viewer never moved the crosshair")


def _set_target(page):
    page.click("#set-target")
    text = page.inner_text("#target-out")
    assert text.endswith("mm (scanner coordinates)"), text
    return [float(part.split()[1]) for part in text.replace(" mm (scanner coordinates)", "").split(", ")]


def test_reader_places_biopsy_targets_in_the_viewer(chromium_browser, http_server, bids_copy):
    """Diagnosis study: the reader clicks in the viewer, sets the target, the page shows it in mm, the
    server stores it (scanner mm and common-grid voxel), a missing answer keeps it, the CSV has it."""
    from reader_study import biopsy
    from reader_study.exports import study_export

    base = http_server.url
    study, reader = _biopsy_world(bids_copy)
    context = chromium_browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        _login(page, base, "dr-target")
        page.goto(f"{base}/studies/{study.slug}/next/")
        page.wait_for_url("**/unaided/")
        _wait_viewer(page)
        assert page.inner_text("#target-out") == "not set"
        lesion = page.evaluate("() => document.querySelector('[data-aminopet-viewer]').aminopetViewer.config.crosshair")
        assert max(abs(a - b) for a, b in zip(_crosshair(page), lesion, strict=True)) < 1.5  # opens on the lesion

        # no target yet: the server asks for it and keeps the rest of the answer
        page.check("input[name=decision][value='1']")
        page.click("#submit-answer")
        page.wait_for_load_state()
        assert "Place the biopsy target" in page.inner_text(".reading-panel")

        _wait_viewer(page)
        clicked = _click_somewhere_else(page, lesion)
        shown = _set_target(page)
        assert shown == [round(v, 1) for v in clicked]
        if SHOTS:
            page.screenshot(path=f"{SHOTS}/reading-biopsy-target.png")
        page.check("input[name=decision][value='1']")
        page.fill("input[name=confidence]", "80")
        page.click("details.comment summary")
        page.fill("textarea[name=comment]", "Enhancing rim, posterior part")
        page.click("#submit-answer")
        page.wait_for_url("**/aided/")
        unaided = Reading.objects.get(reader__user=reader, arm="unaided")
        assert unaided.submitted_at is not None
        assert unaided.target_mm == pytest.approx(shown, abs=1e-6)
        assert unaided.target_voxel == services.target_voxel(shown)

        # aided arm: the AI's aggressiveness map (shown, in its own colours) and its target (a Go-to
        # button); then the reader's target at the lesion, where the viewer opens
        _wait_viewer(page)
        assert "probability" in page.inner_text("#ai-output")
        js = "document.querySelector('[data-aminopet-viewer]').aminopetViewer"
        page.evaluate(f"() => {js}.overlaysReady")
        layer = page.evaluate(f"() => {{ const v = {js}; const l = v.layers.get('aggressiveness'); "
                              "const vol = v.nv.volumes[v.nv.getVolumeIndexByID(l.image.id)]; "
                              "return {opacity: vol.opacity, colormap: vol.colormap, pet: v.nv.volumes[1].colormap, "
                              "lo: vol.cal_min, hi: vol.cal_max, max: vol.global_max}; }")
        assert layer["opacity"] > 0 and layer["colormap"] == "cool" and layer["pet"] == "warm", layer
        # only the upper part of the map's positive values: the zeros outside the tumour stay transparent
        assert 0 < layer["lo"] < layer["hi"] and layer["lo"] == pytest.approx(0.25 * layer["hi"], rel=1e-3), layer
        page.get_by_role("button", name=f"Go to {biopsy.AI_TARGET_NAME}").click()
        page.wait_for_timeout(300)
        ai_target = biopsy.study_map(study, unaided.case.exam_id).targets["map"]["mni_mm"]
        assert max(abs(a - b) for a, b in zip(_crosshair(page), ai_target, strict=True)) < 1.5
        if SHOTS:
            page.screenshot(path=f"{SHOTS}/reading-biopsy-aided.png")
        page.get_by_role("button", name="Go to Lesion (SUVmax)").click()
        page.wait_for_timeout(300)
        at_lesion = _set_target(page)
        assert max(abs(a - b) for a, b in zip(at_lesion, lesion, strict=True)) < 1.5
        # a missing agreement brings the form back with the target kept and shown
        page.check("input[name=decision][value='1']")
        page.click("#submit-answer")
        page.wait_for_load_state()
        assert "x " in page.inner_text("#target-out") and "mm" in page.inner_text("#target-out")
        page.check("input[name=decision][value='1']")
        page.check("input[name=ai_agreement][value='agree']")
        page.check("input[name=explanation_usefulness][value='4']")
        page.click("#submit-answer")
        page.wait_for_load_state()
        aided = Reading.objects.get(reader__user=reader, arm="aided")
        assert aided.submitted_at is not None and aided.target_mm == pytest.approx(at_lesion, abs=1e-6)
        assert aided.target_voxel == services.target_voxel(at_lesion)
        assert not errors, errors
    finally:
        context.close()

    table = pd.read_csv(io.BytesIO(study_export(study=study, format="csv").content), keep_default_na=False)
    by_arm = {row["modality"]: row for _, row in table.iterrows()}
    for arm, reading in (("unaided", unaided), ("aided", aided)):
        row = by_arm[arm]
        assert [row["target_x_mm"], row["target_y_mm"], row["target_z_mm"]] == pytest.approx(reading.target_mm)
        assert [row["target_i"], row["target_j"], row["target_k"]] == reading.target_voxel
    assert by_arm["unaided"]["comment"] == "Enhancing rim, posterior part" and by_arm["aided"]["comment"] == ""
