"""Load and validate NIfTI volumes.

Every reader of image files in AminoPET goes through :func:`load_nifti`, so a truncated gzip, a file
that is not NIfTI, a 2D or 5D array, NaN/inf voxels or a zero voxel size are all answered the same way:
an :class:`~ml.io.errors.ImageFormatError` that names the file and the reason.
"""
from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ml.io.errors import ImageFormatError


@dataclass(frozen=True)
class NiftiVolume:
    """A validated volume in world (RAS+, mm) coordinates.

    Attributes:
        array: float32 data after scl_slope/scl_inter, shape (X, Y, Z) or (X, Y, Z, T).
        affine: 4x4 voxel-to-RAS+ mm matrix (nibabel convention).
        zooms: voxel size in mm (3 values).
        stored_dtype: the on-disk datatype name (e.g. ``int16``).
    """

    array: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, float, float]
    stored_dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def n_frames(self) -> int:
        return self.array.shape[3] if self.array.ndim == 4 else 1

    def orientation(self) -> str:
        """Axis codes such as ``RAS`` or ``LPS`` (nibabel.aff2axcodes)."""
        return "".join(nib.aff2axcodes(self.affine))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _raw_pixdim(path: Path, header_class) -> tuple[float, ...]:
    """pixdim[1:4] as stored: nibabel silently replaces zeros by 1 when it loads."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as handle:
            header = header_class.from_fileobj(handle, check=False)
        return tuple(abs(float(z)) if z != 0 else 0.0 for z in header["pixdim"][1:4])
    except Exception:  # the full load reports unreadable files
        return ()


def load_nifti(path: str | Path, *, ndim: tuple[int, ...] = (3, 4)) -> NiftiVolume:
    """Read and validate a NIfTI-1/2 file (``.nii`` or ``.nii.gz``).

    Args:
        path: the file.
        ndim: accepted numbers of dimensions. A trailing singleton 4th axis is squeezed for 3D.

    Raises:
        ImageFormatError: not NIfTI, truncated or corrupt, wrong dimensionality, NaN/inf voxels,
            a zero or negative voxel size, or a singular affine.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFormatError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for a non-NIfTI file
        raise ImageFormatError(path, f"not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageFormatError(path, f"not a NIfTI image but {type(img).__name__}")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1 and 3 in ndim:
        shape = shape[:3]
    if len(shape) not in ndim:
        raise ImageFormatError(
            path, f"has {len(shape)} dimensions {tuple(img.shape)}; expected {' or '.join(map(str, ndim))}D"
        )
    if any(s < 1 for s in shape):
        raise ImageFormatError(path, f"has an empty dimension {tuple(img.shape)}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    raw_zooms = _raw_pixdim(path, type(img.header))
    if any(not np.isfinite(z) or z <= 0 for z in (*zooms, *raw_zooms)):
        raise ImageFormatError(path, f"has a zero or invalid voxel size {raw_zooms or zooms}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ImageFormatError(path, "has a singular or non-finite affine")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise ImageFormatError(path, f"is truncated or corrupt ({exc})") from exc
    data = data.reshape(shape)
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ImageFormatError(path, f"contains {bad} NaN or infinite voxel values")
    return NiftiVolume(
        array=data, affine=affine, zooms=zooms, stored_dtype=str(img.get_data_dtype())
    )


def nifti_bytes(array: np.ndarray, affine: np.ndarray, *, dtype: type = np.float32, gz: bool = True) -> bytes:
    """Serialise an array as NIfTI-1 bytes; gzip with mtime 0 so equal data gives equal bytes."""
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=3, mtime=0) if gz else raw


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, *, dtype: type = np.float32) -> Path:
    """Write ``array`` on ``affine`` to ``path`` (.nii or .nii.gz), deterministically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(nifti_bytes(array, affine, dtype=dtype, gz=path.name.endswith(".gz")))
    return path
