"""Read a BIDS dataset with the PET extension into plain dataclasses (no Django).

The AminoPET conventions on top of BIDS (label columns in participants.tsv and sessions.tsv, the
derivative masks) are described in docs/data-format.md. :func:`scan_bids` checks the whole layout
and the label values first and raises one :class:`BidsError` listing every problem, so an import
either has everything it needs or changes nothing.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ml.io.errors import ImageFormatError
from ml.io.labels import LABEL_VALUES, LabelSpellingError, MappingReport, map_label

# LABEL_VALUES (the documented values of the label columns) and the hospital spellings that map to
# them live in ml.io.labels, shared with the labels import; "n/a" (or empty) means unknown everywhere.
MISSING = {"", "n/a", "na", "NA", "N/A"}
MASK_KINDS = ("tumor", "striatum", "background", "aggressive")

_ENTITY = re.compile(r"([a-z]+)-([a-zA-Z0-9]+)")
_LABEL = re.compile(r"^[a-zA-Z0-9]+$")


class BidsError(ValueError):
    """A BIDS dataset that cannot be imported; ``problems`` lists every reason, each naming a file."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        self.root = str(root)
        self.problems = problems
        listing = "\n  - ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{root}: {len(problems)} problem(s):\n  - {listing}{more}")


@dataclass(frozen=True)
class BidsImage:
    """One image file of a session, with its BIDS entities and JSON sidecar."""

    path: Path
    kind: str  # t1 | t1c | t2 | flair | pet_static | pet_dynamic
    sidecar: dict
    entities: dict[str, str]


@dataclass(frozen=True)
class BidsMask:
    path: Path
    kind: str  # tumor | striatum | background | aggressive
    datatype: str  # pet | anat: the grid it lies on
    pipeline: str


@dataclass
class BidsSession:
    label: str
    timepoint: str | None = None
    day: int | None = None
    diagnosis: str | None = None
    diagnosis_basis: str | None = None
    images: list[BidsImage] = field(default_factory=list)
    masks: list[BidsMask] = field(default_factory=list)


@dataclass
class BidsSubject:
    label: str
    site: str | None
    labels: dict[str, str | None]
    sessions: dict[str, BidsSession] = field(default_factory=dict)


@dataclass
class BidsDataset:
    root: Path
    name: str
    subjects: dict[str, BidsSubject]
    #: spellings read as documented values (``ml.io.labels.MappingReport.to_list()``), for the report
    label_mappings: list[dict] = field(default_factory=list)

    def n_sessions(self) -> int:
        return sum(len(s.sessions) for s in self.subjects.values())


