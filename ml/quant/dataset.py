"""Quantify every exam of a BIDS dataset into the cohort CSV (``manage.py quantify --csv``).

One row per exam with the columns ``site, patient, exam`` + :data:`ml.quant.exam.ROW_COLUMNS`
(``patient`` = ``sub-<label>``, ``exam`` = ``ses-<label>``), indexed ``"sub-X/ses-Y"``, plus a
labels table (timepoint, diagnosis, idh, codeletion_1p19q) aligned on the same index for
:func:`ml.classical.train_classical`. The dataset is scanned with :func:`ml.io.bids.scan_bids`
and each exam quantified with :func:`ml.quant.files.quantify_files` using the masks of one
derivatives pipeline. An exam that cannot be quantified (no tumour mask, empty mask, bad file)
is listed in ``errors`` with the reason instead of stopping the whole cohort.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ml.io.bids import scan_bids
from ml.quant.exam import ROW_COLUMNS, ExamQuantification, QuantConfig
from ml.quant.files import quantify_files

__all__ = ["CSV_COLUMNS", "DatasetQuantification", "quantify_dataset"]

#: Columns of the cohort CSV, in order.
CSV_COLUMNS: tuple[str, ...] = ("site", "patient", "exam", *ROW_COLUMNS)


@dataclass(frozen=True)
class DatasetQuantification:
    """Cohort quantification.

    Attributes:
        table: one row per quantified exam, :data:`CSV_COLUMNS`, index ``"sub-X/ses-Y"``.
        labels: same index: ``site, timepoint, diagnosis, idh, codeletion_1p19q`` (``"n/a"`` when
            missing, as in BIDS).
        results: the full :class:`ExamQuantification` per exam (TACs, maps).
        errors: ``{"sub-X/ses-Y": reason}`` for exams left out.
    """

    table: pd.DataFrame
    labels: pd.DataFrame
    results: dict[str, ExamQuantification] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def to_csv(self, path: str | Path) -> Path:
        """Write :attr:`table` (without the index) as CSV; NaN as empty, ``curve_class`` n/a."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(out, index=False, float_format="%.6g")
        return out


def quantify_dataset(
    root: str | Path, *, pipeline: str = "groundtruth", config: QuantConfig | None = None
) -> DatasetQuantification:
    """Quantify every session that has a PET image and a tumour mask of ``pipeline``.

    Args:
        root: BIDS dataset folder.
        pipeline: derivatives pipeline whose PET-grid masks are used.
        config: quantification settings.

    Raises:
        ml.io.bids.BidsError: the dataset itself is invalid.
    """
    ds = scan_bids(root)
    rows, labels, results, errors = {}, {}, {}, {}
    for sub in sorted(ds.subjects.values(), key=lambda s: s.label):
        for ses in sorted(sub.sessions.values(), key=lambda s: s.label):
            key = f"sub-{sub.label}/ses-{ses.label}"
            images = {im.kind: im.path for im in ses.images}
            masks = {m.kind: m.path for m in ses.masks if m.datatype == "pet" and m.pipeline == pipeline}
            static = images.get("pet_static") or None
            if static is None or "tumor" not in masks:
                errors[key] = "no static PET image" if static is None else \
                    f"no PET-grid tumour mask in derivatives/{pipeline}"
                continue
            try:
                q = quantify_files(
                    pet_static=static, pet_dynamic=images.get("pet_dynamic"),
                    tumor_mask=masks["tumor"], striatum_mask=masks.get("striatum"),
                    background_mask=masks.get("background"), config=config,
                )
            except ValueError as exc:  # ImageFormatError is a ValueError too
                errors[key] = str(exc)
                continue
            results[key] = q
            rows[key] = {"site": sub.site, "patient": f"sub-{sub.label}",
                         "exam": f"ses-{ses.label}", **q.to_row()}
            labels[key] = {"site": sub.site, "timepoint": ses.timepoint or "n/a",
                           "diagnosis": ses.diagnosis or "n/a",
                           "idh": sub.labels.get("idh") or "n/a",
                           "codeletion_1p19q": sub.labels.get("codeletion_1p19q") or "n/a"}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(CSV_COLUMNS))
    return DatasetQuantification(
        table=table,
        labels=pd.DataFrame.from_dict(labels, orient="index",
                                      columns=["site", "timepoint", "diagnosis", "idh",
                                               "codeletion_1p19q"]),
        results=results,
        errors=errors,
    )
