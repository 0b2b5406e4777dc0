"""Viewer bench: time to the first drawn image through Django against NiiVue on a plain static server.

In one run, on loopback only, with headless Debian Chromium (/usr/bin/chromium, WebGL2 on SwiftShader):

(a) static: the built viewer bundle and the same volumes (copied out of the image store) served by
    ``python -m http.server``; the page embeds the same viewer configuration.
(b) django: gunicorn serving AminoPET with DEBUG off (whitenoise, collectstatic into a temporary
    STATIC_ROOT); a coordinator logs in (not timed), then the exam page is opened (timed); with
    ``--path`` further Django pages holding a viewer are timed the same way.
(c) the reader's case page: a small open sequential reader study (reader_study.services: two
    suspected-recurrence cases, one progression and one treatment-related, with predictions); a
    reader logs in through the login form (not timed), then the case page
    ``/studies/<slug>/read/<code>/unaided/`` is opened (timed; its images come by signed URLs),
    against its own static baseline: the same case viewer configuration and volumes on the plain
    static server, in the case page's layout (viewer column beside a 350 px answer panel).

Each repetition uses a fresh browser context (cold cache: bundle and volumes are fetched every time,
the worst case for a reader opening a case) and measures navigation start -> the viewer's
``performance.mark('aminopet:drawn')`` (set once the first image is on screen, frontend/src/viewer.js).
It prints the medians and ranges, the ratios django/static (target <= 1.15) and where the time goes.

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
READER = "bench-reader"
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
    """Database, media and static files in ``tmp``; one generated, prepared, quantified exam for the
    exam page, and an open sequential reader study of two prepared, quantified, predicted cases."""
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
    # four patients at two sites: suspected recurrences of both diagnoses for the reader study
    generate_cohort(bids, n_patients=4, n_sites=2, seed=seed)
    bids_import(path=bids)
    exam = Exam.objects.filter(volumes__kind="pet_dynamic").order_by("pk").first() or Exam.objects.first()
    exam_prepare(exam=exam)
    exam_quantify(exam=exam, radiomics=False)
    user = user_with("coordinator", SiteFactory(name=exam.patient.site.name), username="bench")
    user.set_password(PASSWORD)
    user.save()
    return {"exam": exam, **_setup_study(prepared={exam.pk})}


def _setup_study(*, prepared: set[int]) -> dict:
    """An open sequential reader study (reader_study.services) of one progression and one
    treatment-related suspected recurrence, each prepared, quantified and predicted; one reader
    with a password. Returns the reader's StudyReader and the case page's first case and path."""
    from django.urls import reverse

    from apps.cohorts.models import Cohort, Exam
    from apps.cohorts.services.prepare import exam_prepare
    from apps.quantification.services import exam_quantify
    from reader_study import services
    from reader_study.models import Assignment
    from tests.factories import ModelVersionFactory, PredictionFactory, SiteFactory, user_with

    recurrences = Exam.objects.filter(timepoint="suspected_recurrence").order_by("pk")
    pos = recurrences.filter(diagnosis="progression").first()
    neg = recurrences.filter(diagnosis="treatment_related").first()
    if pos is None or neg is None:
        raise RuntimeError("the generated cohort has no suspected recurrence of both diagnoses: try another --seed")
    model = ModelVersionFactory()
    for case_exam, p in ((pos, 0.81), (neg, 0.23)):
        if case_exam.pk not in prepared:
            exam_prepare(exam=case_exam)
            exam_quantify(exam=case_exam, radiomics=False)
        PredictionFactory(model_version=model, exam=case_exam, probability=p, decision=p >= 0.5,
                          label="progression" if p >= 0.5 else "treatment_related",
                          explanation={"base_value": 0.0, "output": "log-odds", "contributions": [
                              {"feature": "ts_max", "value": 2.4 if p > 0.5 else 1.3,
                               "shap": 1.2 if p > 0.5 else -1.0},
                              {"feature": "ttp_min", "value": 15.0, "shap": 0.4}]})
    cohort = Cohort.objects.create(name="bench-reading")
    cohort.exams.add(pos, neg)
    coordinator = user_with("coordinator", pos.patient.site, username="bench-coordinator")
    reader = user_with("reader", SiteFactory(name=pos.patient.site.name), username=READER)
    reader.set_password(PASSWORD)
    reader.save()
    study = services.study_create(title="Bench reading", question="Progression or treatment-related change?",
                                  cohort=cohort, user=coordinator, design="sequential", model_version=model,
                                  washout_days=0, seed=2024, questionnaire={})
    services.study_cases_set(study=study, user=coordinator)
    services.study_readers_set(study=study, user=coordinator, readers=[reader])
    services.study_open(study=study, user=coordinator)
    first = (Assignment.objects.filter(session__reader__study=study, session__reader__user=reader)
             .select_related("case__exam", "session__reader").order_by("session__number", "position").first())
    path = reverse("reader_study:case", args=[study.slug, first.case.code, "unaided"])
    return {"study_reader": first.session.reader, "case": first.case, "case_path": path}


def _static_url_for(site: Path, exam, *, allow=None):
    """A viewer ``url_for`` that copies the stored file into ``site`` and returns its static path;
    with ``allow`` (another ``url_for``) only what that one gives a URL to (None otherwise)."""
    from apps.cohorts.services.store import media_path

    quant = exam.quantification

    def url_for(obj) -> str | None:
        if allow is not None and allow(obj) is None:
            return None
        if isinstance(obj, tuple):
            field = getattr(quant, f"{obj[1]}_map")
            name = f"exam-{exam.pk}-{obj[1]}.nii.gz"
        else:
            field = obj.file
            name = f"{type(obj).__name__.lower()}-{obj.pk}.nii.gz"
        shutil.copy(media_path(field.name), site / name)
        return f"/{name}"

    return url_for


def _static_site(tmp: Path, exam, case) -> tuple[Path, dict, dict]:
    """The same page markup (the viewer include), the collected bundle and the same stored volumes,
    in one folder for a plain static file server: ``index.html`` (the exam page's viewer) and
    ``case.html`` (the reader case page's viewer: the same configuration as the case page, with the
    same volumes, in the case page's layout)."""
    from django.conf import settings
    from django.template.loader import render_to_string

    from apps.quantification.viewer import exam_viewer_config
    from reader_study import selectors

    site = tmp / "static-site"
    shutil.copytree(Path(settings.STATIC_ROOT) / "aminopet", site / "static" / "aminopet")
    head = "<!doctype html><html><head><meta charset='utf-8'><title>NiiVue alone</title><link rel='icon' href='data:,'></head>"

    config = exam_viewer_config(exam, url_for=_static_url_for(site, exam))
    viewer = render_to_string("viewer/_viewer.html", {"config": config, "label": "NiiVue alone"})
    (site / "index.html").write_text(
        f"{head}<body><div style='--aminopet-host-height: max(420px, calc(100vh - 138px))'>{viewer}</div></body></html>")

    # the case page's configuration (selectors.case_viewer_config) with static instead of signed URLs
    reader, case_obj = case["study_reader"], case["case"]
    signed = selectors._url_for(reader, case_obj, "unaided")
    case_config = selectors._scrub(exam_viewer_config(case_obj.exam, url_for=_static_url_for(site, case_obj.exam,
                                                                                           allow=signed)))
    django_config = selectors.case_viewer_config(reader, case_obj, "unaided")

    def shape(c: dict) -> list:
        return [[{k: v for k, v in e.items() if k != "url"} for e in c.get(key) or []]
                for key in ("volumes", "bases", "overlays")]

    if shape(case_config) != shape(django_config):
        raise RuntimeError("the static case configuration differs from the case page's")
    viewer = render_to_string("viewer/_viewer.html", {"config": case_config, "label": "NiiVue alone"})
    # the case page's layout: main 1200 px wide, viewer column beside the 350 px answer panel, 440 px tall
    (site / "case.html").write_text(
        f"{head}<body style='margin:0'><main style='max-width:1200px;margin:1.2rem auto;padding:0 1.2rem'>"
        "<div style='display:grid;grid-template-columns:minmax(0,1fr) 350px;gap:.5rem .9rem'>"
        f"<section style='min-width:0;--aminopet-height:440px'>{viewer}</section><aside></aside></div>"
        "</main></body></html>")
    return site, config, case_config


def _time_page(browser, url: str, *, login: str | None = None, username: str = "bench",
               timeout_ms: int = 120_000) -> dict:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        if login:
            page.goto(login)
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            if "/accounts/login/" in page.url:
                raise RuntimeError(f"login as {username} failed")
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
                    volume_bytes: res.filter(r => r.name.includes('.nii') || r.name.includes('/file/')
                                                  || r.name.includes('/studies/images/'))
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
        world = _setup(tmp, seed=args.seed)
        exam = world["exam"]
        site, config, case_config = _static_site(tmp, exam, world)
        print(f"setup (generate, import, prepare, quantify, reader study, collectstatic): "
              f"{time.perf_counter() - t:.1f} s")
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
        login = f"{django}/accounts/login/"
        # name -> (url, login page, username, static baseline it is compared with)
        pages = {"static": (static_url, None, None, None),
                 "django exam page": (f"{django}/cohort/exams/{exam.pk}/", login, "bench", "static"),
                 "static case": (f"http://127.0.0.1:{static_port}/case.html", None, None, None),
                 "django case page (reader)": (f"{django}{world['case_path']}", login, READER, "static case")}
        for path in args.path:
            pages[f"django {path}"] = (f"{django}{path}", login, "bench", "static")

        results: dict[str, list[dict]] = {name: [] for name in pages}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                for url, login_url, username, _ in pages.values():  # warm-up: Chromium, SwiftShader, gunicorn
                    _time_page(browser, url, login=login_url, username=username or "bench")
                for rep in range(args.reps):
                    order = list(pages) if rep % 2 == 0 else list(reversed(pages))
                    for name in order:
                        url, login_url, username, _ = pages[name]
                        results[name].append(_time_page(browser, url, login=login_url,
                                                        username=username or "bench"))
            finally:
                browser.close()

        print(f"\nfirst drawn image, headless Chromium (SwiftShader) at 1280x720, {args.reps} cold-cache repetitions")
        for what, c in (("exam page", config), (f"case page {world['case_path']}", case_config)):
            print(f"{what}: {len(c['volumes'])} volumes first ({', '.join(v['filename'] for v in c['volumes'])}), "
                  f"{len(c.get('overlays') or [])} overlays after the first image")
        header = f"{'page':<30}{'drawn ms':>10}{'min':>8}{'max':>8}{'html':>8}{'bundle':>8}{'volumes':>9}{'loaded':>8}{'bundle kB':>11}{'vol kB':>9}{'requests':>9}"
        print(header)
        medians = {}
        for name, rows in results.items():
            drawn = [r["drawn_ms"] for r in rows]

            def med(key: str, rows: list[dict] = rows) -> float:
                return statistics.median(r[key] for r in rows if r[key] is not None)

            medians[name] = statistics.median(drawn)
            print(f"{name:<30}{medians[name]:>10.0f}{min(drawn):>8.0f}{max(drawn):>8.0f}{med('html_ms'):>8.0f}"
                  f"{med('bundle_ms'):>8.0f}{med('first_volumes_ms'):>9.0f}{med('loaded_ms'):>8.0f}{med('bundle_bytes') / 1024:>11.0f}"
                  f"{med('volume_bytes') / 1024:>9.0f}{med('requests_before'):>9.0f}")
        for name, (_, _, _, baseline) in pages.items():
            if baseline is not None:
                ratio = medians[name] / medians[baseline]
                verdict = "meets" if ratio <= 1.15 else "misses"
                print(f"ratio {name} / {baseline}: {ratio:.2f} ({verdict} the target <= 1.15)")
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
