"""The audit trail is append-only: in the model everywhere, in the database itself on PostgreSQL."""
from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError

from apps.audit.models import AuditEvent
from apps.audit.services import audit_record
from tests.factories import ExamFactory, user_with

pytestmark = pytest.mark.django_db


def test_record_snapshots_actor_target_and_site():
    exam = ExamFactory()
    user = user_with("coordinator", exam.patient.site)
    event = audit_record(action="exam.view", actor=user, target=exam, site=exam.patient.site,
                         details={"tab": "viewer"})
    event.refresh_from_db()
    assert (event.actor_id, event.actor, event.action) == (user.pk, user.username, "exam.view")
    assert (event.object_type, event.object_id) == ("cohorts.exam", str(exam.pk))
    assert event.site_id == exam.patient.site.pk and event.details == {"tab": "viewer"}


def test_model_refuses_change_and_delete():
    event = audit_record(action="study.export", details={"format": "csv"})
    event.action = "nothing.happened"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "study.export"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the database trigger is PostgreSQL's")
def test_postgresql_trigger_refuses_update_and_delete_even_in_raw_sql():
    event = audit_record(action="volume.download")
    for sql in ("UPDATE audit_auditevent SET action = 'x' WHERE id = %s",
                "DELETE FROM audit_auditevent WHERE id = %s"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql, [event.pk])
    for qs_call in (lambda qs: qs.update(action="x"), lambda qs: qs.delete()):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            qs_call(AuditEvent.objects.filter(pk=event.pk))
    assert AuditEvent.objects.get(pk=event.pk).action == "volume.download"
