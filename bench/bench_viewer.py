"""Viewer bench: time to the first drawn image through Django against NiiVue on a plain static server.

In one run, on loopback only, with headless Debian Chromium (/usr/bin/chromium, WebGL2 on SwiftShader):

(a) static: the built viewer bundle and the same volumes (copied out of the image store) served by
    ``python -m http.server``; the page embeds the same viewer configuration.
(b) django: gunicorn serving AminoPET with DEBUG off (whitenoise, collectstatic into a temporary
    STATIC_ROOT); a coordinator logs in (not timed), then the exam page is opened (timed); with
    ``--path`` further Django pages holding a viewer (e.g. a reader case page) are timed the same way.

Each repetition uses a fresh browser context (cold cache: bundle and volumes are fetched every time,
the worst case for a reader opening a case) and measures navigation start -> the viewer's
``performance.mark('aminopet:drawn')`` (set once the first image is on screen, frontend/src/viewer.js).
It prints the medians, the ratio django/static (target <= 1.15) and where the time goes.

Everything lives in a temporary directory (database, media, static files, generated cohort) that is
removed at the end, and both servers are stopped, also on Ctrl-C or an error.

    .venv/bin/python bench/bench_viewer.py [--reps 5] [--path /some/page/]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "frontend" / "dist" / "aminopet"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox", "--disable-gpu-sandbox",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "bench-viewer-password-1"
VIEWPORT = {"width": 1280, "height": 720}

SETTINGS = '''from config.settings import *  # noqa: F401,F403

SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.2)


def _setup(tmp: Path, *, seed: int) -> dict:
    """Database, media and static files in ``tmp``; one generated, prepared, quantified exam."""
    os.environ.update({
        "AMINOPET_VAR_DIR": str(tmp / "var"), "DATABASE_URL": f"sqlite:///{tmp / 'var' / 'bench.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "var" / "media"), "STATIC_ROOT": str(tmp / "var" / "static"),
        "CELERY_BROKER_URL": "filesystem://", "DEBUG": "0", "DJANGO_SETTINGS_MODULE": "bench_settings",
        "AMINOPET_AFTER_IMPORT_JOBS": "",
    })
    (tmp / "bench_settings.py").write_text(SETTINGS)
    sys.path[:0] = [str(tmp), str(ROOT)]
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)

    from apps.cohorts.models import Exam
    from apps.cohorts.services.bids import bids_import
    from apps.cohorts.services.prepare import exam_prepare
    from apps.quantification.services import exam_quantify
    from ml.phantoms import generate_cohort
    from tests.factories import SiteFactory, user_with

    bids = tmp / "bids"
    generate_cohort(bids, n_patients=1, n_sites=1, seed=seed)
    bids_import(path=bids)
    exam = Exam.objects.filter(volumes__kind="pet_dynamic").first() or Exam.objects.first()
    exam_prepare(exam=exam)
    exam_quantify(exam=exam, radiomics=False)
    user = user_with("coordinator", SiteFactory(name=exam.patient.site.name), username="bench")
    user.set_password(PASSWORD)
    user.save()
    return {"exam": exam}


def _static_site(tmp: Path, exam) -> tuple[Path, dict]:
    """The same page markup (the viewer include), the collected bundle and the same stored volumes,
    in one folder for a plain static file server."""
    from django.conf import settings
    from django.template.loader import render_to_string

    from apps.cohorts.services.store import media_path
    from apps.quantification.viewer import exam_viewer_config

    site = tmp / "static-site"
    shutil.copytree(Path(settings.STATIC_ROOT) / "aminopet", site / "static" / "aminopet")
    quant = exam.quantification

    def url_for(obj) -> str:
        if isinstance(obj, tuple):
            field = getattr(quant, f"{obj[1]}_map")
            name = f"{obj[1]}.nii.gz"
        else:
            field = obj.file
            name = f"{type(obj).__name__.lower()}-{obj.pk}.nii.gz"
        shutil.copy(media_path(field.name), site / name)
        return f"/{name}"

    config = exam_viewer_config(exam, url_for=url_for)
    viewer = render_to_string("viewer/_viewer.html", {"config": config, "label": "NiiVue alone"})
    (site / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>NiiVue alone</title>"
        "<link rel='icon' href='data:,'></head><body>"
        f"<div style='--aminopet-host-height: max(420px, calc(100vh - 138px))'>{viewer}</div></body></html>")
    return site, config


def _time_page(browser, url: str, *, login: str | None = None, timeout_ms: int = 120_000) -> dict:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        if login:
            page.goto(login)
            page.fill("input[name=username]", "bench")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
        page.goto(url, wait_until="commit")
        page.wait_for_function(
            "() => { const e = document.querySelector('[data-aminopet-viewer]');"
            " return e && ['drawn', 'error'].includes(e.dataset.viewerState); }", timeout=timeout_ms)
        state = page.eval_on_selector("[data-aminopet-viewer]", "e => e.dataset.viewerState")
        if state != "drawn":
            raise RuntimeError(f"{url}: viewer state {state}: {page.inner_text('[data-aminopet-viewer]')[:300]}")
        result = page.evaluate("""() => {
            const v = document.querySelector('[data-aminopet-viewer]').aminopetViewer;
            const drawn = performance.getEntriesByName('aminopet:drawn')[0].startTime;
            const nav = performance.getEntriesByType('navigation')[0];
            const res = performance.getEntriesByType('resource');
            const bundle = res.find(r => r.name.includes('viewer') && r.name.endsWith('.js'));
            return {drawn_ms: drawn, dom_ms: nav.domContentLoadedEventEnd, html_ms: nav.responseEnd,
                    loaded_ms: performance.getEntriesByName('aminopet:loaded')[0].startTime,
                    bundle_ms: bundle ? bundle.responseEnd : null,
                    bundle_bytes: bundle ? bundle.transferSize : null,
                    volume_bytes: res.filter(r => r.name.includes('.nii') || r.name.includes('/file/'))
                                     .reduce((s, r) => s + r.transferSize, 0),
                    first_volumes_ms: Math.max(...v.config.volumes.slice(0, 2).map(c => {
                        const r = res.find(r => r.name.endsWith(c.url)); return r ? r.responseEnd : NaN; })),
                    requests_before: res.filter(r => r.startTime < drawn).length};
        }""")
        return result
    finally:
        context.close()


def _headers(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "br, gzip"})
    with urllib.request.urlopen(request) as response:
        return {k: response.headers.get(k) for k in ("Content-Encoding", "Cache-Control", "Content-Length")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per server (default 5)")
    parser.add_argument("--seed", type=int, default=11, help="seed of the generated cohort")
    parser.add_argument("--path", action="append", default=[],
                        help="further Django page with a viewer to time (repeatable), e.g. a reader case page")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    if not (BUNDLE / "viewer.js").exists():
        print(f"{BUNDLE / 'viewer.js'} missing: cd frontend && npm ci && npm run build", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="aminopet-bench-viewer-"))
    try:
        t = time.perf_counter()
        exam = _setup(tmp, seed=args.seed)["exam"]
        site, config = _static_site(tmp, exam)
        print(f"setup (generate, import, prepare, quantify, collectstatic): {time.perf_counter() - t:.1f} s")
        static_port, django_port = _free_port(), _free_port()
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1"],
                                      cwd=site, **quiet))
        env = dict(os.environ, PYTHONPATH=f"{tmp}{os.pathsep}{ROOT}")
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "config.wsgi", "-b", f"127.0.0.1:{django_port}",
             "-w", "2", "--threads", "4", "--log-level", "warning"], cwd=ROOT, env=env, **quiet))
        static_url = f"http://127.0.0.1:{static_port}/index.html"
        django = f"http://127.0.0.1:{django_port}"
        _wait_http(static_url)
        _wait_http(f"{django}/accounts/login/")
        pages = {"static": (static_url, None), "django exam page": (f"{django}/cohort/exams/{exam.pk}/",
                                                                     f"{django}/accounts/login/")}
        for path in args.path:
            pages[f"django {path}"] = (f"{django}{path}", f"{django}/accounts/login/")

        results: dict[str, list[dict]] = {name: [] for name in pages}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                for url, login in pages.values():  # warm-up: Chromium, SwiftShader shaders, gunicorn
                    _time_page(browser, url, login=login)
                for rep in range(args.reps):
                    order = list(pages) if rep % 2 == 0 else list(reversed(pages))
                    for name in order:
                        url, login = pages[name]
                        results[name].append(_time_page(browser, url, login=login))
            finally:
                browser.close()

        print(f"\nfirst drawn image, headless Chromium (SwiftShader) at 1280x720, {args.reps} cold-cache repetitions")
        print(f"volumes: {len(config['volumes'])} first ({', '.join(v['filename'] for v in config['volumes'])}), "
              f"{len(config['overlays'])} overlays after the first image")
        header = f"{'page':<28}{'drawn ms':>10}{'min':>8}{'max':>8}{'html':>8}{'bundle':>8}{'volumes':>9}{'loaded':>8}{'bundle kB':>11}{'vol kB':>9}{'requests':>9}"
        print(header)
        medians = {}
        for name, rows in results.items():
            drawn = [r["drawn_ms"] for r in rows]

            def med(key: str, rows: list[dict] = rows) -> float:
                return statistics.median(r[key] for r in rows if r[key] is not None)

            medians[name] = statistics.median(drawn)
            print(f"{name:<28}{medians[name]:>10.0f}{min(drawn):>8.0f}{max(drawn):>8.0f}{med('html_ms'):>8.0f}"
                  f"{med('bundle_ms'):>8.0f}{med('first_volumes_ms'):>9.0f}{med('loaded_ms'):>8.0f}{med('bundle_bytes') / 1024:>11.0f}"
                  f"{med('volume_bytes') / 1024:>9.0f}{med('requests_before'):>9.0f}")
        for name in results:
            if name != "static":
                ratio = medians[name] / medians["static"]
                verdict = "meets" if ratio <= 1.15 else "misses"
                print(f"ratio {name} / static: {ratio:.2f} ({verdict} the target <= 1.15)")
        from django.contrib.staticfiles.storage import staticfiles_storage

        hashed = staticfiles_storage.url("aminopet/viewer.js")
        print(f"bundle through whitenoise ({hashed}): {_headers(django + hashed)}")
        return 0
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
