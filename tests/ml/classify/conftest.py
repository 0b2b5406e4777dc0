"""Fixtures of the WP3 classifier tests: generator exams as 4 mm channel stacks, kept in memory.

The exams come from :func:`ml.phantoms.draw_patient` / :func:`render_exam` (suspected-recurrence
time point) and are resampled straight onto the 4 mm common grid (no registration: the scanner
pose leaves them a few mm off the template, which does not matter to these tests), then made into
:class:`ml.foundation.data.ExamStack` by :func:`ml.foundation.data.stack_from_arrays`.
"""
from __future__ import annotations

import numpy as np
import pytest

from ml.classify.protocol import LabelledCohort
from ml.foundation.data import ExamStack, stack_from_arrays
from ml.io.grid import common_grid, resample_to_grid
from ml.phantoms import draw_patient, render_exam

SEED = 11
SITES = ("nancy", "paris", "lyon")
PER_CLASS_PER_SITE = 2


def exam_stack(model, *, grid) -> ExamStack:
    """A suspected-recurrence exam of a drawn patient as a stack on ``grid``."""
    exam = render_exam(model, "suspected_recurrence")
    pet = exam.pet_static
    suv = resample_to_grid(pet.data * exam.suv_factor, pet.affine, grid)
    dyn = resample_to_grid(exam.pet_dynamic.data * exam.suv_factor, exam.pet_dynamic.affine, grid)
    t1c = resample_to_grid(exam.t1c.data, exam.t1c.affine, grid)
    flair = resample_to_grid(exam.flair.data, exam.flair.affine, grid)
    masks = {k: resample_to_grid(exam.pet_masks[k].astype(np.float32), pet.affine, grid, order=0)
             for k in ("tumor", "aggressive", "striatum")}
    pid = exam.labels.participant_id
    return stack_from_arrays(
        t1c=t1c, flair=flair, suv=np.maximum(suv, 0), suv_dynamic=np.maximum(dyn, 0),
        frame_start_s=exam.frame_start_s, frame_duration_s=exam.frame_duration_s, affine=grid.affine,
        masks=masks, key=f"{pid}/ses-02",
        meta={"site": exam.site.name, "patient": pid, "exam": "ses-02", "timepoint": exam.timepoint,
              "diagnosis": exam.diagnosis})


@pytest.fixture(scope="session")
def phantom_stacks() -> dict[str, ExamStack]:
    """12 suspected-recurrence stacks: 3 sites x (2 progression + 2 treatment-related), 4 mm grid.

    Patients are drawn (cheap) until each site has two of each diagnosis, then rendered.
    """
    grid = common_grid(4.0)
    stacks: dict[str, ExamStack] = {}
    for site in SITES:
        counts = {"progression": 0, "treatment_related": 0}
        index = 0
        while min(counts.values()) < PER_CLASS_PER_SITE:
            model = draw_patient(seed=SEED, patient_index=index, site=site)
            index += 1
            dx = model.labels.diagnosis
            if counts[dx] >= PER_CLASS_PER_SITE:
                continue
            counts[dx] += 1
            stack = exam_stack(model, grid=grid)
            stacks[stack.key] = stack
    return stacks


@pytest.fixture(scope="session")
def phantom_cohort(phantom_stacks) -> LabelledCohort:
    """The labels of :func:`phantom_stacks` (progression = 1)."""
    import pandas as pd

    index = pd.DataFrame([{"key": k, **s.meta} for k, s in phantom_stacks.items()]).set_index("key")
    return LabelledCohort.from_index(index, "progression")
