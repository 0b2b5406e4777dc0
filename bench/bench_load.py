"""Load figure: concurrent logged-in users on the exam page and the job status endpoint.

Sets up a PostgreSQL database of its own (``aminopet_bench``) with a small generated cohort
(imported, prepared and quantified; kept under var/bench/ between runs so before/after figures use
the same data, ``--fresh`` rebuilds it, ``--drop`` removes it), N coordinators each with a session and
a running job, starts gunicorn on 127.0.0.1, and lets N virtual users each alternate
``GET /cohort/exams/<id>/`` and ``GET /jobs/<id>/status/`` (as the jobs page polls it) for a fixed
time, with no think time. Prints p50/p95/p99 latency, requests/s and errors per endpoint.
Loopback only, bounded in users and duration; stops by itself.

    .venv/bin/python bench/bench_load.py [--users 50] [--duration 30] [--workers 4]

The client (httpx, asyncio) runs on the same machine as the server, so on a small machine it
competes with gunicorn and PostgreSQL for the CPUs: compare figures from the same machine only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from _loopback import ROOT, database, free_port, percentile, run  # noqa: E402

PY = sys.executable

SETUP = r"""
import json, sys
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from apps.accounts.models import Membership, Site
from apps.cohorts.models import Exam
from apps.jobs.models import Job
import os
n = int(os.environ["BENCH_USERS"])
User = get_user_model()
User.objects.filter(username__startswith="bench").delete()
exams = list(Exam.objects.order_by("pk").values_list("pk", flat=True))
sites = list(Site.objects.all())
out = []
for i in range(n):
    user = User.objects.create_user(f"bench{i}", password=None)
    for site in sites:
        Membership.objects.create(user=user, site=site, role="coordinator")
    job = Job.objects.create(kind="import_bids", status="running", progress=40, message="Checking",
                             created_by=user, site=sites[i % len(sites)])
    session = SessionStore()  # what login() stores, without hashing N passwords
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    out.append({"session": session.session_key, "job": job.pk, "exam": exams[i % len(exams)]})
print("BENCH" + json.dumps(out))
"""

# Queries and server time per request, in-process with Django's test client (the first user).
PROFILE = r"""
import json, os, time
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
u = json.loads(os.environ["BENCH_PROFILE_USER"])
client = Client(HTTP_HOST="127.0.0.1")
client.cookies["sessionid"] = u["session"]
out = {}
for name, url in (("exam page", f"/cohort/exams/{u['exam']}/"), ("job status", f"/jobs/{u['job']}/status/")):
    client.get(url)  # warm
    with CaptureQueriesContext(connection) as ctx:
        t0 = time.perf_counter()
        r = client.get(url)
        ms = (time.perf_counter() - t0) * 1e3
    out[name] = {"status": r.status_code, "queries": len(ctx.captured_queries), "ms": round(ms, 1)}
