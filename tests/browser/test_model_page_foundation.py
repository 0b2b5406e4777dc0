"""A researcher reads a pretrained foundation encoder's model page at 1280x720: provenance (parent,
exams seen, checkpoint SHA-256) above the fold, nothing wider than the window (the SHA-256 and the
YAML config wrap or scroll inside their box), every plot loads, the probe table puts the encoder
beside the random encoder, and a retrieval neighbour opens its exam page."""
from __future__ import annotations

import io
import os

import pytest
from PIL import Image, ImageDraw

from apps.cohorts.services.store import StoreTransaction
from tests.apps.test_registry_foundation import foundation_version
from tests.factories import SiteFactory, user_with

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _figure(width: int, height: int, label: str) -> str:
    """A PNG of a real figure's size (matplotlib's reconstruction rows are wide, curves about 4:3)."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([10, 10, width - 10, height - 10], outline="black", width=3)
    draw.text((20, 20), label, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return StoreTransaction().put_bytes(buf.getvalue(), category="plots", suffix=".png")[0]


def test_researcher_reads_the_foundation_model_page(http_server, page_720, tmp_path):
    site = SiteFactory(name="nancy")
    mv, query, mine, theirs = foundation_version(site, SiteFactory(name="lyon"))
    # the library's figure sizes (ml.foundation.probe): curves 440 x 280, reconstructions 528 x 840
    mv.plots = {"curves": _figure(440, 280, "curves"), "recon_inpainting_1": _figure(528, 840, "inpainting"),
                "recon_crossmodal_1": _figure(528, 840, "cross-modal")}
    mv.config = mv.config | {"pretext": {"weight_inpainting": 1.0, "weight_crossmodal": 1.0,
                                          "weight_contrastive": 0.1, "mask_ratio": 0.75}}
    mv.save()
    user_with("researcher", site, username="res")
    page = page_720
    page.goto(f"{http_server.url}/accounts/login/")
    page.fill("input[name=username]", "res")
    page.fill("input[name=password]", "pw-aminopet-1")
    page.click("button[type=submit]")
    page.goto(f"{http_server.url}/models/{mv.pk}/")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(tmp_path / "foundation_page.png"), full_page=True)
    # nothing wider than the window
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    # provenance above the fold
    for text in ("Started from", "Exams seen", "SHA-256"):
        box = page.get_by_text(text, exact=False).first.bounding_box()
        assert box is not None and box["y"] + box["height"] <= 720, text
    sha = page.locator("code", has_text="c0ffee").first.bounding_box()
    assert sha["x"] + sha["width"] <= 1280
    # every plot loads, none wider than its column
    images = page.locator("main img")
    assert images.count() == 3
    for i in range(images.count()):
        img = images.nth(i)
        img.scroll_into_view_if_needed()
        assert img.evaluate("el => el.complete && el.naturalWidth > 0")
        box = img.bounding_box()
        assert box["x"] + box["width"] <= 1280 and box["height"] <= 600  # a figure fits the window's height
        assert box["width"] <= img.evaluate("el => el.naturalWidth") + 1  # never blown up (blurred)
    # the two reconstructions of an exam side by side, inpainting first
    recon = page.locator("#reconstructions + p + .grid figure")
    assert recon.count() == 2 and "inpainting" in recon.nth(0).inner_text().lower()
    assert recon.nth(0).bounding_box()["y"] == recon.nth(1).bounding_box()["y"]
    # the probe: encoder and random encoder side by side, the reason where a task could not be probed
    probe = page.get_by_role("table", name="Linear probe")
    assert "0.810" in probe.inner_text() and "0.550" in probe.inner_text()
    assert "needs at least 2 exams of each class" in probe.inner_text()
    # each embedding says what it pools: the brain mean, the global max, the tumour's patches
    for text in ("mean over the brain", "global max (each feature's maximum over the brain's patches)",
                 "mean over the tumour's patches"):
        assert text in probe.inner_text(), text
    assert probe.bounding_box()["x"] + probe.bounding_box()["width"] <= 1280
    # the losses: first and last epoch, what each measures, the contrastive one beside its chance level
    losses = page.get_by_role("table", name="Losses per pretext task")
    assert "chance 2.708" in losses.inner_text() and "at chance: this task did not learn" in losses.inner_text()
    assert losses.bounding_box()["x"] + losses.bounding_box()["width"] <= 1280
    # the config reads as YAML and stays inside the page
    pre = page.locator("pre").last
    assert "mask_ratio: 0.75" in pre.inner_text()
    assert pre.bounding_box()["x"] + pre.bounding_box()["width"] <= 1280
    # a neighbour opens its exam page; another site's exam is not named
    retrieval = page.get_by_role("table", name="Nearest neighbours")
    assert "an exam of a site you have no data role at" in retrieval.inner_text()
    retrieval.get_by_role("link", name=str(mine)).click()
    page.wait_for_load_state("domcontentloaded")
    assert page.url.endswith(f"/cohort/exams/{mine.pk}/")
    assert not [e for e in page.console_errors if "favicon" not in e]
