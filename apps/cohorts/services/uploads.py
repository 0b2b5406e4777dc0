"""Uploaded archives: saved under MEDIA_ROOT/uploads, then imported by a job on a worker."""
from __future__ import annotations

import uuid

from django.conf import settings

from apps.accounts.models import Site
from apps.accounts.permissions import can_manage_site
from apps.jobs.models import Job
from apps.jobs.services import job_submit


def upload_save(uploaded) -> str:
    """Write an uploaded file to the uploads folder; returns its absolute path."""
    folder = settings.MEDIA_ROOT / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.zip"
    with open(path, "wb") as out:
        for chunk in uploaded.chunks():
            out.write(chunk)
    return str(path)


def import_submit(*, kind: str, uploaded, params: dict, user, site: Site | None) -> Job:
    """Queue an import of an uploaded zip (``kind``: import_bids or import_dicom)."""
    if kind not in ("import_bids", "import_dicom"):
        raise ValueError(f"unknown import kind {kind!r}")
    if site is not None and not can_manage_site(user, site):
        raise PermissionError(f"you are not a coordinator of site {site.name!r}")
    path = upload_save(uploaded)
    return job_submit(kind=kind, params=params | {"path": path}, user=user, site=site)
