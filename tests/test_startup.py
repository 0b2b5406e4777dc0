"""Start-up stays light: Django and every management command start without the ML stack.

Handlers (apps/*/handlers.py) are imported by apps.jobs on first use; panels import their heavy
helpers inside the function. These tests run real subprocesses and assert which modules were
imported (not how long it took: times belong in bench/).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sklearn", "shap", "radiomics", "matplotlib", "monai", "nibabel", "scipy", "pandas",
         "SimpleITK", "pydicom", "nilearn", "captum", "numba")


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = os.environ | {"DJANGO_SETTINGS_MODULE": "config.settings"}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level packages named in ``python -X importtime`` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def _heavy_after(imports: str) -> list[str]:
    """The HEAVY packages loaded after django.setup() and ``imports`` in a fresh interpreter."""
    code = (f"import json, sys, django; django.setup(); {imports}; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_django_setup_imports_no_ml_stack():
    assert _heavy_after("pass") == []


def test_manage_py_help_imports_no_ml_stack():
    proc = _run(["-X", "importtime", "manage.py", "help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "import_bids" in proc.stdout and "mrmc" in proc.stdout
    imported = _imported(proc.stderr)
    assert "django" in imported  # the parsing sees imports at all
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


def test_handlers_still_registered_on_first_use():
    """Lazy loading loses no handler: every app's kinds are known when a job is created or run."""
    code = ("import json, django; django.setup(); from apps.jobs.services import handler_kinds; "
            "print(json.dumps(handler_kinds()))")
    proc = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    kinds = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"import_bids", "import_dicom", "prepare_exam", "quantify_exam", "train_classical",
            "predict"} <= set(kinds)


@pytest.mark.parametrize("target, expected", [
    ("folder", "is a folder; give a ratings file"),
    ("missing.csv", "file not found"),
])
def test_mrmc_bad_path_is_a_clean_error(tmp_path, target, expected):
    path = tmp_path / target
    if target == "folder":
        path.mkdir()
    proc = _run(["manage.py", "mrmc", str(path)])
    assert proc.returncode == 1
    assert f"CommandError: {path}" in proc.stderr and expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_reading_viewer_imports_no_quantification_stack():
    """The reading page's configuration builder (apps.quantification.viewer) needs numpy only at
    import: the quantification stack (scikit-learn, SimpleITK, pyradiomics) cost a web worker's first
    case open 1.2 s when it came with it."""
    assert _heavy_after("import apps.quantification.viewer, reader_study.api") == []


def test_the_wsgi_application_loads_every_view_at_start():
    """gunicorn imports config.wsgi when a worker boots: the URLconf, every view and the viewer's
    file reader are loaded then, so no request pays for importing them."""
    code = ("import json, sys; import config.wsgi; "
            "print(json.dumps({m: m in sys.modules for m in ('config.urls', 'reader_study.results_views', "
            "'reader_study.api', 'apps.quantification.viewer', 'nibabel')}))")
    proc = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert all(json.loads(proc.stdout.strip().splitlines()[-1]).values())
