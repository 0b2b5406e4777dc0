"""Safe extraction of uploaded zip archives (BIDS datasets, DICOM studies).

Rejects entries with ``..`` or absolute paths (zip slip), links, unreadable entries, and archives
whose expanded size exceeds a cap; counts the bytes actually written, so a lying header does not get
past the cap. Everything extracted is removed again when the archive is refused.
"""
from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from ml.io.errors import ImageFormatError


def unsafe_entry(name: str) -> str | None:
    """Why a zip entry name is unsafe to extract, or None."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        return f"unsafe entry name {name!r}: zip entry has an absolute path"
    if ".." in PurePosixPath(normalised).parts:
        return f"unsafe entry name {name!r}: zip entry points outside the archive ('..')"
    return None


def safe_extract(archive: str | Path, dest: str | Path, *, max_bytes: int) -> Path:
    """Extract ``archive`` into ``dest`` (created) and return ``dest``.

    Raises:
        ImageFormatError: not a zip, an unsafe entry name, a link, an unreadable entry, or more
            than ``max_bytes`` once expanded (declared or actually written).
    """
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImageFormatError(archive, f"not a readable zip archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
        for info in infos:
            reason = unsafe_entry(info.filename)
            if reason:
                raise ImageFormatError(archive, reason)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ImageFormatError(archive, f"zip entry {info.filename!r} is a symbolic link")
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise ImageFormatError(archive, f"zip expands to {declared} bytes, more than the {max_bytes}-byte limit")
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        try:
            for info in infos:
                target = dest / info.filename.replace("\\", "/")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as out:
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            if written > max_bytes:  # declared sizes can lie
                                raise ImageFormatError(
                                    archive, f"zip expands to more than the {max_bytes}-byte limit "
                                    f"(while extracting {info.filename!r})")
                            out.write(chunk)
                except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                    raise ImageFormatError(archive, f"zip entry {info.filename!r} is unreadable ({exc})") from exc
        except ImageFormatError:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return dest


def single_root(folder: Path) -> Path:
    """The folder itself, or its only sub-folder when an archive wraps everything in one folder."""
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder
