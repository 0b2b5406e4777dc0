"""Shared fixtures: a media root per test, users for every role, and a small generated cohort."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pytest_sessionfinish(session, exitstatus):
    """This process's broker folder or queue (settings: test_broker_<pid>, test-<pid>) goes at the
    end, with the folders of test runs that were killed before they could remove theirs."""
    from django.conf import settings

    if not settings.configured:
        return
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        folder = settings.AMINOPET_BROKER_DIR
        if folder.name.startswith("test_broker_"):
            shutil.rmtree(folder, ignore_errors=True)
            for other in folder.parent.glob("test_broker_*"):
                pid = other.name.removeprefix("test_broker_")
                if pid.isdigit() and not _pid_alive(int(pid)):
                    shutil.rmtree(other, ignore_errors=True)
    elif queue.startswith("test-"):
        from config.celery import app

        try:
            with app.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)
        except Exception:  # the broker went away: nothing to clean
            pass


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    """Each test gets its own image store; the test client speaks plain HTTP."""
    settings.SECURE_SSL_REDIRECT = False
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
    # Django's test client.login() authenticates without a request, which django-axes refuses;
    # the lockout is tested with axes on (tests/apps/test_security_login.py).
    settings.AXES_ENABLED = False
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    return settings.MEDIA_ROOT


@pytest.fixture(scope="session")
def generated_bids(tmp_path_factory) -> Path:
    """A small synthetic multi-site BIDS-PET cohort from the generator (read-only: copy to modify)."""
    from ml.phantoms import generate_cohort

    out = tmp_path_factory.mktemp("cohort") / "bids"
    generate_cohort(out, n_patients=4, n_sites=2, seed=11)
    return out


@pytest.fixture
def bids_copy(generated_bids, tmp_path) -> Path:
    """A private, modifiable copy of the generated cohort."""
    dest = tmp_path / "bids"
    shutil.copytree(generated_bids, dest)
    return dest


@pytest.fixture
def one_subject(bids_copy) -> Path:
    """The generated dataset cut down to its first participant (fast to import)."""
    rows = (bids_copy / "participants.tsv").read_text().splitlines()
    keep = rows[1].split("\t")[0]
    (bids_copy / "participants.tsv").write_text("\n".join(rows[:2]) + "\n")
    for sub in list(bids_copy.glob("sub-*")) + list((bids_copy / "derivatives" / "groundtruth").glob("sub-*")):
        if sub.name != keep:
            shutil.rmtree(sub)
    return bids_copy
