"""The built viewer bundle in headless Chromium: loads NIfTI volumes, draws, reacts.

Needs `frontend/dist/aminopet/viewer.js` (`npm ci && npm run build` in frontend/) and
/usr/bin/chromium; skips with the reason otherwise. The volumes are small analytic phantoms
written with nibabel: an MRI-like ellipsoid "head" and a PET-like Gaussian hot spot whose
centre voxel has a known value, so the readout under the crosshair can be checked exactly.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.browser

DIST = Path(__file__).resolve().parents[2] / "frontend" / "dist" / "aminopet"
BUNDLE = DIST / "viewer.js"

SHAPE = (40, 48, 36)
VOXEL_MM = 2.0
ORIGIN_MM = np.array([-40.0, -48.0, -30.0])
HOT_VOXEL = (26, 20, 21)  # centre of the PET hot spot
HOT_VALUE = 4.25  # exact in float32
MRI_AT_HOT = 812  # MRI value written at the hot voxel (int16)
N_FRAMES = 4


def _affine() -> np.ndarray:
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = ORIGIN_MM
    return affine


def _voxel_mm(ijk: tuple[int, int, int]) -> list[float]:
    return [float(v) for v in nib.affines.apply_affine(_affine(), ijk)]


def _write_volumes(directory: Path) -> None:
    """MRI-like ellipsoid (int16) and PET-like hot spot on a uniform background (float32)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    radii = np.array(SHAPE) * 0.42
    r = np.sqrt((((grid - centre) / radii) ** 2).sum(-1))
    rng = np.random.default_rng(0)
    mri = np.where(r < 1.0, 600 + 300 * np.cos(np.pi * r) ** 2, 20) + rng.normal(0, 10, SHAPE)
    mri = mri.astype(np.int16)
    mri[HOT_VOXEL] = MRI_AT_HOT
    d2 = ((grid - np.array(HOT_VOXEL)) ** 2).sum(-1)
    pet = np.where(r < 1.0, 1.0, 0.05) + (HOT_VALUE - 1.0) * np.exp(-d2 / (2 * 3.0**2))
    pet = pet.astype(np.float32)
    pet[HOT_VOXEL] = HOT_VALUE
    voi = (d2 <= 3**2).astype(np.uint8)
    # a 4D "dynamic PET": frame k is the static PET scaled by (k + 1) / N_FRAMES
    dyn = np.stack([pet * (k + 1) / N_FRAMES for k in range(N_FRAMES)], axis=-1).astype(np.float32)
    for name, data in (("mri.nii.gz", mri), ("pet.nii.gz", pet), ("voi.nii.gz", voi), ("dyn.nii.gz", dyn)):
        img = nib.Nifti1Image(data, _affine())
        img.set_qform(_affine(), code=1)
        img.set_sform(_affine(), code=1)
        nib.save(img, directory / name)


def _page_html(config: dict, *, as_attribute: bool = False) -> str:
    payload = json.dumps(config)
    if as_attribute:
        viewer = f"<div id='viewer' data-aminopet-viewer data-config='{payload}'></div>"
    else:
        viewer = (
            "<div id='viewer' data-aminopet-viewer>"
            f"<script type='application/json'>{payload}</script></div>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>viewer test</title><link rel='icon' href='data:,'>"
        "<link rel='stylesheet' href='viewer.css'></head><body>"
        f"{viewer}<script src='viewer.js'></script></body></html>"
    )


@pytest.fixture
def site(tmp_path: Path, static_server) -> tuple[Path, str]:
    """A served directory holding the bundle and the two phantoms: (directory, base URL)."""
    if not BUNDLE.exists():
        pytest.skip(f"{BUNDLE} is not built: run `npm ci && npm run build` in frontend/")
    shutil.copy(BUNDLE, tmp_path / "viewer.js")
    shutil.copy(DIST / "viewer.css", tmp_path / "viewer.css")
    _write_volumes(tmp_path)
    return tmp_path, static_server(tmp_path)


CONFIG = {
    "volumes": [
        {"url": "mri.nii.gz", "name": "T1c", "colormap": "gray", "unit": "a.u."},
        {"url": "pet.nii.gz", "name": "FET PET", "colormap": "warm", "opacity": 1.0,
         "cal_min": 1.2, "cal_max": 4.0, "unit": "SUV"},
    ],
    "sliceType": "axial",
    "crosshair": _voxel_mm(HOT_VOXEL),
    "markers": [{"name": "Biopsy target", "mm": _voxel_mm((12, 30, 14)), "color": "#00ff00"}],
}


