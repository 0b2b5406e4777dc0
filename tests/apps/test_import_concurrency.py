"""Two imports of the same data at once (issue 8, item 2): the loser's rollback must not delete the
content-addressed files the winner's committed rows point to, and both jobs end explained.

Each import runs in its own thread with its own database connection (transactional tests, so the
threads see each other's commits). The interleaving test forces the losing order on any database;
the free-running one is the probe's situation on PostgreSQL.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.db import connection

from apps.cohorts.models import Exam, Mask, Patient, Volume
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.store import StoreTransaction, media_path
from ml.io.nifti import load_nifti, sha256_file

pytestmark = pytest.mark.django_db(transaction=True)


def _in_thread(target, results: dict, key: str) -> threading.Thread:
    def run():
        try:
            results[key] = target()
        except BaseException as exc:  # reported by the test
            results[key] = exc
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run, name=f"import-{key}")
    thread.start()
    return thread


def _assert_store_consistent(settings) -> None:
    """Every committed Volume/Mask file exists, is readable and holds its sha256; one copy of each."""
    rows = list(Volume.objects.all()) + list(Mask.objects.all())
    assert rows
    for row in rows:
        path = media_path(row.file.name)
        assert path.is_file(), f"{row} points to a missing file {row.file.name}"
        assert sha256_file(path) == row.sha256
        load_nifti(path, ndim=(3, 4))
    stored = [p for p in Path(settings.MEDIA_ROOT).rglob("*.nii*") if ".locks" not in p.parts]
    assert len(stored) == len({row.sha256 for row in rows})  # one copy of everything, no stray files


def test_losing_import_keeps_the_winners_files(one_subject, settings):
    """A stores every file first and then loses the race to write the rows: before the fix its
    rollback deleted the files B's committed rows point to."""
    a_stored, b_done = threading.Event(), threading.Event()
    missing_after_rollback: list[str] = []

    def a_progress(pct, msg=""):
        if pct == 90 and not a_stored.is_set():  # files stored, rows not written yet
            a_stored.set()
            assert b_done.wait(120)
        if "checking again" in msg:  # A's write failed and was rolled back; before it re-checks:
            rows = list(Volume.objects.all()) + list(Mask.objects.all())
            missing_after_rollback.extend(r.file.name for r in rows if not media_path(r.file.name).is_file())

    def b_import():
        assert a_stored.wait(120)
        try:
            return bids_import(path=one_subject)
        finally:
            b_done.set()

    results: dict = {}
    threads = [_in_thread(lambda: bids_import(path=one_subject, progress=a_progress), results, "a"),
               _in_thread(b_import, results, "b")]
    for thread in threads:
        thread.join(300)
    a, b = results["a"], results["b"]
    assert not isinstance(b, BaseException), b
    assert not isinstance(a, BaseException), a
    assert b.exams_created == 2 and b.volumes_created > 0 and not b.concurrent
    assert missing_after_rollback == []  # the rollback itself deleted none of B's files
    # the loser explains itself: nothing created, everything found already imported
    assert a.concurrent and a.patients_created == a.exams_created == a.volumes_created == a.masks_created == 0
    assert a.unchanged == b.volumes_created + b.masks_created
    assert "already imported" in a.message()
    assert Patient.objects.count() == 1 and Exam.objects.count() == 2
    _assert_store_consistent(settings)


@pytest.mark.skipif(connection.vendor != "postgresql",
                    reason="free-running concurrent writers need PostgreSQL (run with DATABASE_URL=postgres://...)")
def test_two_identical_imports_at_once_on_postgresql(one_subject, settings):
    start = threading.Barrier(2)

    def run():
        start.wait(60)
        return bids_import(path=one_subject)

    results: dict = {}
    threads = [_in_thread(run, results, key) for key in ("a", "b")]
    for thread in threads:
        thread.join(300)
    reports = [results["a"], results["b"]]
    assert not any(isinstance(r, BaseException) for r in reports), reports
    # one imported the exams; the other created none of them and says why
    assert sorted(r.exams_created for r in reports) == [0, 2]
    loser = next(r for r in reports if r.exams_created == 0)
    winner = next(r for r in reports if r.exams_created == 2)
    assert loser.volumes_created + winner.volumes_created == Volume.objects.count()
    assert loser.concurrent or loser.unchanged == Volume.objects.count() + Mask.objects.count()
    assert Patient.objects.count() == 1 and Exam.objects.count() == 2
    _assert_store_consistent(settings)