print("BENCH" + json.dumps(out))
"""










async def _load(base: str, users: list[dict], duration: float, warmup: float) -> dict[str, dict]:
    import httpx

    results: dict[str, list[float]] = {"exam page": [], "job status": []}
    errors: dict[str, int] = {"exam page": 0, "job status": 0}
    samples: dict[str, str] = {}
    limits = httpx.Limits(max_connections=len(users), max_keepalive_connections=len(users))
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def user(u: dict, deadline: float) -> None:
            cookies = {"sessionid": u["session"]}
            urls = [("exam page", f"/cohort/exams/{u['exam']}/"), ("job status", f"/jobs/{u['job']}/status/")]
            i = 0
            while time.monotonic() < deadline:
                name, url = urls[i % 2]
                i += 1
                t0 = time.perf_counter()
                try:
                    r = await client.get(url, cookies=cookies)
                    ok = r.status_code == 200
                    if not ok:
                        samples.setdefault(name, f"{r.status_code} {url}")
                except httpx.HTTPError as exc:
                    ok = False
                    samples.setdefault(name, f"{type(exc).__name__} {url}")
                if ok:
                    results[name].append(time.perf_counter() - t0)
                else:
                    errors[name] += 1

        # warm-up, not counted: every gunicorn worker imports its views and opens its connection
        await asyncio.gather(*(user(u, time.monotonic() + warmup) for u in users))
        for v in results.values():
            v.clear()
        for k in errors:
            errors[k] = 0
        start = time.monotonic()
        await asyncio.gather(*(user(u, start + duration) for u in users))
        elapsed = time.monotonic() - start
    out = {}
    for name, lat in results.items():
        out[name] = {"n": len(lat), "errors": errors[name], "rps": len(lat) / elapsed,
                     "p50": percentile(lat, 50) if lat else float("nan"),
                     "p95": percentile(lat, 95) if lat else float("nan"),
                     "p99": percentile(lat, 99) if lat else float("nan"),
                     "sample_error": samples.get(name, "")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="concurrent virtual users (1-200, default 50)")
    parser.add_argument("--duration", type=float, default=30, help="seconds of load (5-120, default 30)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per gunicorn worker (default 1: sync workers; more: gthread)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of load not counted (default 10)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes (default 4)")
    parser.add_argument("--patients", type=int, default=2, help="patients in the generated cohort (default 2)")
    parser.add_argument("--database-admin-url", default=os.environ.get(
        "BENCH_DATABASE_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL URL allowed to create the bench database")
    parser.add_argument("--database", default="aminopet_bench", help="bench database name")
    parser.add_argument("--fresh", action="store_true", help="rebuild the database and the cohort")
    parser.add_argument("--drop", action="store_true", help="drop the database and var/bench/ at the end")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    if not (1 <= args.users <= 200 and 5 <= args.duration <= 120 and 1 <= args.workers <= 16):
        parser.error("--users 1..200, --duration 5..120, --workers 1..16")

    tmp = ROOT / "var" / "bench"
    ready = tmp / f"{args.database}-{args.patients}.ready"
    if args.fresh or not ready.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    base_url = args.database_admin_url.rsplit("/", 1)[0]
    env = os.environ | {
        "DATABASE_URL": f"{base_url}/{args.database}", "AMINOPET_VAR_DIR": str(tmp / "var"),
        "MEDIA_ROOT": str(tmp / "media"), "STATIC_ROOT": str(tmp / "static"),
        "SECRET_KEY": secrets.token_urlsafe(50), "DEBUG": "0", "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1", "CELERY_TASK_ALWAYS_EAGER": "1", "LOG_LEVEL": "ERROR",
        "DJANGO_SETTINGS_MODULE": "config.settings", "BENCH_USERS": str(args.users),
    }
    gunicorn = None
    try:
        t0 = time.monotonic()
        if not ready.exists():
            database(args.database_admin_url, args.database, create=True)
        run([PY, "manage.py", "migrate", "--noinput", "-v0"], env, "migrate")
        run([PY, "manage.py", "collectstatic", "--noinput", "-v0"], env, "collectstatic")
        if not ready.exists():
            run([PY, "manage.py", "generate_cohort", "--out", str(tmp / "bids"), "--patients",
                  str(args.patients), "--sites", "2", "--seed", "3"], env, "generate_cohort")
            run([PY, "manage.py", "import_bids", str(tmp / "bids"), "--quiet"], env, "import_bids")
            ready.touch()
        setup = run([PY, "manage.py", "shell", "--no-imports", "-c", SETUP], env, "users")
        users = json.loads(setup.split("BENCH", 1)[1])
        print(f"setup: {args.patients} patients, {len(users)} users, {time.monotonic() - t0:.0f} s")
        profile = json.loads(run([PY, "manage.py", "shell", "--no-imports", "-c", PROFILE],
                                  env | {"BENCH_PROFILE_USER": json.dumps(users[0])}, "profile").split("BENCH", 1)[1])
        for name, f in profile.items():
            print(f"{name}: HTTP {f['status']}, {f['queries']} SQL queries, {f['ms']:.0f} ms alone (one request, in-process)")

        port = free_port()
        gunicorn = subprocess.Popen(
            [str(Path(PY).parent / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", str(args.workers), "--threads", str(args.threads), "--access-logfile", "-" if os.environ.get("BENCH_ACCESS_LOG") else "/dev/null",
             "--error-logfile", str(tmp / "gunicorn.log")],
            cwd=ROOT, env=env, start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if gunicorn.poll() is not None or time.monotonic() > deadline:
                    sys.exit("gunicorn did not start:\n" + (tmp / "gunicorn.log").read_text()[-3000:])
                time.sleep(0.2)

        figures = asyncio.run(_load(base, users, args.duration, args.warmup))
        print(f"\n{args.users} users, {args.duration:.0f} s, gunicorn {args.workers} workers x {args.threads} "
              f"threads, PostgreSQL, "
              f"{os.cpu_count()} CPUs shared with the client")
        print(f"{'endpoint':<12} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
        total_n = total_err = 0
        total_rps = 0.0
        for name, f in figures.items():
            total_n += f["n"]
            total_err += f["errors"]
            total_rps += f["rps"]
            print(f"{name:<12} {f['n']:>8} {f['rps']:>7.1f} {f['p50'] * 1e3:>8.0f} {f['p95'] * 1e3:>8.0f} "
                  f"{f['p99'] * 1e3:>8.0f} {f['errors']:>6}" + (f"  e.g. {f['sample_error']}" if f["errors"] else ""))
        print(f"{'all':<12} {total_n:>8} {total_rps:>7.1f} {'':>8} {'':>8} {'':>8} {total_err:>6}")
        if args.json:
            print(json.dumps(figures, indent=2))
    finally:
        if gunicorn is not None and gunicorn.poll() is None:
            os.killpg(gunicorn.pid, signal.SIGTERM)
            try:
                gunicorn.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(gunicorn.pid, signal.SIGKILL)
        if args.drop:
            database(args.database_admin_url, args.database, create=False)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
