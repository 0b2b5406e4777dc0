"""Errors raised by the readers in ml.io: each names the file and the reason."""
from __future__ import annotations


class ImageFormatError(ValueError):
    """An input image (NIfTI, DICOM, sidecar) that cannot be used, with the file and the reason.

    Args:
        path: the offending file (or folder), as the user gave it.
        reason: one sentence a coordinator can act on.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
