"""On PostgreSQL: two concurrent submits of one reading store one answer, and the audit trail of the
reading refuses UPDATE and DELETE in the database itself."""
from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction
from django.db.utils import DatabaseError

from apps.audit.models import AuditEvent
from reader_study import services
from reader_study.models import Assignment, Reading
from tests.reader_study.conftest import make_world

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and the audit trigger are PostgreSQL's"),
]


def test_two_concurrent_submits_store_one_answer():
    w = make_world()
    services.study_open(study=w["study"], user=w["coordinator"])
    user = w["readers"][0]
    assignment = Assignment.objects.filter(session__reader__user=user).first()
    reading = services.reading_open(assignment=assignment, arm="unaided", user=user)
    barrier = threading.Barrier(2)
    outcomes = []

    def submit(confidence):
        try:
            row = Reading.objects.get(pk=reading.pk)
            barrier.wait()
            services.reading_submit(reading=row, answer={"decision": True, "confidence": confidence}, user=user)
            outcomes.append(("stored", confidence))
        except services.ReadingLocked:
            outcomes.append(("locked", confidence))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=submit, args=(c,)) for c in (10, 90)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o[0] for o in outcomes) == ["locked", "stored"]
    stored = Reading.objects.get(pk=reading.pk)
    assert stored.confidence == next(c for kind, c in outcomes if kind == "stored")
    assert AuditEvent.objects.filter(action="reading.submit", object_id=str(reading.pk)).count() == 1


def test_reading_audit_events_refuse_update_and_delete():
    w = make_world()
    services.study_open(study=w["study"], user=w["coordinator"])
    user = w["readers"][0]
    assignment = Assignment.objects.filter(session__reader__user=user).first()
    reading = services.reading_open(assignment=assignment, arm="unaided", user=user)
    services.reading_submit(reading=reading, answer={"decision": False, "confidence": 20}, user=user)
    event = AuditEvent.objects.get(action="reading.submit", object_id=str(reading.pk))
    for sql in ("UPDATE audit_auditevent SET details = '{}' WHERE id = %s",
                "DELETE FROM audit_auditevent WHERE id = %s"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql, [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).details["confidence"] == 20
