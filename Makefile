# AminoPET: `make demo` sets everything up on a fresh machine and serves a demo; `make test` runs the tests.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
export PYTHONUNBUFFERED := 1
DEMO_DIR ?= var/demo
DEMO_PATIENTS ?= 24
DEMO_SITES ?= 3
PORT ?= 8000

.PHONY: demo test install frontend migrate lint demo-data serve worker clean-demo bench bench-load

$(VENV)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is needed ($(PY) not found)"; exit 1; }
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from this machine's CPU build, so no dependency pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

frontend/dist/aminopet/viewer.js: frontend/package.json frontend/vite.config.js $(wildcard frontend/src/*)
	cd frontend && (npm ci --no-audit --no-fund || npm install --no-audit --no-fund) && npm run build
	# a collected (hashed) bundle would otherwise keep serving the old viewer with DEBUG off
	if [ -f var/static/staticfiles.json ] && [ -x $(PYTHON) ]; then $(PYTHON) manage.py collectstatic --noinput -v0; fi

frontend: frontend/dist/aminopet/viewer.js

migrate: install
	$(PYTHON) manage.py migrate --noinput

lint: install
	$(BIN)/ruff check .

demo-data: migrate
	$(PYTHON) manage.py demo_setup --out $(DEMO_DIR) --patients $(DEMO_PATIENTS) --sites $(DEMO_SITES)

# The demo serves as production does (DEBUG off: no URL list on a 404, error pages, CSP), with
# gunicorn and whitenoise serving the collected static files; only HTTPS is left out, since it
# runs on http://127.0.0.1 (docs/security.md).
DEMO_ENV := DEBUG=0 SECURE_SSL_REDIRECT=0 SESSION_COOKIE_SECURE=0 CSRF_COOKIE_SECURE=0 SECURE_HSTS_SECONDS=0

demo: install frontend migrate demo-data
	$(DEMO_ENV) $(PYTHON) manage.py collectstatic --noinput -v0
	@echo "Starting a Celery worker and the web server on http://127.0.0.1:$(PORT)/ (Ctrl-C stops both)"
	$(DEMO_ENV) $(BIN)/celery -A config worker -l warning --concurrency 1 --pool solo & \
	  WORKER=$$!; trap "kill $$WORKER" EXIT INT TERM; \
	  $(DEMO_ENV) $(BIN)/gunicorn config.wsgi --bind 127.0.0.1:$(PORT) --workers 2 --timeout 300 \
	    --access-logfile - --error-logfile -

worker: install
	$(BIN)/celery -A config worker -l info

test: install frontend
	$(BIN)/ruff check .
	$(PYTHON) manage.py check
	$(PYTHON) manage.py makemigrations --check --dry-run
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install frontend
	$(PYTHON) bench/bench_mrmc.py
	$(PYTHON) bench/bench_phantoms.py --calibration
	$(PYTHON) bench/bench_viewer.py

# 50 users on the exam page and the job status endpoint, gunicorn + PostgreSQL on 127.0.0.1 (30 s)
bench-load: install
	$(PYTHON) bench/bench_load.py --users 50 --duration 30

clean-demo:
	rm -rf var/demo var/aminopet.sqlite3 var/media var/broker
