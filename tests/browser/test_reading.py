"""A reader logs in and reads a sequential case in Chromium: the viewer renders (canvas not blank),
the unaided arm shows no AI, the answer locks and the aided arm shows the AI, then the next case."""
from __future__ import annotations

import io
import os

import numpy as np
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


@pytest.fixture
def http_server(settings):
    from pytest_django.live_server_helper import LiveServer

    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    server = LiveServer("localhost:0")
    yield server
    server.stop()


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
