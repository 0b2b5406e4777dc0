"""Safe extraction of uploaded zip archives.

Rejects entries with ``..`` or absolute paths (zip slip), links, and archives whose expanded size
exceeds a cap or whose compression ratio betrays a zip bomb; counts the bytes actually written, so a
lying header does not get past the cap.
"""
from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from ml.io.errors import ImageFormatError

MAX_RATIO = 200  # expanded/compressed; real NIfTI/DICOM zips stay far below


def safe_extract(archive: str | Path, dest: str | Path, *, max_bytes: int) -> Path:
    """Extract ``archive`` into ``dest`` (created) and return ``dest``.

    Raises:
        ImageFormatError: not a zip, an unsafe entry name, a link, or too large once expanded.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImageFormatError(archive, f"not a readable zip archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
        declared = 0
        for info in infos:
            name = PurePosixPath(info.filename)
            if info.filename.startswith(("/", "\\")) or name.is_absolute() or ".." in name.parts or ":" in name.parts[0]:
                raise ImageFormatError(archive, f"unsafe entry name {info.filename!r} (absolute or '..')")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ImageFormatError(archive, f"entry {info.filename!r} is a symbolic link")
            declared += info.file_size
            if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_RATIO and info.file_size > 1 << 20:
                raise ImageFormatError(archive, f"entry {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}x: refused as a zip bomb")
        if declared > max_bytes:
            raise ImageFormatError(archive, f"expands to {declared} bytes, above the {max_bytes}-byte limit")
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        for info in infos:
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        out.close()
                        shutil.rmtree(dest, ignore_errors=True)
                        raise ImageFormatError(archive, f"expands beyond the {max_bytes}-byte limit")
                    out.write(chunk)
    return dest


def single_root(folder: Path) -> Path:
    """The folder itself, or its only sub-folder when an archive wraps everything in one folder."""
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder
