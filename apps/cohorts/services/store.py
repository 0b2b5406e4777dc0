"""The image store: files under MEDIA_ROOT named by their SHA-256 (content-addressed).

Storing the same bytes twice is a no-op, so re-imports and retried jobs never duplicate files.
A :class:`StoreTransaction` remembers the files it created so a failed import removes them again.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from ml.io.nifti import sha256_file


def _suffix(name: str) -> str:
    for ext in (".nii.gz", ".nii", ".png", ".json", ".csv", ".joblib", ".pt"):
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def media_path(name: str) -> Path:
    return Path(settings.MEDIA_ROOT) / name


class StoreTransaction:
    """Collects the files written during one import; ``rollback()`` deletes the new ones."""

    def __init__(self) -> None:
        self.created: list[Path] = []

    def put_file(self, src: str | Path, *, category: str, sha256: str | None = None) -> tuple[str, str]:
        """Copy ``src`` into the store; returns (name relative to MEDIA_ROOT, sha256)."""
        sha = sha256 or sha256_file(src)
        name = f"{category}/{sha[:2]}/{sha}{_suffix(Path(src).name)}"
        target = media_path(name)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            os.close(fd)
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
            self.created.append(target)
        return name, sha

    def put_bytes(self, data: bytes, *, category: str, suffix: str) -> tuple[str, str]:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        name = f"{category}/{sha[:2]}/{sha}{suffix}"
        target = media_path(name)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
            self.created.append(target)
        return name, sha

    def rollback(self) -> None:
        for path in self.created:
            path.unlink(missing_ok=True)
        self.created.clear()
