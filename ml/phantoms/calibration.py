"""How hard is a generated cohort? AUCs of simple PET parameters against published values.

Self-contained minimal quantification (deliberately independent of ``ml.quant``, so that the
generator can be checked without it): SUVbw = C [Bq/mL] x weight [g] / injected activity [Bq]
(images are decay-corrected to injection); SUVmax in the truth tumour mask of the static image;
TBRmax = SUVmax / SUVmean(background mask); T/S max = SUVmax / SUVmean(striatum mask) (the
striatal reference of 18F-FDOPA, Law et al. 2019 EANM/SNMMI guideline; Zaragori et al. 2020);
TTP = mid-time of the frame where the mean tumour TAC of the dynamic image peaks (Ginet et al.
2020). AUC is the Mann-Whitney probability that a positive case scores above a negative one, ties
counting one half (Hanley & McNeil 1982, Radiology 143:29).

Targets (``docs/phantoms.md``): T/S max for progression vs treatment-related change 0.85-0.92
(published accuracies 82-96 %, Zaragori 2020, Rozenblum 2022); TTP for IDH status about 0.79
(Ginet 2020). The other rows are approximate ranges, marked as such.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ml.phantoms.exam import Exam

__all__ = [
    "ExamMeasures",
    "AucResult",
    "CalibrationResults",
    "TARGETS",
    "auc",
    "measure_arrays",
    "measure_exam",
    "calibration_from_exams",
    "calibration_report",
    "calibration_cohort",
]


@dataclass(frozen=True)
class ExamMeasures:
    """Measured PET parameters of one exam, with its labels."""

    participant_id: str
    session_id: str
    site: str
    timepoint: str
    diagnosis: str
    idh: str
    suv_max: float
    tbr_max: float
    ts_max: float
    ttp_min: float


@dataclass(frozen=True)
class AucTarget:
    """A published (or approximate) AUC range a metric should land in."""

    metric: str
    task: str
    low: float
    high: float
    source: str
    approximate: bool


@dataclass(frozen=True)
class AucResult:
    """AUC of one metric for one task.

    Attributes:
        metric: ``ts_max``, ``tbr_max`` or ``ttp``.
        task: ``progression`` (progression vs treatment-related, suspected-recurrence exams) or
            ``idh`` (wildtype vs mutant, initial-diagnosis exams).
        auc: ``P(score_pos > score_neg) + P(=)/2``, with ``score = metric`` (``-TTP`` for TTP:
            earlier peaks are the positive class).
        n_pos: positive cases (progression / IDH-wildtype).
        n_neg: negative cases.
        target: the range it should land in.
    """

    metric: str
    task: str
    auc: float
    n_pos: int
    n_neg: int
    target: AucTarget

    @property
    def in_range(self) -> bool:
        """Whether the AUC lies inside the target range."""
        return self.target.low <= self.auc <= self.target.high


TARGETS: tuple[AucTarget, ...] = (
    AucTarget("ts_max", "progression", 0.85, 0.92,
              "published accuracies 82-96 % (Zaragori 2020 EJNMMI Res; Rozenblum 2022 Eur Radiol)", False),
    AucTarget("tbr_max", "progression", 0.80, 0.92, "close to T/S max in the same cohorts", True),
    AucTarget("ttp", "progression", 0.55, 0.80, "dynamic parameters add little at recurrence", True),
    AucTarget("ttp", "idh", 0.73, 0.85, "TTP AUC 0.79 for IDH status (Ginet 2020 EJNMMI)", False),
    AucTarget("tbr_max", "idh", 0.50, 0.78, "static uptake separates IDH weakly", True),
    AucTarget("ts_max", "idh", 0.50, 0.78, "static uptake separates IDH weakly", True),
)


@dataclass(frozen=True)
class CalibrationResults:
    """Measured parameters and AUCs of a cohort.

    Attributes:
        measures: one row per exam.
        aucs: one row per (metric, task) of :data:`TARGETS`.
    """

    measures: tuple[ExamMeasures, ...]
    aucs: tuple[AucResult, ...]

    def get(self, metric: str, task: str) -> AucResult:
        """The AUC row of ``metric`` for ``task``.

        Raises:
            KeyError: no such row.
        """
        for row in self.aucs:
            if row.metric == metric and row.task == task:
                return row
        raise KeyError(f"no AUC for metric {metric!r} and task {task!r}")

    def summary(self) -> str:
        """A text table: AUC next to its target range and source."""
        n_pat = len({m.participant_id for m in self.measures})
        lines = [
            f"Calibration of a synthetic cohort: {n_pat} patients, {len(self.measures)} exams",
            f"{'task':<12} {'metric':<8} {'AUC':>6} {'n+':>4} {'n-':>4}  {'target':<11} {'ok':<3} source",
        ]
        for r in self.aucs:
            t = r.target
            rng = f"{t.low:.2f}-{t.high:.2f}"
            ok = "yes" if r.in_range else "NO"
            src = ("~ " if t.approximate else "") + t.source
            auc_txt = "  n/a" if math.isnan(r.auc) else f"{r.auc:.3f}"
            lines.append(f"{r.task:<12} {r.metric:<8} {auc_txt:>6} {r.n_pos:>4} {r.n_neg:>4}  {rng:<11} {ok:<3} {src}")
        lines.append("progression: progression vs treatment-related change at suspected recurrence; "
                     "idh: IDH-wildtype vs mutant at initial diagnosis; TTP scored as -TTP; ~ approximate target.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Mann-Whitney AUC, ties counting one half; ``nan`` without both classes.

    Args:
        scores: higher means more likely positive.
        positive: class of each score.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def measure_arrays(
    *,
    static_bq: np.ndarray,
    dynamic_bq: np.ndarray,
    frame_start_s: Sequence[float],
    frame_duration_s: Sequence[float],
    masks: Mapping[str, np.ndarray],
    injected_mbq: float,
    body_weight_kg: float,
) -> dict[str, float]:
    """SUVmax, TBRmax, T/S max and TTP from images and truth masks on the PET grid.

    Args:
        static_bq: 3D static image (Bq/mL).
        dynamic_bq: 4D dynamic image (Bq/mL), frames last.
        frame_start_s: frame starts (s).
        frame_duration_s: frame durations (s).
        masks: ``tumor``, ``striatum``, ``background`` boolean or 0/1 arrays.
        injected_mbq: injected activity (MBq).
        body_weight_kg: weight (kg).

    Raises:
        ValueError: empty tumour mask, shapes that differ, or non-positive dose or weight.
    """
    if injected_mbq <= 0 or body_weight_kg <= 0:
        raise ValueError(f"dose and weight must be > 0, got {injected_mbq} MBq, {body_weight_kg} kg")
    for name in ("tumor", "striatum", "background"):
        if masks[name].shape != static_bq.shape:
            raise ValueError(f"mask {name!r} shape {masks[name].shape} != image shape {static_bq.shape}")
    tumour = masks["tumor"] > 0
    if not tumour.any():
        raise ValueError("empty tumour mask")
    factor = body_weight_kg * 1000.0 / (injected_mbq * 1e6)
    suv = static_bq * factor
    suv_max = float(suv[tumour].max())
    bg = float(suv[masks["background"] > 0].mean())
    st = float(suv[masks["striatum"] > 0].mean())
    tac = dynamic_bq[tumour].mean(axis=0)
    mid = (np.asarray(frame_start_s) + np.asarray(frame_duration_s) / 2.0) / 60.0
    return {"suv_max": suv_max, "tbr_max": suv_max / bg, "ts_max": suv_max / st,
            "ttp_min": float(mid[int(np.argmax(tac))])}


def measure_exam(exam: Exam) -> ExamMeasures:
    """Measure an in-memory :class:`~ml.phantoms.exam.Exam`."""
    m = measure_arrays(
        static_bq=exam.pet_static.data, dynamic_bq=exam.pet_dynamic.data,
        frame_start_s=exam.frame_start_s, frame_duration_s=exam.frame_duration_s,
        masks=exam.pet_masks, injected_mbq=exam.truth.injected_mbq,
        body_weight_kg=exam.truth.body_weight_kg,
    )
    return ExamMeasures(exam.labels.participant_id, exam.session_id, exam.labels.site, exam.timepoint,
                        exam.diagnosis, exam.labels.idh, **m)


def _aucs(measures: Sequence[ExamMeasures]) -> tuple[AucResult, ...]:
    out = []
    for t in TARGETS:
        if t.task == "progression":
            rows = [m for m in measures if m.timepoint == "suspected_recurrence" and m.diagnosis != "n/a"]
            y = [m.diagnosis == "progression" for m in rows]
        else:
            rows = [m for m in measures if m.timepoint == "initial_diagnosis" and m.idh != "n/a"]
            y = [m.idh == "wildtype" for m in rows]
        scores = [-m.ttp_min if t.metric == "ttp" else getattr(m, t.metric) for m in rows]
        out.append(AucResult(t.metric, t.task, auc(scores, y), int(sum(y)), int(len(y) - sum(y)), t))
    return tuple(out)


def calibration_from_exams(exams: Iterable[Exam]) -> CalibrationResults:
    """Calibration results of in-memory exams (no files)."""
    measures = tuple(measure_exam(e) for e in exams)
    return CalibrationResults(measures=measures, aucs=_aucs(measures))


def _read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ValueError(f"{path}: missing (is this a cohort made by ml.phantoms?)")
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def calibration_report(bids_dir: str | Path) -> CalibrationResults:
    """Measure every exam of a generated BIDS cohort and compute the AUCs.

    Reads ``participants.tsv``, each ``sub-X/sub-X_sessions.tsv``, the static and dynamic PET
    with their sidecars, and the truth masks in ``derivatives/groundtruth``.

    Args:
        bids_dir: the dataset root.

    Returns:
        :class:`CalibrationResults`; ``print(result)`` shows the table.

    Raises:
        ValueError: missing dataset files.
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    measures = []
    for p in _read_tsv(root / "participants.tsv"):
        sub = p["participant_id"]
        for s in _read_tsv(root / sub / f"{sub}_sessions.tsv"):
            ses = s["session_id"]
            stem = f"{sub}_{ses}_trc-FDOPA"
            pet = root / sub / ses / "pet"
            side = json.loads((pet / f"{stem}_rec-acdyn_pet.json").read_text())
            static = np.asarray(nib.load(pet / f"{stem}_rec-acstat_pet.nii.gz").get_fdata(dtype=np.float32))
            dyn = np.asarray(nib.load(pet / f"{stem}_rec-acdyn_pet.nii.gz").get_fdata(dtype=np.float32))
            mdir = root / "derivatives" / "groundtruth" / sub / ses / "pet"
            masks = {n: np.asarray(nib.load(mdir / f"{stem}_desc-{n}_mask.nii.gz").dataobj)
                     for n in ("tumor", "striatum", "background")}
            try:
                m = measure_arrays(
                    static_bq=static, dynamic_bq=dyn, frame_start_s=side["FrameTimesStart"],
                    frame_duration_s=side["FrameDuration"], masks=masks,
                    injected_mbq=float(side["InjectedRadioactivity"]),
                    body_weight_kg=float(side["BodyWeight"]),
                )
            except ValueError as err:
                raise ValueError(f"{pet / stem}: {err}") from err
            measures.append(ExamMeasures(sub, ses, p["site"], s["timepoint"], s["diagnosis"], p["idh"], **m))
    return CalibrationResults(measures=tuple(measures), aucs=_aucs(measures))


