"""Helpers shared by the load benches: subprocesses, a free loopback port, a throwaway PostgreSQL
database, percentiles. Imported by bench/bench_load.py and bench/bench_reading_load.py (run as scripts,
so this folder is on sys.path)."""
from __future__ import annotations

import socket
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DB_PREFIX = "aminopet_bench"


def run(args: list[str], env: dict, what: str) -> str:
    """Run a command in the repository; exit with its output when it fails."""
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{what} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database(admin_url: str, name: str, *, create: bool) -> None:
    """Drop (and with ``create``, create anew) a bench database; only names starting with DB_PREFIX."""
    import psycopg

    if not name.startswith(DB_PREFIX):
        sys.exit(f"refusing to drop a database whose name does not start with {DB_PREFIX}")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (1-99, inclusive method); NaN for no values."""
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
