"""Crafted NIfTI headers (issue 8, item 6): absurd declared sizes are refused from the header, before
any voxel is allocated, and infinite scaling is refused instead of silently ignored."""
from __future__ import annotations

import gzip
import io
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ml.io.errors import ImageFormatError
from ml.io.nifti import load_nifti


def _crafted(path: Path, *, dims: tuple[int, ...] | None = None, slope: float | None = None,
             inter: float | None = None, dtype=np.int16) -> Path:
    """A real small NIfTI file whose header is then patched (data left as it is)."""
    img = nib.Nifti1Image(np.arange(4 * 4 * 4, dtype=dtype).reshape(4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    raw = bytearray(img.to_bytes())
    patched = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])), check=False)
    if dims is not None:
        patched["dim"] = [len(dims), *dims, *([1] * (7 - len(dims)))]
    if slope is not None:
        patched["scl_slope"] = slope
    if inter is not None:
        patched["scl_inter"] = inter
    raw[:348] = patched.binaryblock
    data = bytes(raw)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("dims,expected", [
    ((1024, 1024, 1024), "512 cubed"),
    ((30000, 30000, 30000), "512 cubed"),
    ((256, 256, 256, 400), "GiB limit"),
])
def test_absurd_declared_size_is_refused_before_allocating(tmp_path, dims, expected):
    path = _crafted(tmp_path / "huge_pet.nii.gz", dims=dims)
    tracemalloc.start()
    try:
        with pytest.raises(ImageFormatError) as info:
            load_nifti(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "huge_pet.nii.gz" in message and expected in message
    assert "x".join(map(str, dims[:3])) in message.replace(" ", "")
    assert peak < 5 * 1024**2, f"allocated {peak / 1024**2:.1f} MB before refusing"


def test_the_byte_cap_is_configurable(tmp_path):
    path = _crafted(tmp_path / "small.nii.gz")
    assert load_nifti(path).shape == (4, 4, 4)
    with pytest.raises(ImageFormatError, match="limit"):
        load_nifti(path, max_bytes=100)  # 4*4*4 float32 = 256 bytes


def test_truncated_uncompressed_file_is_named(tmp_path):
    path = _crafted(tmp_path / "short.nii", dims=(64, 64, 64))
    with pytest.raises(ImageFormatError, match=r"short.nii: is truncated: the header declares \d+ bytes"):
        load_nifti(path)


@pytest.mark.parametrize("slope,inter,reason", [
    (np.inf, 0.0, "infinite scaling factor"),
    (-np.inf, 0.0, "infinite scaling factor"),
    (np.nan, np.inf, "infinite scaling offset"),
    (1.0, np.inf, "scl_inter"),
    (1.0, np.nan, "non-finite offset"),
])
def test_non_finite_scaling_is_refused(tmp_path, slope, inter, reason):
    path = _crafted(tmp_path / "scaled.nii.gz", slope=slope, inter=inter)
    with pytest.raises(ImageFormatError) as info:
        load_nifti(path)
    assert "scaled.nii.gz" in str(info.value) and reason in str(info.value)


@pytest.mark.parametrize("slope,inter,factor,offset", [
    (0.0, 0.0, 1.0, 0.0),  # NIfTI-1: slope 0 means "not scaled"
    (np.nan, np.nan, 1.0, 0.0),  # what nibabel writes by default
    (2.5, -1.0, 2.5, -1.0),
])
def test_valid_scaling_is_applied(tmp_path, slope, inter, factor, offset):
    path = _crafted(tmp_path / "ok.nii.gz", slope=slope, inter=inter)
    raw = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    assert np.allclose(load_nifti(path).array, raw * factor + offset)
