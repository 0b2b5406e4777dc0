"""A coordinator logs in through the browser and reads an imported exam at 1280x720: the NiiVue viewer
opens above the fold on the tumour SUVmax with the PET in SUV, says "Loading images…" until the first
image is drawn, and the overlays (tumour VOI, parametric maps) toggle with their opacity; the QC
thumbnails and the quantification table are there too."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from apps.cohorts.models import Exam
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.prepare import exam_prepare
from apps.cohorts.services.store import media_path
from apps.quantification.services import exam_quantify
from tests.browser.conftest import pixels
from tests.factories import SiteFactory, user_with

# Playwright's sync API keeps an event loop in this thread (from the session-scoped browser on), and
# the ORM calls of this test are synchronous; set for the whole process, as early as collection.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VIEWER = "[data-aminopet-viewer]"
JS_VIEWER = f"document.querySelector('{VIEWER}').aminopetViewer"



def _green(rgb: np.ndarray) -> float:
    return float(np.mean((rgb[..., 1] - rgb[..., 0] > 50) & (rgb[..., 1] - rgb[..., 2] > 50)))


def _red(rgb: np.ndarray) -> float:
    return float(np.mean((rgb[..., 0] - rgb[..., 1] > 90) & (rgb[..., 0] - rgb[..., 2] > 90)))


def test_coordinator_reads_an_exam(page_720, http_server, one_subject, tmp_path):
    page, live_server = page_720, http_server
    bids_import(path=one_subject)
    exam = Exam.objects.get(code="02")
    exam_prepare(exam=exam)
    quant = exam_quantify(exam=exam, radiomics=False)
    pet = exam.volumes.get(kind="pet_static", space="common")
    user = user_with("coordinator", SiteFactory(name=exam.patient.site.name), username="coord")
    user.set_password("a-long-password-1")
    user.save()

    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "coord")
    page.fill("input[name=password]", "a-long-password-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")

    # hold the PET back: the viewer must say it is loading, and not claim an image
    held = []
    page.route(f"**/cohort/volumes/{pet.pk}/file/", lambda route: held.append(route))
    page.goto(f"{live_server.url}/cohort/exams/{exam.pk}/")
    page.wait_for_function(f"() => {JS_VIEWER} && {JS_VIEWER}.ui", timeout=60_000)
    status = page.locator(f"{VIEWER} [role=status]")
    assert status.is_visible() and status.inner_text() == "Loading images…"
    page.wait_for_timeout(500)
    assert page.get_attribute(VIEWER, "data-viewer-state") == "loading"
    for _ in range(300):  # the PET request arrives (route handlers run while Playwright waits)
        if held:
            break
        page.wait_for_timeout(100)
    assert held and page.get_attribute(VIEWER, "data-viewer-state") == "loading"
    for route in held:
        route.continue_()
    page.unroute(f"**/cohort/volumes/{pet.pk}/file/")
    page.wait_for_function(f"() => ['drawn', 'error'].includes(document.querySelector('{VIEWER}').dataset.viewerState)",
                           timeout=90_000)
    assert page.get_attribute(VIEWER, "data-viewer-state") == "drawn", page.inner_text(VIEWER)
    assert not status.is_visible()

    # the page itself: quantification table and real thumbnails
    assert f"{quant.tbr_max:.2f}" in page.inner_text("#quantification")
    # thumbnails below the fold load lazily (after the viewer's volumes), and are real images
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.complete)", timeout=30_000)
    assert page.evaluate("() => [...document.querySelectorAll('img.thumb')].every(i => i.naturalWidth > 0)")

    # crosshair on the lesion: the tumour SUVmax voxel of the common grid the viewer shows
    # (independent: nibabel on the stored common-grid PET and tumour mask), near the native one
    crosshair = page.evaluate(f"() => {JS_VIEWER}.crosshairMm()")
    tumour = nib.load(media_path(exam.masks.get(kind="tumor", space="common", grid=pet).file.name))
    pet_common = nib.load(media_path(pet.file.name))
    hottest = np.unravel_index(np.argmax(np.where(np.asarray(tumour.dataobj) > 0.5,
                                                  np.asarray(pet_common.dataobj, dtype=float), -np.inf)),
                               tumour.shape)
    np.testing.assert_allclose(crosshair, nib.affines.apply_affine(tumour.affine, hottest), atol=1e-2)
    # the same lesion: resampling to the template grid keeps most of the native SUVmax there
    assert np.asarray(pet_common.dataobj, dtype=float)[hottest] > 0.8 * quant.suv_max
    # the read-out is the common-grid PET there, in SUV (independent: nibabel at the nearest voxel)
    img = nib.load(media_path(pet.file.name))
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(img.affine), crosshair)).astype(int)
    data = np.asarray(img.dataobj, dtype=float)
    near = data[tuple(slice(max(0, i - 1), i + 2) for i in ijk)]
    readout = page.inner_text("[data-readout-layer='pet']")
    assert readout.endswith(" SUV"), readout
    assert near.min() - 1e-3 <= float(readout.split()[0]) <= near.max() + 1e-3
    assert float(readout.split()[0]) > 1.6 * quant.config["static"]["background_mean"]  # tumour-hot
    # the PET window is in SUV, from TBR 1.6 to SUVmax
    assert float(page.get_by_label("FDOPA PET min").input_value()) == pytest.approx(
        1.6 * quant.config["static"]["background_mean"], abs=2e-3)
    assert float(page.get_by_label("FDOPA PET max").input_value()) == pytest.approx(quant.suv_max, abs=2e-3)

    # every overlay toggles with its opacity; the TAC chart is drawn in SUV against minutes
    page.evaluate(f"() => {JS_VIEWER}.overlaysReady")
    names = page.evaluate(f"() => {JS_VIEWER}.nv.volumes.map(v => v.name)")
    assert len(names) == 5  # T1c + PET + tumour VOI + TTP map + slope map
    canvas = page.locator(f"{VIEWER} canvas")
    before = pixels(canvas)
    assert before.std() > 5  # not blank
    opacity = ("key => { const v = " + JS_VIEWER + "; "
               "return v.nv.volumes[v.nv.getVolumeIndexByID(v.layers.get(key).image.id)].opacity; }")
    for key, name in (("voi", "Tumour VOI"), ("ttp", "TTP map"), ("slope", "Slope map")):
        assert page.evaluate(opacity, key) == 0
        page.get_by_role("checkbox", name=name).check()
        page.wait_for_function(f"key => ({opacity})(key) > 0", arg=key)
        page.get_by_label(f"{name} opacity").fill("0.9")
        assert page.evaluate(opacity, key) == pytest.approx(0.9)
        if key == "voi":
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            assert _red(pixels(canvas)) > _red(before), "the VOI shows in red"
        page.get_by_role("checkbox", name=name).uncheck()
        assert page.evaluate(opacity, key) == 0
    assert page.locator("[data-tac] path[data-curve='tumor']").count() == 1
    assert "SUV vs min" in page.inner_text("[data-tac]")

    # above the fold at 1280x720: the viewer and its controls are on the first screen
    page.evaluate("() => window.scrollTo(0, 0)")
    for selector in (VIEWER, f"{VIEWER} canvas", "[data-slice-type='render']", "[data-control='pet-max']",
                     "[data-layer-toggle='slope']", "[data-readout-layer='pet']", "[data-control='frame']",
                     "[data-tac]"):
        box = page.locator(selector).first.bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= 720, (selector, box)
    assert page.locator(f"{VIEWER} canvas").bounding_box()["height"] >= 380
    page.screenshot(path=str(tmp_path / "exam-page-1280x720.png"))
    assert not [e for e in page.console_errors if "favicon" not in e], page.console_errors
