"""A statistician logs in, opens the results page of a simulated study, downloads the CSV, and the
numbers match: the per-arm mean AUC and every reader's AUC recomputed from the downloaded file
equal what the page shows."""
from __future__ import annotations

import os

import numpy as np
import pytest

from reader_study.analysis import empirical_auc, read_ratings
from reader_study.simulation import readers_simulate
from tests.factories import user_with
from tests.reader_study.factories import study_world

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _same(shown: float, value: float) -> bool:
    """``shown`` is ``value`` at the page's three decimals (half-up or half-even)."""
    return abs(shown - value) <= 0.0005 + 1e-12


def test_statistician_downloads_the_csv_and_the_numbers_match(chromium_browser, http_server, tmp_path):
    study = study_world(n_cases=16, n_readers=5, seed=6)
    readers_simulate(study=study, n_readers=5, seed=2, ai_benefit=1.0)
    user = user_with("statistician", study.cases.first().exam.patient.site, username="stat")
    user.set_password("a-long-password-1")
    user.save()

    context = chromium_browser.new_context(viewport={"width": 1280, "height": 720}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{http_server.url}/accounts/login/")
        page.fill("input[name=username]", "stat")
        page.fill("input[name=password]", "a-long-password-1")
        page.click("button[type=submit]")
        page.wait_for_url(f"{http_server.url}/")
        page.goto(f"{http_server.url}/studies/{study.slug}/results/")
        assert page.inner_text("#results-label") == "Interim: 160 of 160 readings"
        # the figures are real images
        page.wait_for_function("() => [...document.querySelectorAll('figure img')].every(i => i.complete)")
        assert page.evaluate("() => [...document.querySelectorAll('figure img')].every(i => i.naturalWidth > 0)")
        shown_mean = {el.get_attribute("data-arm"): float(el.inner_text()) for el in page.query_selector_all(".mean-auc")}
        shown_reader = {(el.get_attribute("data-reader"), el.get_attribute("data-arm")): float(el.inner_text().split()[0])
                        for el in page.query_selector_all("#reader-table td.auc")}
        shown_difference = float(page.inner_text("#auc-difference"))
        with page.expect_download() as info:
            page.click("#download-csv")
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
    finally:
        context.close()

    assert path.name == f"{study.slug}-readings.csv"
    data = read_ratings(path)
    assert data.is_fully_crossed and data.n_readers == 5 and data.n_cases == 16
    auc = {(r, m): empirical_auc(data.negatives()[t, j], data.positives()[t, j])
           for t, m in enumerate(data.modalities) for j, r in enumerate(data.readers)}
    for (reader, arm), value in auc.items():
        assert _same(shown_reader[(reader, arm)], value), (reader, arm)
    means = {m: np.mean([auc[(r, m)] for r in data.readers]) for m in data.modalities}
    assert set(shown_mean) == {"Without AI", "With AI"}
    assert _same(shown_mean["Without AI"], means["unaided"]) and _same(shown_mean["With AI"], means["aided"])
    assert _same(shown_difference, means["aided"] - means["unaided"])
    assert means["aided"] > means["unaided"]
    assert not errors
