"""Settings from the environment: secure defaults with DEBUG off, embedded defaults without URLs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    drop = ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "CACHE_KEY_PREFIX", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE")
    base = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=base | env,
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_debug_off(tmp_path):
    result = _manage("check", "--deploy", "--fail-level", "WARNING", DEBUG="0",
                     SECRET_KEY="x9" * 40 + "-not-a-real-key", AMINOPET_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_embedded_defaults_need_no_server(tmp_path):
    code = ("from django.conf import settings as s; "
            "print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.MEDIA_ROOT)")
    result = _manage("shell", "--no-imports", "-c", code, AMINOPET_VAR_DIR=str(tmp_path))
    engine, broker, media = result.stdout.split()
    assert engine.endswith("sqlite3") and broker == "filesystem://" and media == str(tmp_path / "media")
    assert (tmp_path / "secret_key").exists() and (tmp_path / "broker" / "out").is_dir()


def test_urls_select_postgres_and_redis(tmp_path):
    code = "from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL)"
    result = _manage("shell", "--no-imports", "-c", code, AMINOPET_VAR_DIR=str(tmp_path),
                     DATABASE_URL="postgres://u@db.example:5432/x", CELERY_BROKER_URL="redis://cache:6379/0")
    assert result.stdout.split() == ["django.db.backends.postgresql", "redis://cache:6379/0"]


def test_cache_is_per_process_by_default_and_shared_with_cache_url(tmp_path):
    code = ("from django.conf import settings as s; c = s.CACHES['default']; "
            "print(c['BACKEND'], c.get('LOCATION') or '-', c['KEY_PREFIX'], s.SESSION_ENGINE)")
    default = _manage("shell", "--no-imports", "-c", code, AMINOPET_VAR_DIR=str(tmp_path)).stdout.split()
    assert default[0].endswith("LocMemCache") and default[3] == "django.contrib.sessions.backends.db"
    shared = _manage("shell", "--no-imports", "-c", code, AMINOPET_VAR_DIR=str(tmp_path),
                     DATABASE_URL="postgres://u@db.example:5432/x", CACHE_URL="redis://cache:6379/1").stdout.split()
    # sessions read from the shared cache (the database stays the record); keys apart per database
    assert shared == ["django.core.cache.backends.redis.RedisCache", "redis://cache:6379/1", "aminopet:x",
                      "django.contrib.sessions.backends.cached_db"]
