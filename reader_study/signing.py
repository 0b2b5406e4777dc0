"""Signed, expiring URLs for the images a reader sees, and the de-identified NIfTI they serve.

A reader never gets an exam, volume or mask id. The case page builds the viewer configuration with
URLs ``/studies/images/<token>/``, where the token is signed with :class:`TimestampSigner` (salted
for this purpose, so no other signed value of the site can be replayed here) and carries the study
reader, the case, the arm and what to serve (``t1c``, ``pet_static``, ``mask:tumor``,
``map:ttp``, ``heatmap``...). :func:`image_token_verify` refuses a token that was tampered with,
has expired (:data:`IMAGE_URL_MAX_AGE_S`) or names another study reader; the view then checks the
reader's assignment and arm again against the database.

Served files are rewritten by :func:`deidentified_nifti`: the NIfTI header's free-text fields
(``descrip``, ``aux_file``, ``db_name``, ``intent_name``) are emptied, the affine (scanner mm of
the common grid) and the voxel data are kept. The result is cached in the image store under
``deid/`` keyed by the source file's SHA-256, written atomically, so two readers opening the same
case at once both read a whole file.
"""
from __future__ import annotations

import gzip
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.core import signing

from apps.cohorts.services.store import media_path

#: How long a signed image URL stays valid (a reading rarely lasts longer; the page re-signs on load).
IMAGE_URL_MAX_AGE_S = 2 * 3600
_SALT = "aminopet.reader_study.image"
#: NIfTI-1 header fields that may carry free text (names, dates, file names) and are emptied.
FREE_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")


class ImageTokenError(Exception):
    """The token is malformed, tampered with, expired, or not this reader's."""


@dataclass(frozen=True)
class ImageToken:
    """What a signed image URL grants: ``what`` of ``case_id`` for ``reader_id`` in ``arm``."""

    reader_id: int
    case_id: int
    arm: str
    what: str


def image_token_make(*, reader_id: int, case_id: int, arm: str, what: str) -> str:
    payload = {"r": int(reader_id), "c": int(case_id), "a": arm, "w": what}
    return signing.TimestampSigner(salt=_SALT).sign_object(payload, compress=True)


def image_token_verify(token: str, *, max_age: int = IMAGE_URL_MAX_AGE_S) -> ImageToken:
    """The grant of a token; raises :class:`ImageTokenError` when it is not valid now."""
    try:
        payload = signing.TimestampSigner(salt=_SALT).unsign_object(token, max_age=max_age)
    except signing.SignatureExpired as exc:
        raise ImageTokenError("the image link has expired; reload the case") from exc
    except signing.BadSignature as exc:
        raise ImageTokenError("invalid image link") from exc
    try:
        return ImageToken(reader_id=int(payload["r"]), case_id=int(payload["c"]), arm=str(payload["a"]),
                          what=str(payload["w"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageTokenError("invalid image link") from exc


def deidentified_bytes(source: Path) -> bytes:
    """The NIfTI at ``source`` re-encoded (gzip) with its free-text header fields emptied."""
    import nibabel as nib  # not at Django start-up

    image = nib.load(str(source))
    header = image.header.copy()
    for field in FREE_TEXT_FIELDS:
        if field in header:
            header[field] = b""
    data = image.dataobj.get_unscaled() if hasattr(image.dataobj, "get_unscaled") else image.get_fdata()
    clean = nib.Nifti1Image(data, image.affine, header=header)
    clean.set_qform(image.affine, code=int(header["qform_code"]) or 1)
    clean.set_sform(image.affine, code=int(header["sform_code"]) or 1)
    buffer = io.BytesIO()
    file_map = clean.make_file_map({"image": buffer, "header": buffer})
    clean.to_file_map(file_map)
    # mtime=0: the gzip header carries no timestamp either
    return gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)


def deidentified_nifti(*, name: str, sha256: str) -> Path:
    """Path of the de-identified copy of the stored file ``name`` (made once, atomically)."""
    target = media_path(f"deid/{sha256[:2]}/{sha256}.nii.gz")
    if not target.exists():
        data = deidentified_bytes(media_path(name))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    return target
