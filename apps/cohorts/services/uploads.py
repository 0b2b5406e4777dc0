"""Uploaded archives: saved under MEDIA_ROOT/uploads, imported by a job on a worker, then deleted.

An uploaded archive is the original data, names, patient IDs and birth dates included (DICOM
headers, sidecars). It lives only as long as its import needs it:

* saved as ``uploads/<random>.zip`` (mode 0600), never served by any URL; the job's params hold that
  name and the user's own file name (``filename``), which is what every message shows;
* deleted as soon as its import succeeds (:func:`upload_delete`, called by the import handlers);
* kept ``AMINOPET_FAILED_UPLOAD_RETENTION_DAYS`` after a failed import, so the job can be retried,
  then removed by :func:`uploads_cleanup` (``manage.py cleanup_uploads``, and opportunistically at
  every upload and import).
"""
from __future__ import annotations

import logging
import os
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePath

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.accounts.models import Site
from apps.accounts.permissions import can_manage_site
from apps.jobs.models import Job, JobStatus
from apps.jobs.services import job_submit

logger = logging.getLogger(__name__)

UPLOAD_DIR = "uploads"
#: An upload no job names (the request died between saving it and creating the job) is removed
#: after this long.
ORPHAN_GRACE = timedelta(hours=1)
_NAME = re.compile(r"^[0-9a-f]{32}\.zip$")


def upload_root() -> Path:
    return Path(settings.MEDIA_ROOT) / UPLOAD_DIR


def upload_path(name: str) -> Path:
    """The file of upload ``name`` (as stored in a job's params); refuses anything but our names."""
    if not _NAME.match(str(name)):
        raise ValueError(f"not an upload name: {name!r}")
    return upload_root() / name


def display_name(name: str | None) -> str:
    """The user's file name as shown in messages: its last component, printable, at most 120 chars."""
    base = PurePath(str(name or "").replace("\\", "/")).name
    text = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return (text or "upload.zip")[:120]


def upload_save(uploaded) -> str:
    """Write an uploaded file to the uploads folder (owner-only); returns its upload name."""
    folder = upload_root()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.zip"
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in uploaded.chunks():
            out.write(chunk)
    return name


def upload_delete(name: str) -> bool:
    """Remove upload ``name``; True when a file was removed."""
    path = upload_path(name)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def import_submit(*, kind: str, uploaded, params: dict, user, site: Site | None) -> Job:
    """Queue an import of an uploaded zip (``kind``: import_bids or import_dicom)."""
    if kind not in ("import_bids", "import_dicom"):
        raise ValueError(f"unknown import kind {kind!r}")
    if site is not None and not can_manage_site(user, site):
        raise PermissionError(f"you are not a coordinator of site {site.name!r}")
    uploads_cleanup_quietly()
    name = upload_save(uploaded)
    try:
        return job_submit(
            kind=kind, params=params | {"upload": name, "filename": display_name(uploaded.name)},
            user=user, site=site,
        )
    except BaseException:
        upload_delete(name)
        raise


@dataclass
class CleanupReport:
    """What :func:`uploads_cleanup` removed, and what it kept."""

    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept: int = 0

    def message(self) -> str:
        return (f"{len(self.removed)} uploaded archives removed ({self.bytes_freed / 1024**2:.1f} MB); "
                f"{self.kept} kept (import queued, running, or failed less than "
                f"{settings.AMINOPET_FAILED_UPLOAD_RETENTION_DAYS} days ago)")


def _expired(job: Job | None, *, mtime: float, now, retention: timedelta) -> bool:
    if job is None:
        return now.timestamp() - mtime > ORPHAN_GRACE.total_seconds()
    if job.status == JobStatus.SUCCEEDED:
        return True
    if job.status == JobStatus.FAILED:
        return (job.finished_at or job.created_at) < now - retention
    return False  # queued or running: its import needs it


def uploads_cleanup(*, now=None, retention_days: int | None = None) -> CleanupReport:
    """Remove uploads whose import succeeded, failed more than the retention ago, or that no job names.

    Args:
        now: the current time (tests).
        retention_days: default ``settings.AMINOPET_FAILED_UPLOAD_RETENTION_DAYS``.
    """
    now = now or timezone.now()
    days = settings.AMINOPET_FAILED_UPLOAD_RETENTION_DAYS if retention_days is None else retention_days
    retention = timedelta(days=days)
    report = CleanupReport()
    root = upload_root()
    if not root.is_dir():
        return report
    for path in sorted(root.iterdir()):
        if not path.is_file():
            continue
        # Jobs from before uploads were named by ``upload`` carry the absolute ``path``.
        job = (Job.objects.filter(Q(params__upload=path.name) | Q(params__path=str(path)))
               .order_by("-created_at").first())
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if _expired(job, mtime=stat.st_mtime, now=now, retention=retention):
            path.unlink(missing_ok=True)
            report.removed.append(path.name)
            report.bytes_freed += stat.st_size
        else:
            report.kept += 1
    return report


_last_cleanup = 0.0


def uploads_cleanup_quietly(*, every_s: float = 600.0) -> None:
    """Run :func:`uploads_cleanup` at most every ``every_s`` seconds per process; never raises."""
    global _last_cleanup
    if time.monotonic() - _last_cleanup < every_s:
        return
    _last_cleanup = time.monotonic()
    try:
        report = uploads_cleanup()
    except Exception:  # a cleanup must never fail an upload or an import
        logger.exception("uploads cleanup failed")
        return
    if report.removed:
        logger.info("uploads cleanup: %s", report.message())


def user_message(text: str, *, roots: dict[str | Path, str]) -> str:
    """``text`` with server paths replaced by what the user knows.

    Args:
        roots: server folder or file -> its name for the user (``{extracted_dir: "study.zip"}``);
            a path below a root becomes ``"study.zip: sub-01/anat/x.nii.gz"``. Whatever else lies
            under MEDIA_ROOT is shown relative to it, and random upload names are dropped.
    """
    pairs = sorted(((str(k).rstrip("/"), v) for k, v in roots.items() if str(k) not in ("", ".", "/")),
                   key=lambda kv: len(kv[0]), reverse=True)
    media = str(Path(settings.MEDIA_ROOT)).rstrip("/")
    pairs.append((media, "the image store"))
    for root, label in pairs:
        text = text.replace(root + "/", f"{label}: ").replace(root, label)
    return re.sub(r"[0-9a-f]{32}\.zip", "the uploaded archive", text)
