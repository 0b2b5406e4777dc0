"""Channel stacks (ml.foundation.data): a generated BIDS exam prepared like the platform does."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.foundation.data import (
    CHANNELS,
    brain_mask,
    build_stacks,
    load_index,
    load_stack,
    save_stack,
    stack_from_arrays,
)
from ml.io.grid import common_grid
from ml.phantoms.cohort import generate_cohort


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids")
    generate_cohort(root, n_patients=1, n_sites=1, seed=5, workers=1)
    out = tmp_path_factory.mktemp("stacks")
    index = build_stacks(root, out, voxel_mm=4.0, workers=1)
    return root, out, index


def test_build_stacks_prepares_every_exam_on_the_4mm_grid(stacks):
    _, out, index = stacks
    assert list(index.index) == ["sub-S1P001/ses-01", "sub-S1P001/ses-02"]
    assert set(index["timepoint"]) == {"initial_diagnosis", "suspected_recurrence"}
    assert (load_index(out)["path"] == index["path"]).all()
    stack = load_stack(index["path"].iloc[0])
    grid = common_grid(4.0)
    assert stack.image.shape == (len(CHANNELS), *grid.shape)
    assert np.allclose(stack.affine, grid.affine)
    assert stack.voxel_mm == 4.0


def test_pet_channels_are_tbr_and_the_tumour_is_hot(stacks):
    _, _, index = stacks
    stack = load_stack(index["path"].iloc[0])
    healthy = (stack.masks["brain"] > 0) & (stack.masks["tumor"] == 0) & (stack.masks["striatum"] == 0)
    suv = stack.image[CHANNELS.index("suv")]
    assert np.median(suv[healthy]) == pytest.approx(1.0, abs=1e-6)
    # The generator's tumours are hotter than the healthy brain (TBRmax of amino-acid PET > 1.6).
    assert suv[stack.masks["tumor"] > 0].max() > 1.6
    # MRI z-scored inside the brain.
    t1c = stack.image[CHANNELS.index("t1c")][stack.masks["brain"] > 0]
    assert abs(t1c.mean()) < 1e-3 and t1c.std() == pytest.approx(1.0, rel=1e-3)
    # Voxel kinetics inside the brain only, TTP within the acquisition.
    assert np.isnan(stack.ttp_min[stack.masks["brain"] == 0]).all()
    inside = stack.ttp_min[stack.masks["brain"] > 0]
    assert np.isfinite(inside).all() and inside.min() >= 0 and inside.max() <= 60


def test_the_tumour_mask_lands_where_the_generator_put_the_tumour(stacks):
    _, _, index = stacks
    stack = load_stack(index["path"].iloc[0])
    # Registration error at 4 mm: the truth tumour mask overlaps the hot PET region.
    # The truth tumour mask is hotter than its mirror image across the midline (the common grid is
    # centred on MNI x = 0, so flipping the first axis mirrors the brain).
    from scipy import ndimage

    suv = stack.image[CHANNELS.index("suv")]
    tumour = stack.masks["tumor"] > 0
    mirror = tumour[::-1] & ~tumour & ~ndimage.binary_dilation(stack.masks["striatum"] > 0, iterations=2)
    assert tumour.sum() > 50 and mirror.sum() > 20
    assert suv[tumour].mean() > suv[mirror].mean() + 0.2


def test_save_load_round_trip(stacks, tmp_path):
    _, _, index = stacks
    stack = load_stack(index["path"].iloc[1])
    again = load_stack(save_stack(stack, tmp_path / "x.npz"))
    assert again.key == stack.key and again.meta == stack.meta
    assert np.array_equal(again.image, stack.image)
    assert set(again.masks) == set(stack.masks)


def test_build_stacks_keeps_its_cache_and_rebuilds_what_is_missing(stacks):
    root, out, index = stacks
    first, second = (Path(p) for p in index["path"])
    kept = first.stat().st_mtime_ns
    second.unlink()
    again = build_stacks(root, out, voxel_mm=4.0, workers=1)
    assert list(again.index) == list(index.index)
    assert first.stat().st_mtime_ns == kept
    assert second.exists()


def test_build_stacks_keeps_only_the_timepoints_asked(stacks):
    root, out, index = stacks
    first = index[index["timepoint"] == "initial_diagnosis"]
    only = build_stacks(root, out, voxel_mm=4.0, workers=1, timepoints=["initial_diagnosis"])
    assert list(only.index) == list(first.index) and len(only) < len(index)
    assert set(pd.read_csv(out / "index.csv")["timepoint"]) == {"initial_diagnosis"}
    with pytest.raises(ValueError, match="unknown timepoints"):
        build_stacks(root, out, timepoints=["baseline"])
    build_stacks(root, out, voxel_mm=4.0, workers=1)  # the shared fixture's full index again


def _arrays(voxel=4.0):
    grid = common_grid(voxel)
    rng = np.random.default_rng(0)
    brain = brain_mask(voxel)
    mri = (rng.normal(100, 10, grid.shape) * brain).astype(np.float32)
    suv = (1.0 + brain).astype(np.float32)
    return grid, dict(t1c=mri, flair=mri * 1.5, suv=suv, affine=grid.affine)


def test_off_grid_arrays_are_refused():
    grid, arrays = _arrays()
    arrays["t1c"] = arrays["t1c"][:-1]
    with pytest.raises(ValueError, match="t1c: expected shape"):
        stack_from_arrays(**arrays)
    _, arrays = _arrays()
    arrays["affine"] = np.eye(4)
    with pytest.raises(ValueError, match="not on the common grid"):
        stack_from_arrays(**arrays)


def test_nan_and_bad_frames_are_refused():
    grid, arrays = _arrays()
    arrays["suv"] = arrays["suv"].copy()
    arrays["suv"][10, 10, 10] = np.nan
    with pytest.raises(ValueError, match="suv: contains NaN"):
        stack_from_arrays(**arrays)
    _, arrays = _arrays()
    dyn = np.repeat(arrays["suv"][..., None], 3, axis=3)
    with pytest.raises(ValueError, match="frames"):
        stack_from_arrays(**arrays, suv_dynamic=dyn, frame_start_s=[0, 60], frame_duration_s=[60, 60])


def test_a_corrupt_stack_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_stack(bad)