def _open(page, url: str, *, n_volumes: int = 2) -> None:
    page.goto(url)
    page.wait_for_function(
        "() => ['drawn', 'error'].includes(document.getElementById('viewer').dataset.viewerState)",
        timeout=60_000,
    )
    state = page.eval_on_selector("#viewer", "el => el.dataset.viewerState")
    assert state == "drawn", page.inner_text("#viewer") + "\n" + "\n".join(page.console_errors)
    # `ready` resolves with the first image (base + PET); the overlays follow (`overlaysReady`).
    assert page.evaluate("() => document.getElementById('viewer').aminopetViewer.ready.then(v => v.nv.volumes.length)") >= 2
    assert page.evaluate("() => document.getElementById('viewer').aminopetViewer.overlaysReady"
                         ".then(v => v.nv.volumes.length)") == n_volumes


def _number(text: str) -> float:
    """The number of a readout such as '4.25 SUV'."""
    return float(text.split()[0])


def _canvas_pixels(page, selector: str = "#viewer canvas") -> np.ndarray:
    from PIL import Image

    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    png = page.locator(selector).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def _warm_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels clearly coloured red/orange (the PET colormap), not gray."""
    r, b = rgb[..., 0], rgb[..., 2]
    return float(np.mean((r - b > 60) & (r > 80)))


def test_renders_fused_volumes_with_webgl2(page, site) -> None:
    _, base = site
    (site[0] / "index.html").write_text(_page_html(CONFIG))
    _open(page, f"{base}/index.html")

    assert page.evaluate("() => !!document.querySelector('#viewer canvas').getContext('webgl2')")
    rgb = _canvas_pixels(page)
    assert rgb.shape[0] > 100 and rgb.shape[1] > 100
    assert rgb.var() > 0, "canvas is blank"
    # both the gray MRI and the warm PET hot spot are visible
    assert _warm_fraction(rgb) > 0.002
    gray = (np.abs(rgb[..., 0] - rgb[..., 2]) < 8) & (rgb.mean(-1) > 60)
    assert gray.mean() > 0.05
    assert not page.console_errors, page.console_errors


def test_opacity_slider_changes_rendering(page, site) -> None:
    _, base = site
    (site[0] / "index.html").write_text(_page_html(CONFIG))
    _open(page, f"{base}/index.html")

    opaque = _canvas_pixels(page)
    page.get_by_label("FET PET opacity").fill("0")
    hidden = _canvas_pixels(page)
    assert page.evaluate("() => document.getElementById('viewer').aminopetViewer.nv.volumes[1].opacity") == 0
    assert np.abs(opaque - hidden).mean() > 0.5
    # with the PET hidden only the red crosshair remains coloured
    assert _warm_fraction(hidden) < _warm_fraction(opaque) / 3

    page.get_by_label("FET PET opacity").fill("0.5")
    half = _canvas_pixels(page)
    assert _warm_fraction(hidden) < _warm_fraction(half) <= _warm_fraction(opaque) + 1e-9


def test_readout_shows_values_under_crosshair(page, site) -> None:
    _, base = site
    (site[0] / "index.html").write_text(_page_html(CONFIG))
    _open(page, f"{base}/index.html")

    mm = [float(v) for v in page.inner_text("[data-readout='mm']").split(",")]
    np.testing.assert_allclose(mm, _voxel_mm(HOT_VOXEL), atol=0.05)
    assert page.inner_text("[data-readout-layer='pet']").endswith(" SUV")
    assert _number(page.inner_text("[data-readout-volume='1']")) == pytest.approx(HOT_VALUE)
    assert _number(page.inner_text("[data-readout-volume='0']")) == MRI_AT_HOT

    # "go to marker" moves the crosshair and the readout follows the data there
    target = (12, 30, 14)
    page.get_by_role("button", name="Go to Biopsy target").click()
    mm = [float(v) for v in page.inner_text("[data-readout='mm']").split(",")]
    np.testing.assert_allclose(mm, _voxel_mm(target), atol=0.05)
    pet = nib.load(site[0] / "pet.nii.gz").get_fdata()
    expected = float(f"{pet[target]:.4g}")
    assert _number(page.inner_text("[data-readout-volume='1']")) == pytest.approx(expected, rel=1e-3)


def test_pet_window_inputs_follow_config_and_update_volume(page, site) -> None:
    _, base = site
    (site[0] / "index.html").write_text(_page_html(CONFIG, as_attribute=True))
    _open(page, f"{base}/index.html")

    assert float(page.get_by_label("FET PET min").input_value()) == pytest.approx(1.2)
    assert float(page.get_by_label("FET PET max").input_value()) == pytest.approx(4.0)
    before = _warm_fraction(_canvas_pixels(page))
    page.get_by_label("FET PET min").fill("3.0")
    page.get_by_label("FET PET min").dispatch_event("change")
    cal = page.evaluate("() => { const v = document.getElementById('viewer').aminopetViewer.nv.volumes[1]; return [v.cal_min, v.cal_max]; }")
    assert cal == pytest.approx([3.0, 4.0])
    # a higher threshold shows a smaller hot spot
    assert _warm_fraction(_canvas_pixels(page)) < before

    page.get_by_label("FET PET colormap").select_option("hot")
    assert page.evaluate("() => document.getElementById('viewer').aminopetViewer.nv.volumes[1].colormap") == "hot"


def test_missing_volume_sets_error_state_with_message(page, site) -> None:
    _, base = site
    config = {"volumes": [{"url": "mri.nii.gz"}, {"url": "missing.nii.gz", "name": "FET PET"}]}
    (site[0] / "index.html").write_text(_page_html(config))
    page.goto(f"{base}/index.html")
    page.wait_for_function("() => document.getElementById('viewer').dataset.viewerState === 'error'", timeout=60_000)
    alert = page.get_by_role("alert")
    assert "could not be opened" in alert.inner_text()
    assert "missing.nii.gz" in alert.inner_text()


def test_invalid_config_sets_error_state(page, site) -> None:
    _, base = site
    (site[0] / "index.html").write_text(_page_html({"volumes": [{"url": "mri.nii.gz", "opacity": 2}]}))
    page.goto(f"{base}/index.html")
    page.wait_for_function("() => document.getElementById('viewer').dataset.viewerState === 'error'", timeout=30_000)
    assert "volumes[0].opacity must lie in [0, 1]" in page.get_by_role("alert").inner_text()


def test_mount_on_canvas_through_the_js_api(page, site) -> None:
    directory, base = site
    (directory / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
        "<link rel='stylesheet' href='viewer.css'></head><body>"
        "<canvas id='c'></canvas><script src='viewer.js'></script></body></html>"
    )
    page.goto(f"{base}/index.html")
    config = {**CONFIG, "sliceType": "multiplanar", "crosshair": None, "height": 400}
    result = page.evaluate(
        """async (config) => {
            const canvas = document.getElementById('c');
            const viewer = window.AminoPET.viewer.mount(canvas, config);
            await viewer.ready;
            viewer.goToMarker('Biopsy target');
            return {state: canvas.dataset.viewerState, same: canvas.aminopetViewer === viewer,
                    wrapped: canvas.parentElement.classList.contains('aminopet-stage'),
                    n: viewer.nv.volumes.length, mm: document.querySelector("[data-readout='mm']").textContent};
        }""",
        config,
    )
    assert result["state"] == "drawn" and result["same"] and result["wrapped"] and result["n"] == 2
    np.testing.assert_allclose([float(v) for v in result["mm"].split(",")], _voxel_mm((12, 30, 14)), atol=0.05)
    assert page.get_by_role("button", name="Multiplanar").get_attribute("aria-pressed") == "true"
    page.get_by_role("button", name="Coronal").click()
    assert page.evaluate("() => document.getElementById('c').aminopetViewer.nv.opts.sliceType") == 1
    assert page.get_by_role("button", name="Coronal").get_attribute("aria-pressed") == "true"
    assert _canvas_pixels(page, "#c").var() > 0


READING_CONFIG = {
    **CONFIG,
    "overlays": [{"url": "voi.nii.gz", "key": "voi", "name": "Tumour VOI", "colormap": "green", "opacity": 0.8,
                  "visible": False, "cal_min": 0.5, "cal_max": 1.0, "description": "1 inside, 0 outside"}],
    "crosshair": _voxel_mm(HOT_VOXEL),
    "lesion": {"mm": _voxel_mm(HOT_VOXEL), "label": "tumour SUVmax", "suv_max": HOT_VALUE, "unit": "SUV"},
    "dynamic": {"url": "dyn.nii.gz", "filename": "dyn.nii.gz", "unit": "SUV",
                "frames_mid_min": [0.5, 2.0, 7.5, 25.0]},
    "tac": {"x_label": "time after injection", "x_unit": "min", "y_label": "mean SUV", "y_unit": "SUV",
            "curves": [{"key": "tumor", "name": "Tumour VOI", "color": "#e0483a",
                        "t_min": [0.5, 2.0, 7.5, 25.0], "values": [1.0, 2.1, 3.2, 4.25]}]},
}


def _green_fraction(rgb: np.ndarray) -> float:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return float(np.mean((g - r > 60) & (g - b > 60)))


def test_loading_status_until_the_first_image_is_drawn(page, site) -> None:
    directory, base = site
    (directory / "index.html").write_text(_page_html(READING_CONFIG))
    release = []

    def slow(route):  # hold the PET until the test has seen the loading state
        release.append(route)

    page.route("**/pet.nii.gz", slow)
    page.goto(f"{base}/index.html")
    page.wait_for_function("() => document.querySelector('#viewer .aminopet-status')", timeout=30_000)
    status = page.locator("#viewer [role=status]")
    assert status.is_visible() and status.inner_text() == "Loading images…"
    assert page.eval_on_selector("#viewer", "el => el.dataset.viewerState") == "loading"
    page.wait_for_timeout(300)
    assert page.eval_on_selector("#viewer", "el => el.dataset.viewerState") == "loading"
    release[0].continue_()
    page.wait_for_function("() => document.getElementById('viewer').dataset.viewerState === 'drawn'", timeout=60_000)
    assert not status.is_visible()
    timings = page.evaluate("() => document.getElementById('viewer').aminopetViewer.timings")
    assert timings["loaded"] <= timings["drawn"]
    assert page.evaluate("() => performance.getEntriesByName('aminopet:drawn').length") == 1
    assert _canvas_pixels(page).var() > 0


def test_reading_config_opens_on_the_lesion_and_toggles_overlays(page, site) -> None:
    directory, base = site
    (directory / "index.html").write_text(_page_html(READING_CONFIG))
    _open(page, f"{base}/index.html", n_volumes=3)

    crosshair = page.evaluate("() => document.getElementById('viewer').aminopetViewer.crosshairMm()")
    np.testing.assert_allclose(crosshair, _voxel_mm(HOT_VOXEL), atol=VOXEL_MM / 2)
    # PET window inputs carry the unit, the VOI starts hidden
    assert "SUV" in page.locator("#viewer fieldset", has_text="FET PET").first.inner_text()
    toggle = page.get_by_role("checkbox", name="Tumour VOI")
    assert not toggle.is_checked()
    opacity = "() => { const v = document.getElementById('viewer').aminopetViewer; " \
              "return v.nv.volumes[v.nv.getVolumeIndexByID(v.layers.get('voi').image.id)].opacity; }"
    assert page.evaluate(opacity) == 0
    hidden = _green_fraction(_canvas_pixels(page))

    toggle.check()
    page.wait_for_function(f"() => ({opacity})() > 0.79")
    shown = _green_fraction(_canvas_pixels(page))
    assert shown > hidden + 0.001, (hidden, shown)
    assert page.locator("[data-readout-layer='voi']").is_visible()
    assert _number(page.inner_text("[data-readout-layer='voi']")) == 1

    page.get_by_label("Tumour VOI opacity").fill("0.3")
    assert page.evaluate(opacity) == pytest.approx(0.3)
    toggle.uncheck()
    assert page.evaluate(opacity) == 0
    assert not page.locator("[data-readout-layer='voi']").is_visible()


def test_dynamic_frames_load_on_demand_and_mark_the_tac(page, site) -> None:
    directory, base = site
    (directory / "index.html").write_text(_page_html(READING_CONFIG))
    requested = []
    page.on("request", lambda r: requested.append(r.url.rsplit("/", 1)[-1]))
    _open(page, f"{base}/index.html", n_volumes=3)
    assert "dyn.nii.gz" not in requested  # not fetched up front
    assert page.locator("[data-tac] path[data-curve='tumor']").count() == 1
    assert "SUV" in page.inner_text("[data-tac]") and "min" in page.inner_text("[data-tac]")

    frame = page.evaluate("() => document.getElementById('viewer').aminopetViewer.showFrame(1)")
    assert frame == 1 and "dyn.nii.gz" in requested
    assert page.inner_text("[data-frame-label]") == "frame 2 of 4 · 2.0 min p.i."
    # the readout now shows the frame's value at the hot voxel: HOT_VALUE * 2 / 4
    page.evaluate("() => document.getElementById('viewer').aminopetViewer.nv.createOnLocationChange()")
    assert _number(page.inner_text("[data-readout-layer='pet']")) == pytest.approx(HOT_VALUE * 2 / N_FRAMES, rel=1e-3)
    marker_x = float(page.get_attribute("[data-frame-marker]", "x1"))
    model_x = page.evaluate("() => 34 + (2.0 / 30) * (236 - 34 - 8)")
    assert marker_x == pytest.approx(model_x, abs=0.5)
    page.locator("[data-control='dynamic-toggle']").uncheck()
    page.evaluate("() => document.getElementById('viewer').aminopetViewer.nv.createOnLocationChange()")
    assert _number(page.inner_text("[data-readout-layer='pet']")) == pytest.approx(HOT_VALUE)
