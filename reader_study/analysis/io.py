"""Read and write reader-study ratings: long CSV, iMRMC input format, OR-DBM MRMC ``.lrc``.

* Long CSV: one row per reading with columns ``reader, case, modality, truth, rating``
  (``treatment`` accepted for ``modality``).
* iMRMC (Gallas, FDA/CDRH): free text, a line ``BEGIN DATA:``, then ``readerID,caseID,
  modalityID,score`` rows; truth rows have reader ``truth`` (or ``-1``) and/or modality
  ``truth`` and score 0/1.
* ``.lrc`` (OR-DBM MRMC / LABMRMC): title; first reader name; quoted modality names; one
  ``L``/``S`` flag per modality (``L``: larger rating = more likely diseased); per reader a block
  of non-diseased rows (one rating per modality) closed by ``*``, a block of diseased rows
  closed by ``*``; the next reader's name; ``#`` ends the file. Cases are identified by position.

Every reader raises ``ValueError`` naming the file and, where it helps, the line.
"""

from __future__ import annotations

import csv
import io as _io
import shlex
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .data import ReaderStudyData

__all__ = [
    "FORMATS",
    "detect_format",
    "read_imrmc",
    "read_long_csv",
    "read_lrc",
    "read_ratings",
    "write_imrmc",
    "write_long_csv",
    "write_lrc",
]

FORMATS = ("auto", "long", "imrmc", "lrc")
TRUTH_LABELS = ("truth", "-1")


