"""Shared, session-scoped tiny data for the foundation-model tests (and the WP2/WP3 helpers' tests).

``foundation_stacks``: 8 exam stacks on the 4 mm common grid (48 x 56 x 48), 4 generated patients
(seed 11) x 2 time points, built from ``ml.phantoms.draw_patient`` / ``render_exam`` resampled
straight onto the grid (the generator's world is the template's up to the head pose; these tests
do not need the registration). ``foundation_index``: the same stacks saved as ``.npz`` with an
``index.csv`` as ``ml.foundation.data.build_stacks`` writes it. ``tiny_config``: a pretraining config
small enough for a step in well under a second on one CPU thread.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ml.foundation.config import PretrainConfig
from ml.foundation.data import INDEX_COLUMNS, ExamStack, save_stack, stack_from_arrays
from ml.foundation.model import EncoderConfig
from ml.foundation.pretext import PretextConfig
from ml.io.grid import common_grid, resample_to_grid

SEED = 11
N_PATIENTS = 4
TIMEPOINTS = ("initial_diagnosis", "suspected_recurrence")


def stack_from_exam(exam, *, key: str, voxel_mm: float = 4.0) -> ExamStack:
    """An :class:`ExamStack` from an ``ml.phantoms`` exam, resampled without registration."""
    grid = common_grid(voxel_mm)

    def on_grid(volume, order: int = 1) -> np.ndarray:
        return resample_to_grid(volume.data, volume.affine, grid, order=order)

    masks = {k: resample_to_grid(v, exam.pet_static.affine, grid, order=0) for k, v in exam.pet_masks.items()}
    lab = exam.labels
    meta = {"site": lab.site, "patient": lab.participant_id, "exam": exam.session_id, "timepoint": exam.timepoint,
            "diagnosis": lab.diagnosis if exam.timepoint == "suspected_recurrence" else "n/a",
            "idh": lab.idh, "codeletion_1p19q": lab.codeletion_1p19q, "who_grade": str(lab.who_grade)}
    return stack_from_arrays(
        t1c=on_grid(exam.t1c), flair=on_grid(exam.flair), suv=on_grid(exam.pet_static) * exam.suv_factor,
        suv_dynamic=on_grid(exam.pet_dynamic) * exam.suv_factor, frame_start_s=exam.frame_start_s,
        frame_duration_s=exam.frame_duration_s, affine=grid.affine, masks=masks, key=key, meta=meta,
    )


@pytest.fixture(scope="session")
def foundation_stacks() -> list[ExamStack]:
    from ml.phantoms import draw_patient, render_exam

    stacks = []
    for i in range(N_PATIENTS):
        model = draw_patient(seed=SEED, patient_index=i, site=i % 4, resolution=2)
        for tp in TIMEPOINTS:
            exam = render_exam(model, tp, psf=False)
            stacks.append(stack_from_exam(exam, key=f"{exam.labels.participant_id}/{exam.session_id}"))
    return stacks


@pytest.fixture(scope="session")
def foundation_index(foundation_stacks, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("stacks")
    rows = []
    for s in foundation_stacks:
        path = save_stack(s, out / f"{s.key.replace('/', '_')}.npz")
        rows.append({"key": s.key, **{k: s.meta[k] for k in INDEX_COLUMNS[:-1]}, "path": str(path)})
    index = pd.DataFrame(rows).set_index("key")
    index.to_csv(out / "index.csv")
    return index


def tiny_encoder_config(**overrides) -> EncoderConfig:
    base = dict(in_channels=5, img_size=(16, 16, 16), patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2,
                num_heads=4, voxel_mm=4.0)
    base.update(overrides)
    return EncoderConfig(**base)


@pytest.fixture
def tiny_config() -> PretrainConfig:
    return PretrainConfig(
        seed=3, epochs=2, batch_size=4, lr=2e-3, warmup_epochs=0.5, num_workers=0, device="cpu",
        encoder=tiny_encoder_config(img_size=(32, 32, 32)),
        pretext=PretextConfig(decoder_hidden_size=32, decoder_layers=1, decoder_heads=4, decoder_mlp_dim=64,
                              proj_dim=16, mask_ratio=0.75, crossmodal_mask_ratio=0.5),
    )


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path / "run"
