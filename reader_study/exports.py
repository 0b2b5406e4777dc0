"""Study exports, one file each: the analysis-ready long CSV, the iMRMC input file, JSON.

All three are built from :func:`reader_study.results.readings_frame` (pseudonymous reader and case
codes, reader site names, no exam, patient, user name or date), so they agree with the results page.
Every export records a ``study.export`` audit event (who, which study, which format, how many
readings); the page, the API and ``manage.py export_study`` all call :func:`study_export`.
"""
from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from apps.audit.services import audit_record
from reader_study.analysis import ReaderStudyData, write_imrmc
from reader_study.models import Study
from reader_study.results import COLUMNS, StudyResults, readings_frame, study_results

FORMATS = ("csv", "imrmc", "json")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "imrmc": "text/plain; charset=utf-8",
                 "json": "application/json"}
EXTENSIONS = {"csv": "csv", "imrmc": "imrmc", "json": "json"}


class ExportError(ValueError):
    """Nothing to export yet, or an unknown format (the message says which)."""


@dataclass(frozen=True)
class Export:
    """One exported file: its bytes, name and content type."""

    content: bytes
    filename: str
    content_type: str
    n_readings: int


#: First characters that make a spreadsheet read a cell as a formula (CSV injection, OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _safe_text(value) -> str:
    """A free-text cell a spreadsheet shows as text: line breaks as spaces, a formula-like start quoted."""
    text = " ".join(str(value or "").split())
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The long CSV: one row per submitted reading, the columns of ``results.COLUMNS``.

    The comment is the reader's text on one line (line breaks as spaces), prefixed with ``'`` when it
    starts like a spreadsheet formula; the JSON export keeps it exactly as typed."""
    out = io.StringIO()
    frame = frame.assign(comment=frame["comment"].map(_safe_text)) if "comment" in frame else frame
    frame.to_csv(out, index=False, columns=list(COLUMNS), lineterminator="\n")
    return out.getvalue().encode("utf-8")


def imrmc_bytes(study: Study, frame: pd.DataFrame) -> bytes:
    """The iMRMC input file (truth rows, then reader,case,modality,rating), via ``write_imrmc``."""
    data = ReaderStudyData.from_long(frame[["reader", "case", "modality", "truth", "rating"]],
                                     source=f"study {study.slug}")
    header = (f"AminoPET reader study {study.slug}: {len(frame)} readings; rating = score moved half a step "
              f"towards the decision (positive when rating >= {frame['threshold'].iloc[0]:g})")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_imrmc(data, Path(tmp) / "study.imrmc", header=header)
        return path.read_bytes()


def json_bytes(results: StudyResults) -> bytes:
    """Results (``StudyReport.to_dict()`` and acceptability) plus every reading, as JSON."""
    frame = results.frame.astype(object).where(results.frame.notna(), None)
    doc = results.to_dict()
    doc["columns"] = COLUMNS
    doc["readings"] = frame.to_dict(orient="records")
    return json.dumps(doc, indent=1, default=_default).encode("utf-8")


def _default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def study_export(*, study: Study, format: str, user=None, request=None) -> Export:
    """Build one export of ``study`` and record it in the audit trail.

    Raises :class:`ExportError` for an unknown format or a study without submitted readings.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "json":
        results = study_results(study)
        frame = results.frame
    else:
        frame = readings_frame(study)
    if frame.empty:
        raise ExportError(f"study {study.slug} has no submitted readings yet")
    if format == "csv":
        content = csv_bytes(frame)
    elif format == "imrmc":
        try:
            content = imrmc_bytes(study, frame)
        except ValueError as exc:
            raise ExportError(f"the iMRMC file needs readings the analysis can use: {exc}") from exc
    else:
        content = json_bytes(results)
    audit_record(action="study.export", actor=user, target=study, request=request,
                 details={"format": format, "readings": int(len(frame)), "bytes": len(content),
                          "status": study.status})
    return Export(content=content, filename=f"{study.slug}-readings.{EXTENSIONS[format]}",
                  content_type=CONTENT_TYPES[format], n_readings=int(len(frame)))
