"""The image store: files under MEDIA_ROOT named by their SHA-256 (content-addressed).

Storing the same bytes twice is a no-op, so re-imports and retried jobs never duplicate files.
A :class:`StoreTransaction` remembers the files it created so a failed import removes them again,
but only when nobody else can be using them: two imports of the same data share files, and the
loser's rollback must not delete what the winner's committed rows point to.

How sharing is made safe (one lock file per stored name, under ``MEDIA_ROOT/.locks/``):

* every ``put_*`` takes a shared ``flock`` on the name's lock file *before* looking whether the
  file exists, appends its transaction token to the lock file, and keeps the lock until
  :meth:`StoreTransaction.release` (call it after the rows are committed; it also runs when the
  object is garbage-collected, i.e. when the caller's function returns);
* :meth:`StoreTransaction.rollback` deletes a file it created only when the lock file holds no
  other transaction's token (nobody else stored that name while we held it), it gets the lock
  exclusively without waiting (nobody is storing it now), and no committed row's ``FileField``
  names it. Anything else keeps the file: a failed import can leave an unreferenced file behind,
  never a row without its file.

The locks are ``flock(2)``: local disks and NFSv4 (which the deployment guide uses) support them
across processes and hosts. Celery's prefork workers run one job per process.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db import DatabaseError, models

logger = logging.getLogger(__name__)

LOCK_DIR = ".locks"


def _suffix(name: str) -> str:
    for ext in (".nii.gz", ".nii", ".png", ".json", ".csv", ".joblib", ".pt"):
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def media_path(name: str) -> Path:
    return Path(settings.MEDIA_ROOT) / name


def _lock_path(name: str) -> Path:
    return Path(settings.MEDIA_ROOT) / LOCK_DIR / f"{name}.lock"


def _open_locked(name: str, operation: int) -> int | None:
    """An fd of ``name``'s lock file holding ``operation`` (LOCK_SH / LOCK_EX, maybe | LOCK_NB).

    The lock file is removed by whoever holds it exclusively last, so after locking we check that
    the path still names the inode we locked (else retry on the new file). None: would block.
    """
    path = _lock_path(name)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, operation)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _still_named(name: str, fd: int) -> bool:
    try:
        return os.stat(_lock_path(name)).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def file_references(name: str) -> list[str]:
    """``app.Model.field`` of every committed row whose FileField/ImageField holds ``name``."""
    found = []
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, models.FileField) and model._base_manager.filter(**{field.name: name}).exists():
                found.append(f"{model._meta.label}.{field.name}")
    return found


class StoreTransaction:
    """Collects the files written during one import; ``rollback()`` deletes the new unshared ones.

    Use::

        store = StoreTransaction()
        try:
            with transaction.atomic():
                name, sha = store.put_file(path, category="volumes")
                Volume.objects.create(file=name, ...)
        except BaseException:
            store.rollback()
            raise
        store.release()
    """

    def __init__(self) -> None:
        self.created: list[Path] = []
        self.token = uuid.uuid4().hex
        self._locks: dict[str, int] = {}  # stored name -> fd holding a shared lock

    def _claim(self, name: str) -> None:
        if name in self._locks:
            return
        fd = _open_locked(name, fcntl.LOCK_SH)
        os.write(fd, f"{self.token}\n".encode())
        self._locks[name] = fd

    def _write(self, name: str, write) -> None:
        """Create the store file ``name`` through ``write(tmp_path)`` unless it exists (under the lock)."""
        self._claim(name)
        target = media_path(name)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.created.append(target)

    def put_file(self, src: str | Path, *, category: str, sha256: str | None = None) -> tuple[str, str]:
        """Copy ``src`` into the store; returns (name relative to MEDIA_ROOT, sha256)."""
        if sha256 is None:
            from ml.io.nifti import sha256_file  # ml.io.nifti loads nibabel: not at Django start-up

            sha256 = sha256_file(src)
        sha = sha256
        name = f"{category}/{sha[:2]}/{sha}{_suffix(Path(src).name)}"
        self._write(name, lambda tmp: shutil.copyfile(src, tmp))
        return name, sha

    def put_bytes(self, data: bytes, *, category: str, suffix: str) -> tuple[str, str]:
        sha = hashlib.sha256(data).hexdigest()
        name = f"{category}/{sha[:2]}/{sha}{suffix}"
        self._write(name, lambda tmp: Path(tmp).write_bytes(data))
        return name, sha

    def _name(self, path: Path) -> str:
        return path.relative_to(Path(settings.MEDIA_ROOT)).as_posix()

    def _others_stored(self, fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        tokens = set(os.read(fd, 1 << 20).decode(errors="replace").split())
        return bool(tokens - {self.token})

    def rollback(self) -> None:
        """Delete the files this transaction created that no one else stored or references."""
        for path in self.created:
            name = self._name(path)
            fd = self._locks.get(name)
            if fd is None or self._others_stored(fd):
                continue
            try:  # converts our shared lock; fails while another transaction holds it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            if self._others_stored(fd) or not _still_named(name, fd):
                continue
            try:
                referenced = file_references(name)
            except DatabaseError:  # cannot tell: keep the file
                logger.warning("store rollback: could not check references of %s; kept", name)
                continue
            if not referenced:
                path.unlink(missing_ok=True)
        self.created.clear()
        self.release()

    def release(self) -> None:
        """Drop the locks (after the rows naming the files are committed, or after rollback)."""
        locks, self._locks = self._locks, {}
        for name, fd in locks.items():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass  # someone else holds it: they remove the lock file when they are done
            else:
                _lock_path(name).unlink(missing_ok=True)
            finally:
                os.close(fd)

    def __enter__(self) -> StoreTransaction:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.release()
        else:
            self.rollback()

    def __del__(self) -> None:
        if getattr(self, "_locks", None):
            try:
                self.release()
            except Exception:  # interpreter shutdown: the fds close with the process
                pass


# --- orphans: store files no row names (left by a process killed between writing and committing) ---

#: A store name: ``<category>/<2 hex>/<sha256><suffix>`` (what put_file/put_bytes create).
STORE_NAME = re.compile(r"\b([a-z_]+/[0-9a-f]{2}/[0-9a-f]{64}(?:\.[a-z]+){0,2})\b")


def store_referenced_names() -> set[str]:
    """Every store name a committed row holds: FileFields, and names inside JSON and text fields
    (plots, explanation maps and job results keep names in JSON)."""
    names: set[str] = set()
    for model in apps.get_models():
        files, texts = [], []
        for field in model._meta.concrete_fields:
            if isinstance(field, models.FileField):
                files.append(field.name)
            elif isinstance(field, models.JSONField | models.TextField | models.CharField):
                texts.append(field.name)
        if files:
            for row in model._base_manager.values_list(*files):
                names.update(v for v in row if v)
        if texts:
            for row in model._base_manager.values_list(*texts).iterator(chunk_size=2000):
                for value in row:
                    if value:
                        text = value if isinstance(value, str) else json.dumps(value)
                        if "/" in text:
                            names.update(STORE_NAME.findall(text))
    return names


@dataclass(frozen=True)
class StoreSweep:
    """Orphan store files found (and deleted unless a dry run), with their total size."""

    orphans: list[str]
    bytes: int
    deleted: bool
    skipped_busy: list[str]

    def message(self) -> str:
        size = f"{self.bytes / 1e6:.1f} MB"
        verb = "deleted" if self.deleted else "found (dry run: nothing deleted; --delete removes them)"
        busy = f"; {len(self.skipped_busy)} being stored now, kept" if self.skipped_busy else ""
        return f"{len(self.orphans)} orphan store file(s), {size}, {verb}{busy}"


def store_sweep_orphans(*, older_than: timedelta = timedelta(hours=24), delete: bool = False) -> StoreSweep:
    """Find the store files that no committed row names, older than ``older_than`` (a running import
    may not have committed yet), and delete them when ``delete``.

    Only content-addressed names (:data:`STORE_NAME`) are candidates: uploads, scratch folders and
    caches are someone else's. A file whose lock another process holds (being stored now) is kept.
    References are read once before looking at the files; a file written after that is younger than
    ``older_than`` and so never a candidate.
    """
    root = Path(settings.MEDIA_ROOT)
    referenced = store_referenced_names()
    cutoff = time.time() - older_than.total_seconds()
    orphans, busy, total = [], [], 0
    if not root.is_dir():
        return StoreSweep(orphans=[], bytes=0, deleted=delete, skipped_busy=[])
    for category in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(category.glob("??/*")):
            name = path.relative_to(root).as_posix()
            if not STORE_NAME.fullmatch(name) or name in referenced or not path.is_file():
                continue
            stat = path.stat()
            if stat.st_mtime > cutoff:
                continue
            if delete:
                fd = _open_locked(name, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if fd is None:
                    busy.append(name)
                    continue
                try:
                    if file_references(name):  # committed since we read the references
                        continue
                    path.unlink(missing_ok=True)
                    _lock_path(name).unlink(missing_ok=True)
                finally:
                    os.close(fd)
                logger.warning("store sweep: deleted orphan %s (%d bytes)", name, stat.st_size)
            orphans.append(name)
            total += stat.st_size
    return StoreSweep(orphans=orphans, bytes=total, deleted=delete, skipped_busy=busy)