def _read_tsv(path: Path, problems: list[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{path}: cannot be read as a TSV file ({exc})")
        return []
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def _label(
    value: str | None, column: str, where: str, problems: list[str], mappings: MappingReport | None = None
) -> str | None:
    """The documented value of a label cell (hospital spellings mapped by ml.io.labels), or None."""
    if value is None or value.strip() in MISSING:
        return None
    if column not in LABEL_VALUES:
        return value.strip()
    try:
        return map_label(column, value, report=mappings)
    except LabelSpellingError as exc:
        problems.append(f"{where}: {exc}")
        return None


def _image_kind(name: str, datatype: str) -> str | None:
    stem = name.split(".", 1)[0]
    suffix = stem.rsplit("_", 1)[-1]
    entities = dict(_ENTITY.findall(stem))
    if datatype == "anat":
        if suffix == "T1w":
            return "t1c" if entities.get("ce") else "t1"
        return {"T2w": "t2", "FLAIR": "flair"}.get(suffix)
    if datatype == "pet" and suffix == "pet":
        rec = entities.get("rec", "")
        if rec.endswith("dyn"):
            return "pet_dynamic"
        if rec.endswith("stat"):
            return "pet_static"
        return "pet_dynamic"  # decided by the 4th dimension at load time
    return None


def _load_sidecar(image: Path, problems: list[str]) -> dict:
    side = image.with_name(image.name.split(".", 1)[0] + ".json")
    if not side.exists():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{side}: invalid JSON sidecar ({exc})")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{side}: the JSON sidecar is not an object")
        return {}
    return data


def _check_pet_sidecar(image: BidsImage, problems: list[str]) -> None:
    side = image.sidecar
    if image.kind == "pet_dynamic":
        starts, durations = side.get("FrameTimesStart"), side.get("FrameDuration")
        if not isinstance(starts, list) or not isinstance(durations, list) or not starts:
            problems.append(f"{image.path}: dynamic PET without FrameTimesStart/FrameDuration in its sidecar")
        elif len(starts) != len(durations):
            problems.append(
                f"{image.path}: {len(starts)} FrameTimesStart but {len(durations)} FrameDuration values"
            )
    units = side.get("Units")
    if units is None:
        problems.append(f"{image.path}: PET sidecar has no Units")
    elif str(units) not in {"Bq/mL", "kBq/mL", "SUV", "g/mL"}:
        problems.append(f"{image.path}: PET Units {units!r} not supported (Bq/mL, kBq/mL, SUV, g/mL)")
    if str(units) in {"Bq/mL", "kBq/mL"}:
        for key in ("InjectedRadioactivity", "BodyWeight"):
            value = side.get(key)
            if not isinstance(value, int | float) or value <= 0:
                problems.append(f"{image.path}: sidecar {key} must be a positive number for SUV (got {value!r})")


def scan_bids(root: str | Path) -> BidsDataset:
    """Scan a BIDS dataset and check its layout and labels (images are read later).

    Raises:
        BidsError: listing every problem found (missing files, duplicates, unknown label values...).
    """
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        raise BidsError(root, [f"{root}: not a folder"])
    description = root / "dataset_description.json"
    name = root.name
    if not description.exists():
        problems.append(f"{description}: missing (required by BIDS)")
    else:
        try:
            name = json.loads(description.read_text(encoding="utf-8")).get("Name", name)
        except (ValueError, AttributeError) as exc:
            problems.append(f"{description}: invalid JSON ({exc})")
    participants_path = root / "participants.tsv"
    subjects: dict[str, BidsSubject] = {}
    mappings = MappingReport()
    rows = _read_tsv(participants_path, problems) if participants_path.exists() else []
    for i, row in enumerate(rows, start=2):
        pid = row.get("participant_id", "")
        where = f"{participants_path} line {i}"
        if not pid.startswith("sub-") or not _LABEL.match(pid[4:]):
            problems.append(f"{where}: invalid participant_id {pid!r}")
            continue
        label = pid[4:]
        if label in subjects:
            problems.append(f"{where}: duplicate participant {pid}")
            continue
        labels = {
            col: _label(row.get(col), col, where, problems, mappings)
            for col in ("idh", "codeletion_1p19q", "mgmt", "tertp", "who_grade", "who_type", "sex")
        }
        if labels["codeletion_1p19q"] == "codeleted" and labels["idh"] == "wildtype":
            problems.append(f"{where}: 1p/19q codeletion with IDH wildtype is not a WHO 2021 entity")
        age = row.get("age", "")
        labels["age"] = None if age in MISSING else age
        site = row.get("site") or None
        subjects[label] = BidsSubject(label=label, site=None if site in MISSING else site, labels=labels)
    for sub_dir in sorted(root.glob("sub-*")):
        label = sub_dir.name[4:]
        if not sub_dir.is_dir():
            continue
        if label not in subjects:
            subjects[label] = BidsSubject(label=label, site=None, labels={})
        _scan_subject(root, sub_dir, subjects[label], problems, mappings)
    for sub in subjects.values():
        if not sub.sessions:
            problems.append(f"{root / ('sub-' + sub.label)}: participant has no session with images")
    _scan_derivatives(root, subjects, problems)
    if not subjects:
        problems.append(f"{root}: no sub-* folders")
    if problems:
        raise BidsError(root, problems)
    return BidsDataset(root=root, name=str(name), subjects=subjects, label_mappings=mappings.to_list())


def _scan_subject(
    root: Path, sub_dir: Path, subject: BidsSubject, problems: list[str], mappings: MappingReport | None = None
) -> None:
    sessions_tsv = sub_dir / f"{sub_dir.name}_sessions.tsv"
    table: dict[str, dict[str, str]] = {}
    if sessions_tsv.exists():
        for i, row in enumerate(_read_tsv(sessions_tsv, problems), start=2):
            sid = row.get("session_id", "")
            if not sid.startswith("ses-"):
                problems.append(f"{sessions_tsv} line {i}: invalid session_id {sid!r}")
            elif sid[4:] in table:
                problems.append(f"{sessions_tsv} line {i}: duplicate session {sid}")
            else:
                table[sid[4:]] = row | {"_where": f"{sessions_tsv} line {i}"}
    for ses_dir in sorted(p for p in sub_dir.glob("ses-*") if p.is_dir()):
        label = ses_dir.name[4:]
        row = table.get(label, {})
        where = row.get("_where", str(ses_dir))
        session = BidsSession(label=label)
        session.timepoint = _label(row.get("timepoint"), "timepoint", where, problems, mappings)
        if (row.get("timepoint") or "").strip() in MISSING:
            problems.append(f"{where}: timepoint missing (initial_diagnosis or suspected_recurrence)")
        session.diagnosis = _label(row.get("diagnosis"), "diagnosis", where, problems, mappings)
        session.diagnosis_basis = _label(row.get("diagnosis_basis"), "diagnosis_basis", where, problems, mappings)
        day = row.get("day", "")
        if day not in MISSING:
            try:
                session.day = int(day)
            except ValueError:
                problems.append(f"{where}: day {day!r} is not an integer")
        for datatype in ("anat", "pet"):
            for path in sorted((ses_dir / datatype).glob("*.nii*")):
                kind = _image_kind(path.name, datatype)
                if kind is None:
                    continue
                entities = dict(_ENTITY.findall(path.name.split(".", 1)[0]))
                if entities.get("sub") != subject.label or entities.get("ses") != label:
                    problems.append(f"{path}: file name does not match its sub-/ses- folder")
                    continue
                image = BidsImage(path=path, kind=kind, sidecar=_load_sidecar(path, problems), entities=entities)
                if datatype == "pet":
                    _check_pet_sidecar(image, problems)
                session.images.append(image)
        kinds = [img.kind for img in session.images]
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                problems.append(f"{ses_dir}: {kinds.count(kind)} images of kind {kind}; expected one")
        if session.images:
            subject.sessions[label] = session
    for label in table:
        if label not in subject.sessions:
            problems.append(f"{sessions_tsv}: session ses-{label} is listed but has no images")


def _scan_derivatives(root: Path, subjects: dict[str, BidsSubject], problems: list[str]) -> None:
    for path in sorted((root / "derivatives").glob("*/sub-*/ses-*/*/*_mask.nii*")):
        entities = dict(_ENTITY.findall(path.name.split(".", 1)[0]))
        kind = entities.get("desc")
        if kind == "tumour":
            kind = "tumor"
        if kind not in MASK_KINDS:
            continue
        sub, ses = entities.get("sub"), entities.get("ses")
        session = subjects.get(sub or "") and subjects[sub].sessions.get(ses or "")
        if not session:
            problems.append(f"{path}: mask for sub-{sub} ses-{ses}, which has no images")
            continue
        datatype = path.parent.name
        if datatype not in ("pet", "anat"):
            continue
        pipeline = path.relative_to(root / "derivatives").parts[0]
        if any(m.kind == kind and m.datatype == datatype for m in session.masks):
            problems.append(f"{path}: a second {kind} mask on the {datatype} grid")
            continue
        session.masks.append(BidsMask(path=path, kind=kind, datatype=datatype, pipeline=pipeline))


def check_frames(image: BidsImage, n_frames: int) -> None:
    """Raise if a PET image's 4th dimension disagrees with its sidecar frame timing."""
    starts = image.sidecar.get("FrameTimesStart")
    if image.kind == "pet_dynamic":
        if n_frames < 2:
            raise ImageFormatError(image.path, "dynamic PET (rec-*dyn) has a single frame")
        if len(starts or []) != n_frames:
            raise ImageFormatError(
                image.path, f"has {n_frames} frames but the sidecar gives {len(starts or [])} frame times"
            )
