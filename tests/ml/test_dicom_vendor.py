"""A series written with each of the eight real vendor PET header sets imports with its known
SUVbw factor (to 1e-6 absolute) and SUV = stored Bq/mL (or counts) x factor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.io.dicom import read_dicom_series
from ml.io.dicom_write import write_series
from tests.fixtures.suv.vendor_headers import expected_factors, header_sets, load_instances

EXPECTED = expected_factors()
AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])

@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A fresh folder of its own (tmp_path also holds the shared media root)."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    return folder



@pytest.mark.parametrize("name", header_sets())
def test_series_written_with_vendor_header_imports_with_known_factor(out: Path, name: str) -> None:
    header = {k: v for k, v in load_instances(name)[0].items()}
    rng = np.random.default_rng(7)
    stored = rng.uniform(100.0, 30000.0, size=(16, 16, 8))
    write_series(stored, AFFINE, out, modality="PT", header=header)
    (series,) = read_dicom_series(out)
    assert abs(series.suv_factor - EXPECTED[name]) < 1e-6
    assert series.suv_factor == pytest.approx(EXPECTED[name], rel=1e-9)
    assert series.units == "SUV"
    step = stored.max() / 32767.0
    np.testing.assert_allclose(series.array, stored * EXPECTED[name], atol=step * EXPECTED[name], rtol=1e-6)
    assert series.metadata["pet_units"] == header["Units"]
    assert series.metadata["weight_kg"] == pytest.approx(header["PatientWeight"])
