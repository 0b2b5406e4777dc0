"""AminoPET settings, read from the environment (django-environ).

Embedded defaults need no server: SQLite under var/ and kombu's filesystem broker under var/.
Set DATABASE_URL (postgres://...) and CELERY_BROKER_URL (redis://...) for PostgreSQL and Redis.
"""
from __future__ import annotations

import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path

import environ
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("AMINOPET_VAR_DIR", default=str(BASE_DIR / "var"))).resolve()

env = environ.Env(
    DEBUG=(bool, False),
    ALLOWED_HOSTS=(list, ["localhost", "127.0.0.1", "[::1]", "testserver"]),
)
environ.Env.read_env(BASE_DIR / ".env", overwrite=False) if (BASE_DIR / ".env").exists() else None

DEBUG = env("DEBUG")


def _secret_key() -> str:
    """SECRET_KEY from the environment, else a random one kept in var/ (never a fixed default)."""
    key = env.str("SECRET_KEY", default="")
    if key:
        return key
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "axes",
    "apps.accounts",
    "apps.cohorts",
    "apps.jobs",
    "apps.quantification",
    "apps.registry",
    "apps.subregions",
    "apps.audit",
    "reader_study",
    "apps.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "apps.accounts.middleware.IntegrityErrorMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.accounts.context_processors.roles",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'aminopet.sqlite3'}"),
}
DATABASES["default"].setdefault("ATOMIC_REQUESTS", False)
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets the worker and the web server write without "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].update({"timeout": 30, "init_command": "PRAGMA journal_mode=WAL;"})
    # A file, not memory, so a real Celery worker process can share the test database; one per
    # test process, so two test runs on one machine do not destroy each other's database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test_aminopet_{os.getpid()}.sqlite3")}
else:
    # One test database per test process here too (a demo, CI and a developer's run can share a server).
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
    # Persistent connections: a new PostgreSQL connection (a forked backend, authentication) cost each
    # request more than the request itself (bench/bench_reading_load.py). Checked before reuse.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=300)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- Login throttling (django-axes; docs/security.md) -----------------------------------------
# The axes backend comes first: it refuses a locked-out username+IP before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_ENABLE_ACCESS_FAILURE_LOG = True  # one row per failure (Django admin), beside the counters
AXES_LOCKOUT_TEMPLATE = "accounts/locked_out.html"
# Behind a reverse proxy, the number of proxies that append to X-Forwarded-For (else REMOTE_ADDR).
AXES_IPWARE_PROXY_COUNT = env.int("AXES_IPWARE_PROXY_COUNT", default=None)
if AXES_IPWARE_PROXY_COUNT:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")

# A working day, and never beyond the browser session.
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

# --- Cache ------------------------------------------------------------------------------------
# Per process by default (nothing to install). CACHE_URL=redis://host:6379/1 shares it between the
# web workers and hosts (docker/compose.yaml): the reading viewer's configurations and the study
# results are computed once for all workers, and sessions are read from it (cached_db: the database
# stays the record, a request no longer queries it for the session). A pytest process keeps a cache of
# its own (its keys would otherwise meet a demo's in a shared Redis).
_TESTING = "pytest" in sys.modules
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://") if not _TESTING
          else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
CACHES["default"].setdefault("KEY_PREFIX", env.str("CACHE_KEY_PREFIX", default=f"aminopet:{DATABASES['default']['NAME']}"))
SHARED_CACHE = not CACHES["default"]["BACKEND"].endswith(("LocMemCache", "DummyCache"))
if SHARED_CACHE:
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# --- Content-Security-Policy (django-csp) -----------------------------------------------------
# Scripts and styles from our own origin only: no inline script anywhere (templates load static
# files; the API docs use drf-spectacular's split view). NiiVue draws with WebGL2 and reads volumes
# over fetch (connect-src 'self'); the images it decodes become blob:/data: URLs.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, NONCE],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": [SELF, "data:", "blob:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "worker-src": [SELF, "blob:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# A test process never reads a demo's collected files (their manifest names hashed files the test
# server's finders do not know): its STATIC_ROOT stays empty and {% static %} gives plain names.
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / ("test_static" if "pytest" in sys.modules else "static"))))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# The viewer bundle built by `npm run build` in frontend/ (NiiVue from the npm registry).
STATICFILES_DIRS = [BASE_DIR / "static", BASE_DIR / "frontend" / "dist"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # hashed names (cached for ever), gzip + brotli copies; tolerant of a missing manifest
        "BACKEND": "config.staticfiles.ManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = True

MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))
MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_URL = "media/"
# Uploads above this go to a temporary file, never into memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 20 * 1024 * 1024
# Cap on the expanded size of an uploaded zip (zip-bomb guard), bytes.
AMINOPET_MAX_UNZIPPED_BYTES = env.int("AMINOPET_MAX_UNZIPPED_BYTES", default=8 * 1024**3)
# Largest image an import reads (float32 in memory, all frames), checked on the NIfTI header first.
AMINOPET_MAX_VOLUME_BYTES = env.int("AMINOPET_MAX_VOLUME_BYTES", default=2 * 1024**3)
# Uploaded archives hold names, IDs and birth dates: deleted after a successful import, kept this
# many days after a failed one (so the job can be retried), then removed (manage.py cleanup_uploads).
AMINOPET_FAILED_UPLOAD_RETENTION_DAYS = env.int("AMINOPET_FAILED_UPLOAD_RETENTION_DAYS", default=7)
# Secret the DICOM date shift and UID remapping derive from (default: SECRET_KEY). Set it on its own
# so rotating SECRET_KEY does not change the shift of later exams of the same patient.
AMINOPET_DEID_SECRET = env.str("AMINOPET_DEID_SECRET", default="")

