"""Writing the audit trail: one function, ``audit_record``, called by services and views."""
from __future__ import annotations

from typing import Any

from django.db import models

from apps.audit.models import AuditEvent


def _client_ip(request) -> str | None:
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def audit_record(
    *,
    action: str,
    actor=None,
    target: models.Model | None = None,
    site=None,
    details: dict[str, Any] | None = None,
    request=None,
) -> AuditEvent:
    """Append one event: ``actor`` (a user or None for the system) did ``action`` on ``target``.

    Args:
        action: dotted verb, e.g. ``exam.view``, ``volume.download``, ``volume.qc``, ``import.run``,
            ``labels.change``, ``study.design_change``, ``reading.submit``, ``study.export``.
        actor: the user; defaults to ``request.user`` when a request is given.
        target: the object acted on (its type, id and text are snapshotted).
        site: the site the object belongs to (a Site or its id), for site-scoped listings.
        details: JSON-safe facts (changed fields with old and new values, file names...).
        request: the HTTP request, for the user and the client address.
    """
    if actor is None and request is not None and getattr(request.user, "is_authenticated", False):
        actor = request.user
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    site_id = getattr(site, "pk", site)
    return AuditEvent.objects.create(
        action=action,
        actor_id=actor.pk if actor is not None else None,
        actor=actor.get_username() if actor is not None else "",
        site_id=site_id,
        object_type=target._meta.label_lower if target is not None else "",
        object_id=str(target.pk) if target is not None else "",
        object_repr=str(target)[:200] if target is not None else "",
        details=details or {},
        ip=_client_ip(request),
    )