def test_reimport_restores_a_file_missing_from_the_store(one_subject, settings):
    bids_import(path=one_subject)
    lost = Volume.objects.filter(kind="pet_static").first()
    media_path(lost.file.name).unlink()
    report = bids_import(path=one_subject)
    assert report.restored == 1 and report.volumes_created == 0
    assert "1 missing from the store restored" in report.message()
    _assert_store_consistent(settings)


# --- the store's rule, without imports ---------------------------------------------------------


def test_rollback_deletes_an_unshared_new_file(settings):
    store = StoreTransaction()
    name, _ = store.put_bytes(b"only mine", category="volumes", suffix=".bin")
    store.rollback()
    assert not media_path(name).exists()
    assert not [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()]  # lock file gone too


def test_rollback_keeps_a_file_another_transaction_stored(settings):
    """B found A's new file and kept it (say in a JSON field no FileField check can see)."""
    a, b = StoreTransaction(), StoreTransaction()
    name, _ = a.put_bytes(b"shared", category="plots", suffix=".png")
    assert b.put_bytes(b"shared", category="plots", suffix=".png")[0] == name and not b.created
    b.release()  # B committed
    a.rollback()
    assert media_path(name).read_bytes() == b"shared"


def test_rollback_keeps_a_file_another_transaction_is_storing(settings):
    a, b = StoreTransaction(), StoreTransaction()
    name, _ = a.put_bytes(b"shared", category="volumes", suffix=".bin")
    b.put_bytes(b"shared", category="volumes", suffix=".bin")
    a.rollback()  # B still holds its lock (not committed yet)
    assert media_path(name).exists()
    b.release()


def test_rollback_keeps_a_file_a_committed_row_names(settings):
    from tests.factories import VolumeFactory

    store = StoreTransaction()
    name, _ = store.put_bytes(b"restored", category="volumes", suffix=".nii.gz")
    VolumeFactory(file=name)  # e.g. a re-import restoring a lost file of an existing row
    store.rollback()
    assert media_path(name).exists()


def test_same_dicom_study_imported_twice_at_once(tmp_path, settings):
    """The second DICOM import to write finds the exam committed by the first: no IntegrityError,
    it reports the series unchanged."""
    from apps.cohorts.services.dicom import dicom_import
    from ml.phantoms import export_exam_dicom, make_exam

    export_exam_dicom(make_exam(seed=4, site=0, timepoint="initial_diagnosis"), tmp_path / "study",
                      series=("pet_static", "t1c"))
    a_read, b_done = threading.Event(), threading.Event()

    def a_progress(pct, msg=""):
        if pct == 80 and not a_read.is_set():  # series read and checked against the database, nothing written
            a_read.set()
            assert b_done.wait(120)

    def b_import():
        assert a_read.wait(120)
        try:
            return dicom_import(path=tmp_path / "study", site="lyon", patient="P1", exam="e1")
        finally:
            b_done.set()

    results: dict = {}
    threads = [_in_thread(lambda: dicom_import(path=tmp_path / "study", site="lyon", patient="P1", exam="e1",
                                               progress=a_progress), results, "a"),
               _in_thread(b_import, results, "b")]
    for thread in threads:
        thread.join(300)
    a, b = results["a"], results["b"]
    assert not isinstance(a, BaseException), a
    assert not isinstance(b, BaseException), b
    assert sorted(b["created"]) == ["pet_static", "t1c"] and not b["concurrent"]
    assert a["created"] == [] and sorted(a["unchanged"]) == ["pet_static", "t1c"] and a["concurrent"]
    assert "already imported" in a["message"] and a["exam"] == b["exam"]
    assert Exam.objects.count() == 1 and Volume.objects.count() == 2
    _assert_store_consistent(settings)
