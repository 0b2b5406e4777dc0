"""The append-only audit trail: who viewed, downloaded or changed what, and when.

Rows are only ever inserted (``apps.audit.services.audit_record``). The model refuses ``save()`` of
an existing row and ``delete()``; on PostgreSQL a trigger (migration 0001) refuses UPDATE and DELETE
in the database itself, so not even raw SQL or the admin can rewrite history. References to users,
sites and objects are plain ids plus a text snapshot, never foreign keys with cascades, so deleting
a user or an exam never touches the trail.
"""
from __future__ import annotations

from django.db import models


class AuditEvent(models.Model):
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True, db_index=True, help_text="User id (no FK)")
    actor = models.CharField(max_length=150, blank=True, help_text="Username at the time")
    action = models.CharField(max_length=64, db_index=True, help_text="e.g. exam.view, volume.download")
    site_id = models.BigIntegerField(null=True, blank=True, db_index=True, help_text="Site id (no FK)")
    object_type = models.CharField(max_length=64, blank=True, help_text="app_label.model")
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor or '-'} {self.action} {self.object_repr}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise PermissionError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("audit events are append-only")