def detect_format(path: str | Path) -> Literal["long", "imrmc", "lrc"]:
    """Guess the format from the extension, then from the content."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".imrmc":
        return "imrmc"
    if ext == ".lrc":
        return "lrc"
    if ext in (".csv", ".tsv"):
        return "long"
    text = _read_text(p)
    if "BEGIN DATA:" in text:
        return "imrmc"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[-1] == "#" and any(ln == "*" for ln in lines):
        return "lrc"
    return "long"


def read_ratings(path: str | Path, *, format: str = "auto") -> ReaderStudyData:
    """Read a ratings file in any supported format (``auto`` detects it)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    fmt = detect_format(path) if format == "auto" else format
    return {"long": read_long_csv, "imrmc": read_imrmc, "lrc": read_lrc}[fmt](path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (UTF-8)") from None


def read_long_csv(path: str | Path) -> ReaderStudyData:
    """Read the long CSV format (comma or tab separated, header row required)."""
    p = Path(path)
    text = _read_text(p)
    sep = "\t" if p.suffix.lower() == ".tsv" else ","
    try:
        frame = pd.read_csv(_io.StringIO(text), sep=sep, dtype={"reader": str, "case": str,
                                                               "modality": str, "treatment": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{p}: cannot parse CSV ({exc})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    return ReaderStudyData.from_long(frame, source=str(p))


def write_long_csv(data: ReaderStudyData, path: str | Path) -> Path:
    """Write the long CSV format; returns the path."""
    p = Path(path)
    data.to_long().to_csv(p, index=False)
    return p


def read_imrmc(path: str | Path) -> ReaderStudyData:
    """Read the iMRMC input format (see module docstring)."""
    p = Path(path)
    lines = _read_text(p).splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("BEGIN DATA:"))
    except StopIteration:
        raise ValueError(f"{p}: no 'BEGIN DATA:' line; not an iMRMC file") from None
    truth: dict[str, int] = {}
    rows = []
    for n, ln in enumerate(lines[start + 1:], start=start + 2):
        if not ln.strip():
            continue
        parts = [x.strip() for x in next(csv.reader([ln]))]
        if len(parts) != 4:
            raise ValueError(f"{p}, line {n}: expected readerID,caseID,modalityID,score; got {ln!r}")
        reader, case, modality, score = parts
        try:
            val = float(score)
        except ValueError:
            raise ValueError(f"{p}, line {n}: score {score!r} is not a number") from None
        if np.isnan(val):
            raise ValueError(f"{p}, line {n}: NaN score")
        if reader in TRUTH_LABELS or modality == "truth":
            if val not in (0.0, 1.0):
                raise ValueError(f"{p}, line {n}: truth must be 0 or 1, got {score}")
            if case in truth and truth[case] != int(val):
                raise ValueError(f"{p}, line {n}: conflicting truth for case {case!r}")
            truth[case] = int(val)
        else:
            rows.append((reader, case, modality, val, n))
    if not rows:
        raise ValueError(f"{p}: no ratings after 'BEGIN DATA:'")
    no_truth = sorted({r[1] for r in rows if r[1] not in truth})
    if no_truth:
        raise ValueError(f"{p}: missing truth for case(s) {no_truth[:8]}"
                         + (f" ... ({len(no_truth)} cases)" if len(no_truth) > 8 else ""))
    frame = pd.DataFrame(rows, columns=["reader", "case", "modality", "rating", "line"])
    frame["truth"] = frame["case"].map(truth)
    return ReaderStudyData.from_long(frame.drop(columns="line"), source=str(p))


def write_imrmc(data: ReaderStudyData, path: str | Path, *, header: str = "") -> Path:
    """Write the iMRMC input format (truth rows first, reader and modality ``truth``)."""
    p = Path(path)
    out = [header or f"Written by reader_study.analysis from {data.source}", "BEGIN DATA:"]
    out += [f"truth,{c},truth,{t}" for c, t in zip(data.cases, data.truth)]
    long = data.to_long()
    out += [f"{r.reader},{r.case},{r.modality},{r.rating:.6g}" for r in long.itertuples()]
    p.write_text("\n".join(out) + "\n")
    return p


def read_lrc(path: str | Path) -> ReaderStudyData:
    """Read the OR-DBM MRMC ``.lrc`` format (see module docstring)."""
    p = Path(path)
    lines = [ln.rstrip() for ln in _read_text(p).splitlines()]
    if len(lines) < 5:
        raise ValueError(f"{p}: too short for an .lrc file")
    pos = 1
    reader = lines[pos].strip()
    try:
        modalities = shlex.split(lines[pos + 1])
    except ValueError as exc:
        raise ValueError(f"{p}, line {pos + 2}: bad modality names ({exc})") from None
    flags = lines[pos + 2].split()
    t = len(modalities)
    if t == 0 or len(flags) != t or any(f.upper() not in ("L", "S") for f in flags):
        raise ValueError(f"{p}, line {pos + 3}: expected one L/S flag per modality "
                         f"({t} modalities), got {lines[pos + 2]!r}")
    sign = np.array([1.0 if f.upper() == "L" else -1.0 for f in flags])
    pos += 3
    blocks: list[tuple[str, np.ndarray, np.ndarray]] = []
    while True:
        arrays = []
        for _ in range(2):
            vals = []
            while True:
                if pos >= len(lines):
                    raise ValueError(f"{p}: unexpected end of file in reader {reader!r} (missing '*')")
                ln = lines[pos].strip()
                pos += 1
                if ln == "*":
                    break
                if not ln:
                    continue
                fields = ln.split()
                try:
                    vals.append([float(x) for x in fields[:t]])
                except ValueError:
                    raise ValueError(f"{p}, line {pos}: expected {t} numeric ratings, got {ln!r}") from None
                if len(fields) < t or np.isnan(vals[-1]).any():
                    raise ValueError(f"{p}, line {pos}: expected {t} numeric ratings, got {ln!r}")
            arrays.append(np.array(vals, dtype=float).reshape(-1, t) * sign)
        blocks.append((reader, arrays[0], arrays[1]))
        while pos < len(lines) and not lines[pos].strip():
            pos += 1
        if pos >= len(lines) or lines[pos].strip() == "#":
            break
        reader = lines[pos].strip()
        pos += 1
    k0, k1 = blocks[0][1].shape[0], blocks[0][2].shape[0]
    for name, neg, pos_ in blocks:
        if neg.shape[0] != k0 or pos_.shape[0] != k1:
            raise ValueError(f"{p}: reader {name!r} has {neg.shape[0]}/{pos_.shape[0]} "
                             f"non-diseased/diseased cases, reader {blocks[0][0]!r} has {k0}/{k1}")
    ratings = np.stack([np.concatenate([b[1], b[2]], axis=0).T for b in blocks], axis=1)
    truth = np.r_[np.zeros(k0, int), np.ones(k1, int)]
    cases = tuple([f"N{i + 1}" for i in range(k0)] + [f"A{j + 1}" for j in range(k1)])
    return ReaderStudyData(ratings=ratings, truth=truth, modalities=tuple(modalities),
                           readers=tuple(b[0] for b in blocks), cases=cases, source=str(p))


def write_lrc(data: ReaderStudyData, path: str | Path, *, title: str = "") -> Path:
    """Write the ``.lrc`` format (fully crossed designs only; ``L`` flags)."""
    data.require_fully_crossed("the .lrc format")
    p = Path(path)
    neg, pos = data.negatives(), data.positives()
    out = [title or f"Written by reader_study.analysis from {data.source}"]
    for j, reader in enumerate(data.readers):
        out.append(reader)
        if j == 0:
            out.append("  ".join(f'"{m}"' for m in data.modalities))
            out.append("  ".join("L" for _ in data.modalities))
        for block, label in ((neg, "Normal"), (pos, "Abnormal")):
            for i in range(block.shape[2]):
                out.append("  ".join(f"{v:.6f}" for v in block[:, j, i]) + f"   {label} Case {i + 1}")
            out.append("*")
    out.append("#")
    p.write_text("\n".join(out) + "\n")
    return p
