"""Fixtures for browser tests: headless Debian Chromium driven by Playwright, WebGL2 on SwiftShader.

Playwright's own browser downloads are never used (`playwright install` is not run anywhere):
the tests launch the system Chromium at `/usr/bin/chromium` (`apt-get install -y chromium`) and
skip, with the reason, when it is missing. WebGL2 comes from SwiftShader, the CPU implementation
shipped with Chromium, so the tests need no GPU.

Fixtures:
    chromium_browser: one Chromium per test session.
    page: a fresh page (own context, 1000x800 viewport) per test; browser console errors are
        collected in `page.console_errors`.
    page_720: the same at 1280x720, the smallest screen the reading room is designed for.
    http_server: a live Django server started after the test's settings (plain HTTP).
    pixels(locator): the RGB pixels of an element's screenshot, for colour checks.
    static_server: a factory serving a directory over HTTP on 127.0.0.1 (random port) from a
        thread; returns the base URL.
"""
from __future__ import annotations

import functools
import http.server
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--no-sandbox",
    "--disable-gpu-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium_browser() -> Iterator[object]:
    """A headless system Chromium, shared by the session; skips when it is not installed."""
    if not CHROMIUM_PATH.exists():
        pytest.skip(f"{CHROMIUM_PATH} not found: install Debian's chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM_PATH), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def _page(browser, width: int, height: int) -> Iterator[object]:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda msg: page.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.console_errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def page(chromium_browser: object) -> Iterator[object]:
    """A fresh page in its own browser context; console errors land in `page.console_errors`."""
    yield from _page(chromium_browser, 1000, 800)


@pytest.fixture
def page_720(chromium_browser: object) -> Iterator[object]:
    """A page at 1280x720, the smallest screen the reading room is designed for."""
    yield from _page(chromium_browser, 1280, 720)


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


def pixels(locator) -> np.ndarray:
    """RGB pixels (float) of a Playwright locator's screenshot."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB"), dtype=float)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that does not log every request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def static_server() -> Iterator[Callable[[Path], str]]:
    """Factory: `static_server(directory)` serves `directory` and returns its base URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

    try:
        yield serve
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
