"""Quality control of volumes: one service for the page and the API, recorded in the audit trail."""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import can_manage_site
from apps.audit.services import audit_record
from apps.cohorts.models import QcStatus, Volume


@transaction.atomic
def volume_qc_set(*, volume: Volume, status: str, note: str = "", user, request=None) -> Volume:
    """Set a volume's QC status and note as ``user`` (a coordinator of its site).

    Raises:
        PermissionError: the user does not manage the volume's site.
        ValueError: unknown status.
    """
    site = volume.exam.patient.site
    if not can_manage_site(user, site):
        raise PermissionError("you are not a coordinator of this volume's site")
    if status not in QcStatus.values:
        raise ValueError(f"unknown QC status {status!r}; expected one of {', '.join(QcStatus.values)}")
    locked = Volume.objects.select_for_update().get(pk=volume.pk)
    before = {"qc_status": locked.qc_status, "qc_note": locked.qc_note}
    locked.qc_status, locked.qc_note = status, note[:500]
    locked.qc_by, locked.qc_at = user, timezone.now()
    locked.save(update_fields=["qc_status", "qc_note", "qc_by", "qc_at"])
    audit_record(action="volume.qc", actor=user, target=locked, site=site, request=request,
                 details={"before": before, "after": {"qc_status": status, "qc_note": locked.qc_note}})
    return locked
