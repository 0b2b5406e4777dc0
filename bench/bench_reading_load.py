"""Load figure: 50 concurrent readers submitting answers against gunicorn + PostgreSQL.

Sets up a throw-away PostgreSQL database (``aminopet_bench_reading`` unless given), migrates it and
creates an open sequential study of R readers x C cases with
:func:`reader_study.simulation.study_simulated_setup` (exam rows with predictions, no images, no
readings), starts gunicorn on 127.0.0.1, and runs R reader clients (httpx, asyncio). Each logs in
through the login page (CSRF token, password), asks its worklist, then for the measured time opens
its next case (``GET /api/worklist/<slug>/cases/<code>/<arm>/``) and submits an answer (``POST`` the
same URL: decision, confidence, active time; agreement and usefulness in the aided arm), following
the server's ``next`` (unaided, then aided, case after case), with a think time between requests.
Prints p50/p95/p99 latency, requests/s and errors per endpoint, checks in the database that every
201 stored exactly one reading, then stops gunicorn and drops the database. Loopback only, bounded
in readers, cases and duration; stops by itself.

    .venv/bin/python bench/bench_reading_load.py [--readers 50] [--cases 40] [--duration 60]
        [--think 1.0] [--workers 5]

``--think`` is the mean pause (seconds, uniform 0.5x-1.5x) between a reader's requests: 1 s is a reader
~50 times faster than a physician (about 90 s per case), ``--think 0`` is a saturation test. The
client runs on the same machine as gunicorn and PostgreSQL and competes with them for the CPUs:
compare figures from the same machine only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _loopback import DB_PREFIX, ROOT, database, free_port, percentile, run  # noqa: E402

PY = sys.executable

SETUP = r"""
import json, os
from reader_study.simulation import study_simulated_setup
n_readers, n_cases = int(os.environ["BENCH_READERS"]), int(os.environ["BENCH_CASES"])
password = os.environ["BENCH_PASSWORD"]
study = study_simulated_setup(n_cases=n_cases, n_readers=n_readers, seed=7, slug="bench-reading")
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
users = list(study.readers.order_by("code").values_list("user__username", flat=True))
# one hash for the shared password (hashing it 50 times would only slow the setup down)
get_user_model().objects.filter(username__in=users).update(password=make_password(password))
print("BENCH" + json.dumps({"slug": study.slug, "users": users}))
"""

CHECK = r"""
import json
from django.db.models import Count
from reader_study.models import Reading
rows = Reading.objects.filter(reader__study__slug="bench-reading")
dups = rows.values("reader", "case", "arm").annotate(n=Count("pk")).filter(n__gt=1).count()
print("BENCH" + json.dumps({"submitted": rows.filter(submitted_at__isnull=False).count(),
                            "opened": rows.count(), "duplicates": dups}))
