"""Orphan store files: a process killed between writing a file and committing its row leaves the file;
``sweep_store`` finds it, keeps everything a row names (FileFields and names inside JSON), and deletes
only with --delete."""
from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from django.core.management import call_command

from apps.cohorts.models import Mask, Volume
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.store import StoreTransaction, media_path, store_sweep_orphans
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db


def _age(path, hours: float) -> None:
    old = time.time() - hours * 3600
    os.utime(path, (old, old))


@pytest.fixture
def store_with_orphan(one_subject, settings):
    bids_import(path=one_subject)
    named = [media_path(r.file.name) for r in list(Volume.objects.all()) + list(Mask.objects.all())]
    # A killed import: the file is written, the row never committed, no rollback ran.
    killed = StoreTransaction()
    orphan_name, _ = killed.put_bytes(b"orphan voxels", category="volumes", suffix=".nii.gz")
    killed.release()
    # A plot named only inside JSON (as model plots and job results are).
    kept = StoreTransaction()
    plot_name, _ = kept.put_bytes(b"\x89PNG plot", category="plots", suffix=".png")
    kept.release()
    JobFactory(kind="train_classical", status="succeeded", result={"plots": {"roc": plot_name}})
    for path in [*named, media_path(orphan_name), media_path(plot_name)]:
        _age(path, 48)
    return named, orphan_name, plot_name


def test_sweep_lists_only_the_orphan_and_deletes_nothing_by_default(store_with_orphan):
    named, orphan, plot = store_with_orphan
    sweep = store_sweep_orphans()
    assert sweep.orphans == [orphan] and not sweep.deleted
    assert media_path(orphan).exists() and media_path(plot).exists()
    assert all(p.exists() for p in named)


def test_sweep_delete_removes_the_orphan_and_keeps_every_named_file(store_with_orphan, capsys):
    named, orphan, plot = store_with_orphan
    call_command("sweep_store", "--delete")
    out = capsys.readouterr().out
    assert orphan in out and "1 orphan store file(s)" in out and "deleted" in out
    assert not media_path(orphan).exists()
    assert media_path(plot).exists() and all(p.exists() for p in named)


def test_young_orphans_are_left_to_imports_still_committing(store_with_orphan):
    _, orphan, _ = store_with_orphan
    _age(media_path(orphan), 0)
    assert store_sweep_orphans(delete=True).orphans == []
    assert media_path(orphan).exists()
    assert store_sweep_orphans(older_than=timedelta(seconds=0), delete=False).orphans == [orphan]


def test_a_file_being_stored_now_is_kept(store_with_orphan):
    _, orphan, _ = store_with_orphan
    storing = StoreTransaction()
    storing.put_bytes(b"orphan voxels", category="volumes", suffix=".nii.gz")  # holds the shared lock
    try:
        sweep = store_sweep_orphans(delete=True)
    finally:
        storing.release()
    assert sweep.skipped_busy == [orphan] and media_path(orphan).exists()


def test_sweep_store_refuses_a_too_short_age():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="at least 1"):
        call_command("sweep_store", "--older-than-hours", "0.1")
