"""Shared fixtures for the ml tests: a small synthetic cohort on disk and one exam in memory."""
from __future__ import annotations

from pathlib import Path

import pytest

from ml.phantoms import Exam, generate_cohort, make_exam

TINY_SEED = 2024


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BIDS cohort of 4 patients (2 per site, sites nancy and paris), 8 exams; its root path.

    Generated once per test session with :func:`ml.phantoms.generate_cohort` (seed 2024). Contains
    float32 RAS PET (nancy) and int16-with-scl_slope LPS PET (paris), truth masks in
    ``derivatives/groundtruth`` and ``groundtruth.tsv``. Treat it as read-only.
    """
    out = tmp_path_factory.mktemp("tiny_cohort") / "bids"
    generate_cohort(out, n_patients=4, n_sites=2, seed=TINY_SEED, workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_exam() -> Exam:
    """One initial-diagnosis exam (site nancy, seed 5, patient 0) in memory, PET and MR."""
    return make_exam(seed=5, patient_index=0, site=0)
