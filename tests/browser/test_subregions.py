"""A neurosurgeon's view of the subregion map at 1280x720: the exam page's viewer shows the habitats
over PET/MRI (a label overlay that toggles), "Go to" buttons for the three biopsy targets that move
the crosshair to each target, and the panel's legend in words and units with the downloads."""
from __future__ import annotations

import os

import numpy as np
import pytest

from apps.cohorts.models import Exam
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.quantification.services import exam_quantify
from apps.subregions.models import SubregionMap
from apps.subregions.services import subregions_map
from tests.browser.conftest import pixels
from tests.factories import SiteFactory, user_with

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VIEWER = "[data-aminopet-viewer]"
JS_VIEWER = f"document.querySelector('{VIEWER}').aminopetViewer"



def test_neurosurgeon_reads_the_subregion_map(page_720, http_server, one_subject, tmp_path):
    page, live_server = page_720, http_server
    bids_import(path=one_subject, cohort_name="one")
    exam = Exam.objects.get(timepoint="initial_diagnosis")
    exam_prepare(exam=exam)
    exam_quantify(exam=exam, radiomics=False)
    subregions_map(cohort="one", exam=exam, k=2, margin_mm=5.0)
    sm = SubregionMap.objects.get(exam=exam)
    user = user_with("coordinator", SiteFactory(name=exam.patient.site.name), username="surgeon")
    user.set_password("a-long-password-1")
    user.save()
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "surgeon")
    page.fill("input[name=password]", "a-long-password-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")

    page.goto(f"{live_server.url}/cohort/exams/{exam.pk}/")
    page.wait_for_function(f"() => ['drawn', 'error'].includes(document.querySelector('{VIEWER}').dataset.viewerState)",
                           timeout=90_000)
    assert page.get_attribute(VIEWER, "data-viewer-state") == "drawn", page.inner_text(VIEWER)
    page.evaluate(f"() => {JS_VIEWER}.overlaysReady")
    names = page.evaluate(f"() => {JS_VIEWER}.nv.volumes.map(v => v.name)")
    assert len(names) == 7  # T1c + PET + VOI + TTP + slope + habitats + aggressiveness
    opacity = ("key => { const v = " + JS_VIEWER + "; "
               "return v.nv.volumes[v.nv.getVolumeIndexByID(v.layers.get(key).image.id)].opacity; }")
    assert page.evaluate(opacity, "habitats") > 0 and page.evaluate(opacity, "aggressiveness") == 0

    # the learned target: its button moves the crosshair there (MNI mm of the common grid)
    page.get_by_role("button", name="Go to Biopsy target (learned map)").click()
    page.wait_for_timeout(300)
    np.testing.assert_allclose(page.evaluate(f"() => {JS_VIEWER}.crosshairMm()"), sm.targets["map"]["mni_mm"],
                               atol=1.01)
    canvas = page.locator(f"{VIEWER} canvas")
    with_habitats = pixels(canvas)
    page.get_by_role("checkbox", name="Habitats").uncheck()
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    without = pixels(canvas)
    assert np.abs(with_habitats - without).mean() > 0.5, "the habitats overlay colours the tumour"
    page.get_by_role("checkbox", name="Habitats").check()
    page.screenshot(path=str(tmp_path / "subregions-viewer-1280x720.png"))

    # the panel: targets in words and units, habitats, downloads
    panel = page.locator("#subregions")
    panel.scroll_into_view_if_needed()
    text = panel.inner_text()
    t = sm.targets["map"]
    assert (f"Biopsy target (learned map): {t['scanner_mm'][0]:.1f}, {t['scanner_mm'][1]:.1f}, "
            f"{t['scanner_mm'][2]:.1f} mm scanner (t1c); {t['border_distance_mm']:.0f} mm from the tumour border") in text
    assert "SUVmax hotspot (routine):" in text and "Earliest-TTP cluster (Kunz 2011):" in text
    assert page.locator("#subregions table[aria-label=Habitats] tbody tr").count() == 2
    for label in ("point list (CSV, scanner mm)", "target region (NIfTI, common grid)"):
        href = page.get_by_role("link", name=label).get_attribute("href")
        assert page.request.get(f"{live_server.url}{href}").status == 200
    panel.screenshot(path=str(tmp_path / "subregions-panel.png"))
    assert not [e for e in page.console_errors if "favicon" not in e], page.console_errors