"""

ENDPOINTS = ("login", "worklist", "open case", "submit answer")








def _cpu_seconds(master_pid: int) -> float:
    """User + system CPU seconds of the gunicorn master and its workers (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in [master_pid, *_children(master_pid)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _postgres_cpu_seconds() -> float:
    """User + system CPU seconds of every PostgreSQL process on this machine (its backends included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text.split("(", 1)[1].rsplit(")", 1)
        if name.startswith("postgres"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _own_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []




class Reader:
    """One virtual reader: its cookies (set by hand: the server marks them Secure, the bench speaks
    plain HTTP on loopback) and its next case."""

    def __init__(self, username: str) -> None:
        self.username = username
        self.cookies: dict[str, str] = {}
        self.next: dict | None = None
        self.finished = False
        self.ready = False

    def keep(self, response) -> None:
        for name, value in response.cookies.items():
            self.cookies[name] = value

    def headers(self, *, post: bool = False) -> dict[str, str]:
        h = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if post:
            h["X-CSRFToken"] = self.cookies.get("csrftoken", "")
        return h


async def _load(base: str, slug: str, usernames: list[str], password: str, *, duration: float,
                think: float, seed: int, on_window=None) -> dict:
    import httpx

    lat: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
    errors: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
    samples: dict[str, str] = {}
    created = 0
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=len(usernames), max_keepalive_connections=len(usernames))
    measuring = False

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60, follow_redirects=False) as client:
        async def call(name: str, method: str, url: str, reader: Reader, expect: int, **kw):
            t0 = time.perf_counter()
            try:
                r = await client.request(method, url, **kw)
            except httpx.HTTPError as exc:
                errors[name] += 1
                samples.setdefault(name, f"{type(exc).__name__} {url}")
                return None
            dt = time.perf_counter() - t0
            reader.keep(r)
            if r.status_code != expect:
                errors[name] += 1
                samples.setdefault(name, f"{r.status_code} {method} {url}: {r.text[:160]}")
                return None
            if measuring or name in ("login", "worklist"):  # those two before the window, for information
                lat[name].append(dt)
            return r

        async def login(reader: Reader, gate: asyncio.Semaphore) -> None:
            async with gate:  # a password hash each: not all at once on a small machine
                page = await call("login", "GET", "/accounts/login/", reader, 200)
                if page is None:
                    return
                token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
                await call("login", "POST", "/accounts/login/", reader, 302,
                           data={"username": reader.username, "password": password, "csrfmiddlewaretoken": token},
                           headers=reader.headers() | {"Referer": f"{base}/accounts/login/"})
            if "sessionid" not in reader.cookies:
                return
            r = await call("worklist", "GET", f"/api/worklist/{slug}/", reader, 200, headers=reader.headers())
            reader.next = r.json()["next"] if r is not None else None
            reader.ready = r is not None
            if reader.next is not None:  # warm-up (not measured): imports and connections of every worker
                nxt = reader.next
                await call("open case", "GET", f"/api/worklist/{slug}/cases/{nxt['case']}/{nxt['arm']}/", reader, 200,
                           headers=reader.headers())

        async def pause() -> None:
            if think > 0:
                await asyncio.sleep(think * (0.5 + rng.random()))

        async def read(reader: Reader, deadline: float) -> None:
            nonlocal created
            if not reader.ready:
                return
            while time.monotonic() < deadline:
                if reader.next is None:
                    reader.finished = True
                    return
                code, arm = reader.next["case"], reader.next["arm"]
                url = f"/api/worklist/{slug}/cases/{code}/{arm}/"
                if await call("open case", "GET", url, reader, 200, headers=reader.headers()) is None:
                    await pause()
                    continue
                await pause()
                answer = {"decision": rng.random() < 0.5, "confidence": rng.randint(0, 100),
                          "active_seconds": round(rng.uniform(20, 120), 1)}
                if arm == "aided":
                    answer |= {"ai_agreement": rng.choice(["agree", "disagree", "unsure"]),
                               "explanation_usefulness": rng.randint(1, 5)}
                answer["decision"] = answer["confidence"] >= 50
                r = await call("submit answer", "POST", url, reader, 201, json=answer,
                               headers=reader.headers(post=True))
                if r is not None:
                    created += 1
                    reader.next = r.json()["next"]
                await pause()

        readers = [Reader(u) for u in usernames]
        gate = asyncio.Semaphore(4)
        t0 = time.monotonic()
        await asyncio.gather(*(login(r, gate) for r in readers))
        login_s = time.monotonic() - t0
        measuring = True
        if on_window:
            on_window(True)
        start = time.monotonic()
        await asyncio.gather(*(read(r, start + duration) for r in readers))
        elapsed = time.monotonic() - start
        if on_window:
            on_window(False)
    figures = {}
    for name in ENDPOINTS:
        values = lat[name]
        figures[name] = {"n": len(values), "errors": errors[name],
                         "rps": len(values) / (login_s if name in ("login", "worklist") else elapsed) if values else 0.0,
                         "p50": percentile(values, 50), "p95": percentile(values, 95),
                         "p99": percentile(values, 99), "sample_error": samples.get(name, "")}
    return {"endpoints": figures, "elapsed": elapsed, "login_s": login_s, "created": created,
            "finished": sum(r.finished for r in readers), "logged_in": sum("sessionid" in r.cookies for r in readers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=50, help="concurrent reader clients (1-100, default 50)")
    parser.add_argument("--cases", type=int, default=40, help="cases in the study (4-200, default 40)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (5-120, default 60)")
    parser.add_argument("--think", type=float, default=1.0,
                        help="mean pause between a reader's requests, seconds (0-10, default 1; 0: saturation)")
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1,
                        help="gunicorn worker processes (default 2 x CPUs + 1)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (default 1: sync)")
    parser.add_argument("--database-admin-url", default=os.environ.get(
        "BENCH_DATABASE_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL URL allowed to create the bench database")
    parser.add_argument("--database", default=f"{DB_PREFIX}_reading",
                        help=f"bench database name, starting with {DB_PREFIX} (dropped at the end)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the clients' answers and pauses")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--cache-url", default="",
                        help="Django cache shared by the workers (e.g. redis://127.0.0.1:6379/9, as docker/compose.yaml "
                             "sets it; sessions then come from it); default: one per process")
    args = parser.parse_args()
    if not (1 <= args.readers <= 100 and 4 <= args.cases <= 200 and 5 <= args.duration <= 120
            and 0 <= args.think <= 10 and 1 <= args.workers <= 16 and 1 <= args.threads <= 16):
        parser.error("--readers 1..100, --cases 4..200, --duration 5..120, --think 0..10, --workers 1..16, "
                     "--threads 1..16")

    tmp = Path(tempfile.mkdtemp(prefix="aminopet-bench-"))
    base_url = args.database_admin_url.rsplit("/", 1)[0]
    password = secrets.token_urlsafe(16)
    env = os.environ | {
        "DATABASE_URL": f"{base_url}/{args.database}", "AMINOPET_VAR_DIR": str(tmp / "var"),
        "MEDIA_ROOT": str(tmp / "media"), "STATIC_ROOT": str(tmp / "static"),
        "SECRET_KEY": secrets.token_urlsafe(50), "DEBUG": "0", "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1", "CELERY_TASK_ALWAYS_EAGER": "1", "LOG_LEVEL": "ERROR",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    env.pop("CACHE_URL", None)
    if args.cache_url:
        env |= {"CACHE_URL": args.cache_url, "CACHE_KEY_PREFIX": f"{args.database}:{secrets.token_hex(4)}"}
    gunicorn = None
    try:
        t0 = time.monotonic()
        database(args.database_admin_url, args.database, create=True)
        run([PY, "manage.py", "migrate", "--noinput", "-v0"], env, "migrate")
        run([PY, "manage.py", "collectstatic", "--noinput", "-v0"], env, "collectstatic")
        setup = run([PY, "manage.py", "shell", "--no-imports", "-c", SETUP],
                     env | {"BENCH_READERS": str(args.readers), "BENCH_CASES": str(args.cases),
                            "BENCH_PASSWORD": password}, "study setup")
        info = json.loads(setup.split("BENCH", 1)[1])
        print(f"setup: study {info['slug']}, {args.readers} readers x {args.cases} cases (sequential: "
              f"{2 * args.readers * args.cases} readings to do), {time.monotonic() - t0:.0f} s")

        port = free_port()
        worker_args = ["--workers", str(args.workers)]
        if args.threads > 1:
            worker_args += ["--threads", str(args.threads), "--worker-class", "gthread"]
        gunicorn = subprocess.Popen(
            [str(Path(PY).parent / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
             *worker_args, "--preload", "--timeout", "120", "--access-logfile", "-" if os.environ.get("BENCH_ACCESS_LOG") else "/dev/null",
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

        cpu = {"server": 0.0, "postgres": 0.0, "client": 0.0}

        def mark_window(start: bool) -> None:  # CPU of each part during the measured window only
            sign = -1 if start else 1
            cpu["server"] += sign * _cpu_seconds(gunicorn.pid)
            cpu["postgres"] += sign * _postgres_cpu_seconds()
            cpu["client"] += sign * _own_cpu_seconds()

        figures = asyncio.run(_load(base, info["slug"], info["users"], password, duration=args.duration,
                                    think=args.think, seed=args.seed, on_window=mark_window))
        check = json.loads(run([PY, "manage.py", "shell", "--no-imports", "-c", CHECK], env, "check")
                           .split("BENCH", 1)[1])
        mode = f"think {args.think:g} s" if args.think else "no think time (saturation)"
        print(f"\n{args.readers} readers, {args.duration:.0f} s, {mode}; gunicorn {args.workers} workers"
              f"{f' x {args.threads} threads' if args.threads > 1 else ''}, PostgreSQL, "
              f"{'cache ' + args.cache_url if args.cache_url else 'cache per process'}; {os.cpu_count()} CPUs "
              "shared with the client")
        print(f"logins: {figures['logged_in']} of {args.readers} in {figures['login_s']:.1f} s (login and worklist: before the window)")
        print(f"{'endpoint':<14} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for name, f in figures["endpoints"].items():
            print(f"{name:<14} {f['n']:>8} {f['rps']:>7.1f} {f['p50'] * 1e3:>8.0f} {f['p95'] * 1e3:>8.0f} "
                  f"{f['p99'] * 1e3:>8.0f} {f['errors']:>6}" + (f"  e.g. {f['sample_error']}" if f["errors"] else ""))
        window = [figures["endpoints"][e] for e in ("open case", "submit answer")]
        total_err = sum(f["errors"] for f in window) + figures["endpoints"]["login"]["errors"] \
            + figures["endpoints"]["worklist"]["errors"]
        submit = figures["endpoints"]["submit answer"]
        n_window = sum(f["n"] + f["errors"] for f in window)
        load1 = os.getloadavg()[0]
        print(f"server CPU (gunicorn) in the window: {cpu['server']:.1f} s for {n_window} requests = "
              f"{1e3 * cpu['server'] / max(n_window, 1):.0f} ms per request; machine load average {load1:.1f} "
              f"on {os.cpu_count()} CPUs (other processes included)")
        print(f"CPU in the {figures['elapsed']:.0f} s window: gunicorn {cpu['server']:.1f} s, PostgreSQL "
              f"{cpu['postgres']:.1f} s, the bench's own clients {cpu['client']:.1f} s "
              f"({(cpu['server'] + cpu['postgres'] + cpu['client']) / figures['elapsed']:.2f} of "
              f"{os.cpu_count()} CPUs busy)")
        print(f"answers stored: {figures['created']} (database: {check['submitted']} submitted readings, "
              f"{check['duplicates']} duplicates); readers who finished every case: {figures['finished']}")
        print(f"target: submit p95 <= 100 ms -> {submit['p95'] * 1e3:.0f} ms "
              f"({'met' if submit['p95'] <= 0.1 else 'NOT met'}); errors 0 -> {total_err} "
              f"({'met' if total_err == 0 and check['submitted'] == figures['created'] else 'NOT met'})")
        if args.json:
            print(json.dumps({"figures": figures, "database": check}, indent=2))
        if total_err:
            log = (tmp / "gunicorn.log").read_text()
            first = log.find("Traceback")
            print("gunicorn error log (first traceback):\n" + (log[first:first + 4000] if first >= 0 else log[-4000:]))
    finally:
        if gunicorn is not None and gunicorn.poll() is None:
            os.killpg(gunicorn.pid, signal.SIGTERM)
            try:
                gunicorn.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(gunicorn.pid, signal.SIGKILL)
        try:
            database(args.database_admin_url, args.database, create=False)
        except Exception as exc:  # the figures are printed; say what was left behind
            print(f"could not drop database {args.database}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