def _pet_only_job(args: tuple[int, int, int]) -> list[ExamMeasures]:
    from ml.phantoms.exam import TIMEPOINTS, draw_patient, render_exam

    seed, index, site = args
    model = draw_patient(seed=seed, patient_index=index, site=site)
    return [measure_exam(render_exam(model, tp, include_mr=False)) for tp in TIMEPOINTS]


def calibration_cohort(
    *, n_patients: int, n_sites: int, seed: int, workers: int | None = None,
) -> CalibrationResults:
    """Calibration of a cohort rendered in memory, PET only (nothing written; fast).

    Patients and sites are drawn exactly as :func:`~ml.phantoms.cohort.generate_cohort` draws
    them, so the numbers equal those of :func:`calibration_report` on the written cohort.

    Args:
        n_patients: number of patients.
        n_sites: number of sites (patient ``i`` at site ``i % n_sites``).
        seed: cohort seed.
        workers: processes (default: all CPUs).
    """
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from ml.phantoms.exam import preload

    if n_patients < 2 or n_sites < 1:
        raise ValueError(f"need n_patients >= 2 and n_sites >= 1, got {n_patients}, {n_sites}")
    jobs = [(seed, i, i % n_sites) for i in range(n_patients)]
    n_workers = max(1, min(workers or os.cpu_count() or 1, n_patients))
    if n_workers == 1:
        rows = [m for job in jobs for m in _pet_only_job(job)]
    else:
        preload(2)
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
            rows = [m for ms in pool.map(_pet_only_job, jobs) for m in ms]
    return CalibrationResults(measures=tuple(rows), aucs=_aucs(rows))


if __name__ == "__main__":  # python -m ml.phantoms.calibration DIR
    import sys

    from ml.phantoms.cli import calibration_main

    sys.exit(calibration_main())
