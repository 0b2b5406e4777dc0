"""A coordinator creates a reader study in Chromium, checks it and opens it."""
from __future__ import annotations

import os

import pytest

from reader_study.models import Study
from tests.reader_study.conftest import make_world

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SHOTS = os.environ.get("AMINOPET_SCREENSHOTS")


def test_coordinator_creates_and_opens_a_study(chromium_browser, http_server):
    base = http_server.url
    w = make_world()
    w["study"].delete()
    coordinator = w["coordinator"]
    coordinator.set_password("a-long-password-1")
    coordinator.save()
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    try:
        page.goto(f"{base}/accounts/login/")
        page.fill("input[name=username]", coordinator.username)
        page.fill("input[name=password]", "a-long-password-1")
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        page.click("text=Studies")
        page.click("text=New study")
        page.fill("input[name=title]", "FDOPA recurrence study")
        page.fill("textarea[name=question]", "Progression or treatment-related change?")
        page.select_option("select[name=design]", "sequential")
        page.select_option("select[name=cohort]", w["cohort"].name)
        page.select_option("select[name=model_version]", str(w["model"].pk))
        for reader in w["readers"]:
            page.check(f"input[name=readers][value='{reader.pk}']")
        if SHOTS:
            page.screenshot(path=f"{SHOTS}/study-form.png", full_page=True)
        page.click("form.study-form button[type=submit]")
        page.wait_for_load_state()
        assert "/studies/fdopa-recurrence-study/" in page.url, (page.url, page.inner_text("main")[:1500])
        assert "Draft" in page.inner_text("h1")
        page.click("text=Open the study")
        page.wait_for_selector("text=Study opened")
        study = Study.objects.get(slug="fdopa-recurrence-study")
        assert study.status == "open" and study.cases.count() == 6
        assert "0 / 12" in page.inner_text("main")  # two readers, six cases, two arms each
        if SHOTS:
            page.screenshot(path=f"{SHOTS}/study-detail.png", full_page=True)
    finally:
        context.close()
