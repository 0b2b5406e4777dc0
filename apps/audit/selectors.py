"""Reading the audit trail, scoped: superusers see everything, coordinators their sites' events."""
from __future__ import annotations

from django.db.models import Q, QuerySet

from apps.accounts.models import Role
from apps.accounts.permissions import sites_for
from apps.audit.models import AuditEvent


def audit_events_visible(user) -> QuerySet[AuditEvent]:
    if not getattr(user, "is_authenticated", False):
        return AuditEvent.objects.none()
    if user.is_superuser:
        return AuditEvent.objects.all()
    site_ids = list(sites_for(user, (Role.COORDINATOR,)).values_list("pk", flat=True))
    if not site_ids:
        return AuditEvent.objects.none()
    return AuditEvent.objects.filter(Q(site_id__in=site_ids))


def audit_events_filtered(user, *, action: str = "", actor: str = "", object_type: str = "",
                          object_id: str = "") -> QuerySet[AuditEvent]:
    qs = audit_events_visible(user)
    if action:
        qs = qs.filter(action__startswith=action)
    if actor:
        qs = qs.filter(actor=actor)
    if object_type:
        qs = qs.filter(object_type=object_type)
    if object_id:
        qs = qs.filter(object_id=object_id)
    return qs
