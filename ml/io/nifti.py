"""Load and validate NIfTI volumes.

Every reader of image files in AminoPET goes through :func:`load_nifti`, so a truncated gzip, a file
that is not NIfTI, a 2D or 5D array, NaN/inf voxels, a zero voxel size, an absurd declared size or
an infinite scaling are all answered the same way: an :class:`~ml.io.errors.ImageFormatError` that
names the file and the reason. The header is checked before any voxel is read, so a 348-byte file
declaring 30000 cubed voxels costs nothing.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ml.io.errors import ImageFormatError

#: Largest volume (float32 in memory, all frames) read by default: 2 GiB, twice a dynamic brain PET
#: of 256 x 256 x 128 voxels and 32 frames.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: Largest spatial grid (voxels of one frame): 512 cubed, beyond any clinical PET or MRI of a head.
MAX_SPATIAL_VOXELS = 512**3


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


def _raw_header(path: Path):
    """The header as stored, or None: nibabel replaces zero voxel sizes by 1 and moves (or drops)
    scl_slope/scl_inter when it loads, and refuses some scalings with a message naming neither."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as handle:
            size = int(np.frombuffer(handle.read(4), dtype="<i4")[0])
            handle.seek(0)
            swapped = size not in (348, 540)
            if swapped:
                size = int(np.frombuffer(np.int32(size).tobytes(), dtype=">i4")[0])
            header_class = {348: nib.Nifti1Header, 540: nib.Nifti2Header}.get(size)
            return header_class.from_fileobj(handle, check=False) if header_class else None
    except Exception:  # the full load reports unreadable files
        return None


def _raw_pixdim(header) -> tuple[float, ...]:
    """pixdim[1:4] as stored (0 stays 0)."""
    if header is None:
        return ()
    return tuple(abs(float(z)) if z != 0 else 0.0 for z in header["pixdim"][1:4])


def _check_scaling(path: Path, header) -> None:
    if header is None:
        return
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    # NIfTI-1: scl_slope 0 (or NaN, what nibabel writes) means "not scaled"; nibabel also silently
    # ignores an infinite slope, which would hide a broken writer.
    if math.isinf(slope):
        raise ImageFormatError(path, f"has an infinite scaling factor (scl_slope = {slope})")
    if math.isinf(inter):
        raise ImageFormatError(path, f"has an infinite scaling offset (scl_inter = {inter})")
    if slope != 0 and not math.isnan(slope) and math.isnan(inter):
        raise ImageFormatError(path, f"has a scaling factor but a non-finite offset (scl_inter = {inter})")


def _check_declared(path: Path, img, shape: tuple[int, ...], max_bytes: int) -> None:
    """Refuse absurd declared sizes and non-finite scaling before any voxel is read."""
    spatial = math.prod(int(s) for s in shape[:3])
    total = math.prod(int(s) for s in shape)
    if spatial > MAX_SPATIAL_VOXELS:
        raise ImageFormatError(
            path, f"declares {' x '.join(map(str, shape[:3]))} voxels per frame, more than the "
            f"{MAX_SPATIAL_VOXELS} (512 cubed) AminoPET reads; the header is wrong or this is not a head image")
    if total * 4 > max_bytes:  # read as float32
        raise ImageFormatError(
            path, f"declares {' x '.join(map(str, shape))} voxels ({total * 4 / 1024**3:.1f} GiB as float32), "
            f"more than the {max_bytes / 1024**3:.1f} GiB limit (AMINOPET_MAX_VOLUME_BYTES)")
    header = img.header
    if path.suffix == ".nii":  # uncompressed: the data must be in the file
        needed = int(header.get_data_offset()) + total * header.get_data_dtype().itemsize
        if path.stat().st_size < needed:
            raise ImageFormatError(
                path, f"is truncated: the header declares {needed} bytes, the file has {path.stat().st_size}")


def load_nifti(path: str | Path, *, ndim: tuple[int, ...] = (3, 4), max_bytes: int | None = None) -> NiftiVolume:
    """Read and validate a NIfTI-1/2 file (``.nii`` or ``.nii.gz``).

    Args:
        path: the file.
        ndim: accepted numbers of dimensions. A trailing singleton 4th axis is squeezed for 3D.
        max_bytes: largest volume read, as float32 in memory (default :data:`DEFAULT_MAX_BYTES`);
            checked on the header before anything is allocated, as is :data:`MAX_SPATIAL_VOXELS`.

    Raises:
        ImageFormatError: not NIfTI, truncated or corrupt, wrong dimensionality, a declared size
            over the limits, an infinite scl_slope/scl_inter, NaN/inf voxels, a zero or negative
            voxel size, or a singular affine.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFormatError(path, "file not found")
    raw_header = _raw_header(path)
    _check_scaling(path, raw_header)
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
    _check_declared(path, img, shape, DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    raw_zooms = _raw_pixdim(raw_header)
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
