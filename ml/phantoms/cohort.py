"""Generate a whole synthetic cohort on disk, in parallel, reproducibly.

Patient ``i`` (0-based) goes to site ``i % n_sites`` and is drawn from ``SeedSequence([seed, i])``,
so each patient's files depend only on ``(seed, i, n_sites, resolution)``, never on the number of
workers or the order in which they finish.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.phantoms.bids import (
    exam_groundtruth_row,
    participant_row,
    session_row,
    write_dataset_files,
    write_exam,
)
from ml.phantoms.exam import TIMEPOINTS, draw_patient, preload, render_exam
from ml.phantoms.sites import SITES, with_head_motion

__all__ = ["CohortSummary", "generate_cohort", "GENERATOR_VERSION"]

GENERATOR_VERSION = "1.0"
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`generate_cohort` wrote.

    Attributes:
        root: the BIDS dataset folder.
        n_patients: number of patients.
        n_exams: number of exams (two per patient).
        sites: site names used, in order.
        seed: the seed.
        resolution: template resolution (mm).
        participant_ids: ``sub-...`` labels in patient order.
        n_progression: suspected-recurrence exams that are true progression.
        n_idh_mutant: IDH-mutant patients.
        n_files: files written.
    """

    root: Path
    n_patients: int
    n_exams: int
    sites: tuple[str, ...]
    seed: int
    resolution: int
    participant_ids: tuple[str, ...]
    n_progression: int
    n_idh_mutant: int
    n_files: int


def _patient_job(args: tuple[Path, int, int, int, int, int, bool]) -> dict[str, Any]:
    root, seed, index, site_index, number, resolution, head_motion = args
    site = with_head_motion(site_index) if head_motion else SITES[site_index]
    pid = f"sub-{site.code}P{number:03d}"
    model = draw_patient(seed=seed, patient_index=index, site=site, resolution=resolution,
                         participant_id=pid)
    sessions, truth, n_files, participant = [], [], 0, None
    for tp in TIMEPOINTS:
        exam = render_exam(model, tp)
        n_files += len(write_exam(root, exam))
        sessions.append(session_row(exam))
        truth.append(exam_groundtruth_row(exam))
        participant = participant_row(exam)
    return {"index": index, "participant": participant, "sessions": sessions, "truth": truth,
            "n_files": n_files, "progression": model.labels.diagnosis == "progression",
            "idh_mutant": model.labels.idh == "mutant"}


def generate_cohort(
    out_dir: str | os.PathLike[str],
    *,
    n_patients: int,
    n_sites: int,
    seed: int,
    resolution: int = 2,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    head_motion: bool = False,
) -> CohortSummary:
    """Generate ``n_patients`` patients (two exams each) over ``n_sites`` sites as BIDS.

    Args:
        out_dir: dataset folder; created; must be empty or absent unless ``overwrite``.
        n_patients: number of patients (>= 1), spread round-robin over the sites.
        n_sites: number of sites, 1..len(SITES).
        seed: non-negative seed; the same seed gives byte-identical files.
        resolution: template resolution in mm (2, or 1 for slow high-resolution MRI).
        progress: called as ``progress(done, total)`` after each patient.
        workers: processes (default: all CPUs); 1 runs in this process.
        overwrite: delete an existing non-empty ``out_dir`` first.
        head_motion: opt-in realistic head positions (:class:`~ml.phantoms.sites.HeadMotion`):
            PET and MRI each in their own pose, true transforms written to the ground truth.
            Off by default, so existing cohorts keep their bytes.

    Returns:
        A :class:`CohortSummary`.

    Raises:
        ValueError: bad counts, seed, resolution, or a non-empty folder without ``overwrite``.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    if not 1 <= n_sites <= len(SITES):
        raise ValueError(f"n_sites must be in 1..{len(SITES)}, got {n_sites}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if resolution not in (1, 2):
        raise ValueError(f"resolution must be 1 or 2 (mm), got {resolution}")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(f"{root}: output folder is not empty (use overwrite)")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(root, seed, i, i % n_sites, i // n_sites + 1, resolution, head_motion) for i in range(n_patients)]
    n_workers = max(1, min(workers or os.cpu_count() or 1, n_patients))
    results: list[dict[str, Any]] = []
    if n_workers == 1:
        for k, job in enumerate(jobs):
            results.append(_patient_job(job))
            if progress:
                progress(k + 1, n_patients)
    else:
        preload(resolution)  # load the template once; forked workers inherit it
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            for k, res in enumerate(pool.map(_patient_job, jobs, chunksize=1)):
                results.append(res)
                if progress:
                    progress(k + 1, n_patients)
    results.sort(key=lambda r: r["index"])
    write_dataset_files(
        root,
        participants=[r["participant"] for r in results],
        sessions={r["participant"]["participant_id"]: r["sessions"] for r in results},
        groundtruth=[row for r in results for row in r["truth"]],
        seed=seed,
        version=GENERATOR_VERSION,
    )
    return CohortSummary(
        root=root,
        n_patients=n_patients,
        n_exams=2 * n_patients,
        sites=tuple(s.name for s in SITES[:n_sites]),
        seed=seed,
        resolution=resolution,
        participant_ids=tuple(r["participant"]["participant_id"] for r in results),
        n_progression=sum(r["progression"] for r in results),
        n_idh_mutant=sum(r["idh_mutant"] for r in results),
        n_files=sum(r["n_files"] for r in results) + 7 + n_patients,
    )
