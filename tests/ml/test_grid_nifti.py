"""grid_nifti_bytes: the stored common-grid NIfTI is nibabel's ``Nifti1Image.to_bytes`` gzipped
reproducibly, written a chunk at a time (the store is content-addressed: the bytes must not move)."""
from __future__ import annotations

import gzip
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

from ml.io import grid as grid_module
from ml.io.grid import common_grid, grid_nifti_bytes


def _whole_volume(array: np.ndarray, affine: np.ndarray, dtype: str) -> bytes:
    """The encoder before chunking: nibabel writes the whole image, the int16 slope is patched
    into the header, one zlib call."""
    data = np.asarray(array)
    slope = None
    if dtype == "int16":
        peak = float(np.abs(data).max()) if data.size else 0.0
        slope = peak / 32000.0 if peak > 0 else 1.0
        img = nib.Nifti1Image(np.round(data / slope).astype(np.int16), affine)
    else:
        img = nib.Nifti1Image(data.astype(dtype, copy=False), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    if slope is not None:
        raw = raw[:112] + struct.pack(img.header.endianness + "ff", slope, 0.0) + raw[120:]
    comp = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    return comp.compress(raw) + comp.flush()


@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8"])
@pytest.mark.parametrize("shape", [(9, 8, 7), (9, 8, 7, 5)])
@pytest.mark.parametrize("order", ["F", "C"])
def test_same_bytes_as_the_whole_volume_encoding(monkeypatch, dtype, shape, order):
    monkeypatch.setattr(grid_module, "ENCODE_CHUNK_VOXELS", 150)  # several chunks on a small array
    rng = np.random.default_rng(3)
    array = rng.normal(2.0, 3.0, size=shape).astype(np.float32)
    array[:2] = 0.0  # runs, as outside the head
    if dtype == "uint8":
        array = (array > 2).astype(np.uint8)
    array = np.asfortranarray(array) if order == "F" else np.ascontiguousarray(array)
    affine = common_grid().affine
    assert grid_nifti_bytes(array, affine, dtype=dtype) == _whole_volume(array, affine, dtype)


def test_int16_round_trip_and_edge_cases():
    affine = common_grid().affine
    array = np.asfortranarray(np.random.default_rng(0).normal(size=(6, 5, 4, 3)).astype(np.float32))
    img = nib.Nifti1Image.from_bytes(gzip.decompress(grid_nifti_bytes(array, affine, dtype="int16")))
    slope = float(img.dataobj.slope)  # nibabel moves scl_slope from the header to the proxy
    assert slope == pytest.approx(float(np.abs(array).max()) / 32000.0, rel=1e-6)
    assert np.abs(img.get_fdata() - array).max() <= slope / 2 * 1.001
    np.testing.assert_allclose(img.affine, affine)
    for special in (np.zeros((4, 3, 2), np.float32), -np.ones((4, 3, 2), np.float64)):
        assert grid_nifti_bytes(special, affine, dtype="int16") == _whole_volume(special, affine, "int16")
    with pytest.raises(ValueError, match="dtype"):
        grid_nifti_bytes(array, affine, dtype="float64")