# Jobs queued for every newly imported exam (by kind; each app registers its handler).
AMINOPET_AFTER_IMPORT_JOBS = env.list("AMINOPET_AFTER_IMPORT_JOBS", default=["prepare_exam", "quantify_exam"])

# --- Celery -----------------------------------------------------------------------------------
# A pytest process gets its own broker folder and queue (as it gets its own database), so a demo's
# worker never takes a test's messages and the test worker (started with -Q) never takes the demo's.
AMINOPET_BROKER_DIR = Path(env.str("AMINOPET_BROKER_DIR", default=str(
    VAR_DIR / (f"test_broker_{os.getpid()}" if _TESTING else "broker")))).resolve()
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE",
                                    default=f"test-{os.getpid()}" if _TESTING else "celery")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("out", "processed", "control"):
        (AMINOPET_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(AMINOPET_BROKER_DIR / "out"),
        "data_folder_out": str(AMINOPET_BROKER_DIR / "out"),
        "data_folder_processed": str(AMINOPET_BROKER_DIR / "processed"),
        "control_folder": str(AMINOPET_BROKER_DIR / "control"),
    }
if CELERY_BROKER_URL.startswith("redis"):
    # acks_late: an unacknowledged task is redelivered after this; longer than the longest training.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=12 * 3600)}
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="django-db")
CELERY_RESULT_EXTENDED = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
# Training jobs go to the GPU workers' queue: set AMINOPET_GPU_QUEUE=gpu where a worker runs
# `celery -A config worker -Q gpu` (docs/deploy.md); by default they stay on the default queue.
AMINOPET_GPU_QUEUE = env.str("AMINOPET_GPU_QUEUE", default=CELERY_TASK_DEFAULT_QUEUE)
CELERY_TASK_ROUTES = {"apps.registry.tasks.train_*": {"queue": AMINOPET_GPU_QUEUE}}
# Job kinds (apps.jobs) queued on AMINOPET_GPU_QUEUE instead of the default queue.
AMINOPET_GPU_JOB_KINDS = env.list("AMINOPET_GPU_JOB_KINDS",
                                  default=["pretrain", "encode_exams", "train_classifier"])

# Jobs (apps.jobs): a running job's worker refreshes its heartbeat every AMINOPET_JOB_HEARTBEAT_SECONDS;
# one silent for AMINOPET_JOB_LEASE_SECONDS belongs to a lost worker and is requeued (while it has
# had fewer than AMINOPET_JOB_MAX_ATTEMPTS attempts) or failed; workers look every AMINOPET_JOB_REAP_SECONDS.
AMINOPET_JOB_HEARTBEAT_SECONDS = env.float("AMINOPET_JOB_HEARTBEAT_SECONDS", default=15.0)
AMINOPET_JOB_LEASE_SECONDS = env.float("AMINOPET_JOB_LEASE_SECONDS", default=120.0)
AMINOPET_JOB_MAX_ATTEMPTS = env.int("AMINOPET_JOB_MAX_ATTEMPTS", default=2)
AMINOPET_JOB_REAP_SECONDS = env.float("AMINOPET_JOB_REAP_SECONDS", default=60.0)
# A job still queued this long after its message was sent gets it sent again (a restarted Redis without
# persistence loses queued messages; a duplicate delivery does nothing).
AMINOPET_JOB_RESEND_SECONDS = env.float("AMINOPET_JOB_RESEND_SECONDS", default=900.0)
if AMINOPET_JOB_LEASE_SECONDS < 3 * AMINOPET_JOB_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("AMINOPET_JOB_LEASE_SECONDS must be at least 3 heartbeats long")

# --- REST framework ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Session only: HTTP Basic would be a password oracle beside the throttled login form.
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.accounts.api.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AminoPET API",
    "DESCRIPTION": "Cohorts, imports, jobs, models and reader studies for amino-acid PET.",
    "VERSION": "0.1.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Request and response components apart (read-only fields are not asked for in a PATCH), and
    # the API's one error shape declared for every operation (apps/accounts/api.py).
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.accounts.api.error_responses_hook",
    ],
    "ENUM_NAME_OVERRIDES": {
        "MutationStatusEnum": "apps.cohorts.models.Idh",
        "MethylationStatusEnum": "apps.cohorts.models.Mgmt",
    },
}

# --- Security when DEBUG is off (manage.py check --deploy) ------------------------------------
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    # Only `make demo` on http://127.0.0.1 turns these three off (docs/security.md).
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="WARNING")},
}
