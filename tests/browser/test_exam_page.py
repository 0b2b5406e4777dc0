"""A coordinator logs in through the browser and reads an imported exam: QC thumbnails, the
quantification table, and the NiiVue viewer with PET fused on MRI and the parametric maps."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from apps.cohorts.models import Exam
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.quantification.services import exam_quantify
from tests.factories import SiteFactory, user_with

# Playwright's sync API keeps an event loop in this thread (from the session-scoped browser on), and
# the ORM calls of this test are synchronous; set for the whole process, as early as collection.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def http_server(settings):
    """A live server started after the settings below (pytest-django's is session-scoped, so it
    would start before function-scoped overrides and redirect plain HTTP to HTTPS)."""
    from pytest_django.live_server_helper import LiveServer

    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    server = LiveServer("localhost:0")
    yield server
    server.stop()


def test_coordinator_reads_an_exam(page, http_server, one_subject):
    live_server = http_server
    bids_import(path=one_subject)
    exam = Exam.objects.get(code="02")
    exam_prepare(exam=exam)
    quant = exam_quantify(exam=exam, radiomics=False)
    user = user_with("coordinator", SiteFactory(name=exam.patient.site.name), username="coord")
    user.set_password("a-long-password-1")
    user.save()

    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "coord")
    page.fill("input[name=password]", "a-long-password-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/cohort/exams/{exam.pk}/")
    assert f"{quant.tbr_max:.2f}" in page.inner_text("#quantification")
    # thumbnails are real images
    assert page.evaluate("() => [...document.querySelectorAll('img.thumb')].every(i => i.naturalWidth > 0)")
    page.wait_for_function(
        "() => ['ready', 'error'].includes(document.querySelector('[data-aminopet-viewer]').dataset.viewerState)",
        timeout=90_000,
    )
    viewer = page.query_selector("[data-aminopet-viewer]")
    assert viewer.get_attribute("data-viewer-state") == "ready", page.inner_text("[data-aminopet-viewer]")
    names = page.evaluate("() => document.querySelector('[data-aminopet-viewer]').aminopetViewer.nv.volumes"
                          ".map(v => v.name)")
    assert len(names) >= 4  # MRI + PET + tumour VOI + TTP map (+ slope map)
    png = viewer.query_selector("canvas").screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    assert pixels.std() > 5  # something was drawn
    assert not [e for e in page.console_errors if "favicon" not in e]
