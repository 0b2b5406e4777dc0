"""The docker deployment files refer to things that exist, without a Docker engine.

Reads docker/compose.yaml, docker/Dockerfile, docker/Dockerfile.dockerignore and
docker/.env.example and checks them against the project: the modules the service commands
start, the files the Dockerfile copies, the environment variables config/settings.py reads,
the torch pin against pyproject.toml, and that collectstatic (the image build step) succeeds.
"""
from __future__ import annotations

import ast
import fnmatch
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
ENV_EXAMPLE = DOCKER / ".env.example"
SETTINGS = ROOT / "config" / "settings.py"

APP_SERVICES = ("migrate", "web", "worker", "gpu-worker")
# Variables set for the app containers that are read by something other than config/settings.py.
NOT_SETTINGS = {"DJANGO_SETTINGS_MODULE"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values = {}
    for lineno, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "=" in line, f"{ENV_EXAMPLE}:{lineno}: not KEY=VALUE: {line!r}"
        key, value = line.split("=", 1)
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{ENV_EXAMPLE}:{lineno}: bad name {key!r}"
        assert key not in values, f"{ENV_EXAMPLE}:{lineno}: {key} set twice"
        values[key] = value
    return values


def settings_env_vars() -> set[str]:
    """Names of the environment variables config/settings.py reads through django-environ."""
    tree = ast.parse(SETTINGS.read_text())
    names: set[str] = set()
    readers = {"str", "bool", "int", "float", "list", "tuple", "dict", "json", "url", "db",
               "db_url", "cache", "cache_url", "email", "email_url", "path"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "Env":
            names.update(k.arg for k in node.keywords if k.arg)  # environ.Env(DEBUG=(bool, False))
        is_reader = (isinstance(func, ast.Name) and func.id == "env") or (
            isinstance(func, ast.Attribute) and func.attr in readers
        )
        if is_reader and node.args and isinstance(node.args[0], ast.Constant):
            value = node.args[0].value
            if isinstance(value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
                names.add(value)
    return names


def service_command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing in {argv}"
    return argv[argv.index(flag) + 1]


def test_settings_reader_finds_known_variables() -> None:
    # guards the AST scan itself: these are read by settings today
    assert {"SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DATABASE_URL", "CELERY_BROKER_URL",
            "MEDIA_ROOT", "AMINOPET_VAR_DIR"} <= settings_env_vars()


def test_services_present(compose: dict) -> None:
    assert {"postgres", "redis", "web", "worker", "gpu-worker"} <= set(compose["services"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_build_the_project_dockerfile(compose: dict, name: str) -> None:
    build = compose["services"][name]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["args"]["TORCH_INDEX_URL"].replace("${TORCH_CUDA_INDEX_URL:-", "").startswith(
        "https://download.pytorch.org/whl/"
    )


def test_web_runs_gunicorn_on_config_wsgi(compose: dict) -> None:
    argv = service_command(compose["services"]["web"])
    assert argv[0] == "gunicorn"
    module, _, attr = argv[1].partition(":")
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    assert path.is_file(), f"{argv[1]}: {path} does not exist"
    tree = ast.parse(path.read_text())
    assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert (attr or "application") in assigned, f"{path} defines no {attr!r}"
    deps = [Requirement(d).name for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert "gunicorn" in deps, "gunicorn must be a project dependency"
    assert importlib.util.find_spec("gunicorn") is not None


@pytest.mark.parametrize(("name", "queue"), [("worker", "celery"), ("gpu-worker", "gpu")])
def test_workers_run_the_project_celery_app(compose: dict, name: str, queue: str) -> None:
    argv = service_command(compose["services"][name])
    assert argv[:2] == ["celery", "-A"] and "worker" in argv
    app_module = option(argv, "-A")
    path = ROOT / app_module / "celery.py"
    assert path.is_file(), f"celery -A {app_module}: {path} does not exist"
    tree = ast.parse(path.read_text())
    assert any(
        isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "app" for t in n.targets)
        and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == "Celery"
        for n in tree.body
    ), f"{path} defines no `app = Celery(...)`"
    assert option(argv, "-Q") == queue


def test_cpu_worker_consumes_the_default_queue_and_gpu_queue_is_configurable() -> None:
    # tasks without a route go to Celery's default queue, which the CPU worker reads; asked of a
    # process outside pytest, since a test process has a queue of its own
    code = "import django; django.setup(); from django.conf import settings; print(settings.CELERY_TASK_DEFAULT_QUEUE)"
    env = {k: v for k, v in os.environ.items() if k != "CELERY_TASK_DEFAULT_QUEUE"}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "celery"
    assert "AMINOPET_GPU_QUEUE" in settings_env_vars()


def test_gpu_worker_reserves_nvidia_gpus(compose: dict) -> None:
    service = compose["services"]["gpu-worker"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "cpu" not in service["build"]["args"]["TORCH_INDEX_URL"]
    assert option(service_command(service), "--concurrency") == "1"


def test_migrate_uses_manage_py(compose: dict) -> None:
    argv = service_command(compose["services"]["migrate"])
    assert argv[:3] == ["python", "manage.py", "migrate"]
    assert (ROOT / "manage.py").is_file()
    for name in ("web", "worker", "gpu-worker"):
        assert compose["services"][name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_is_read_by_settings(compose: dict, name: str) -> None:
    service = compose["services"][name]
    assert service["env_file"] == ".env"
    unknown = set(service["environment"]) - settings_env_vars() - NOT_SETTINGS
    assert not unknown, f"{name} sets variables config/settings.py never reads: {sorted(unknown)}"
    assert "media:/data/media" in service["volumes"]
    assert service["environment"]["MEDIA_ROOT"] == "/data/media"


def test_env_example_variables_are_all_used(env_example: dict[str, str]) -> None:
    compose_text = COMPOSE.read_text()
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text))
    read_by_settings = settings_env_vars()
    unused = {k for k in env_example if k not in read_by_settings and k not in interpolated}
    assert not unused, f"{ENV_EXAMPLE} sets variables nothing reads: {sorted(unused)}"
    example_text = ENV_EXAMPLE.read_text()  # optional variables are documented in comments
    undocumented = {
        name for name in interpolated - {"AMINOPET_IMAGE", "AMINOPET_GPU_IMAGE"}
        if not re.search(rf"^#? ?{name}=", example_text, re.MULTILINE)
    }
    assert not undocumented, f"compose.yaml uses variables missing from .env.example: {sorted(undocumented)}"
    assert env_example["DEBUG"] == "False"


def test_env_example_secrets_are_placeholders(env_example: dict[str, str]) -> None:
    assert env_example["SECRET_KEY"].startswith("change-me")
    assert env_example["POSTGRES_PASSWORD"].startswith("change-me")
    # compose refuses to start without them rather than falling back to a default
    text = COMPOSE.read_text()
    assert "${SECRET_KEY:?" in text and "${POSTGRES_PASSWORD:?" in text
    assert (DOCKER / ".gitignore").read_text().split().count(".env") == 1


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    for pattern in patterns:
        pattern = pattern.removeprefix("**/")
        for i in range(len(parts)):
            if fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) or fnmatch.fnmatch(parts[i], pattern):
                return True
    return False


def test_dockerfile_copies_existing_unignored_paths() -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    copies = [rest.split() for word, rest in dockerfile_instructions() if word == "COPY"]
    assert copies
    for args in copies:
        if any(a.startswith("--from=") for a in args):
            continue
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile COPY {source}: not in the repository"
            if source != ".":
                assert not ignored(source.rstrip("/"), patterns), f"COPY {source} is excluded by {DOCKERIGNORE.name}"
    for private in (".venv", ".git", "var", ".env", "docker/.env", "frontend/node_modules"):
        assert ignored(private, patterns), f"{private} would be sent to the Docker build"


def test_dockerfile_stages_torch_first_and_runs_as_non_root() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    args = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for word, rest in instructions if word == "ARG")))
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert args["NODE_IMAGE"].startswith("node:")
    assert any(f.endswith(" AS frontend") for f in froms)
    runs = [rest for word, rest in instructions if word == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if 'pip install "torch==${TORCH_VERSION}"' in r)
    project_at = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_at < project_at
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    torch_req = next(
        Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if Requirement(d).name == "torch"
    )
    assert args["TORCH_VERSION"] in torch_req.specifier, f"torch {args['TORCH_VERSION']} outside {torch_req}"
    final_stage = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]
    users = [rest for word, rest in final_stage if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert not any(word == "ENV" and "SECRET_KEY" in rest for word, rest in instructions)
    assert any(word == "COPY" and "--from=frontend" in rest and "/app/frontend/dist" in rest for word, rest in instructions)
    assert any("collectstatic" in r for r in runs)


def test_frontend_dist_is_a_staticfiles_dir() -> None:
    from django.conf import settings

    assert ROOT / "frontend" / "dist" in [Path(p) for p in settings.STATICFILES_DIRS]
    package = ROOT / "frontend" / "package.json"
    assert (ROOT / "frontend" / "package-lock.json").is_file() and package.is_file()
    assert '"build"' in package.read_text()


@pytest.mark.slow
def test_collectstatic_as_in_the_image_build(tmp_path: Path) -> None:
    """The Dockerfile's collectstatic step (DEBUG off, compressed storage) succeeds and ships the viewer."""
    if not (ROOT / "frontend" / "dist" / "aminopet" / "viewer.js").exists():
        pytest.skip("frontend/dist/aminopet/viewer.js is not built: run `npm ci && npm run build` in frontend/")
    env = {
        **os.environ,
        "SECRET_KEY": "collectstatic-only",
        "CELERY_BROKER_URL": "memory://",
        "AMINOPET_VAR_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(tmp_path / "static_root"),
        "DEBUG": "False",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "static_root" / "aminopet" / "viewer.js").is_file()
    assert (tmp_path / "static_root" / "aminopet" / "viewer.css").is_file()
    assert (tmp_path / "static_root" / "aminopet" / "viewer.js.gz").is_file()
