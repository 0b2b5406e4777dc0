"""Label spellings: the one place where hospital spellings become AminoPET's documented values.

Hospitals write outcomes and molecular markers in many ways (``yes``/``no``, ``1``/``0``,
``positive``, ``wt``, ``PD``, ``radionecrosis``, ``biopsy``...). :func:`map_label` turns a cell of
a TSV into the documented value of its column (docs/data-format.md), case-insensitively and
ignoring spaces, hyphens, underscores and slashes, or raises :class:`LabelSpellingError` naming
the accepted spellings. :class:`MappingReport` counts which spelling became which value, so an
import can show its user exactly what was read. Both the BIDS import (``participants.tsv``,
``sessions.tsv``) and the labels import (``import_labels``) use this module: one way to read a
label. No Django here.

The spellings follow the usual wording of pathology and tumour-board reports (WHO CNS5 2021
terms; RANO 2010 "progressive disease" vs treatment-related change / pseudoprogression /
radionecrosis). Boolean spellings (yes/no, true/false, 1/0, positive/negative, present/absent)
are read as "the marker (or event) named by the column is present": ``codeletion_1p19q = yes``
is ``codeleted``, ``idh = 1`` is ``mutant``, ``mgmt = positive`` is ``methylated``.
``diagnosis`` takes no booleans (``1`` would not say which of the two it is).
"""
from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = [
    "EXAM_COLUMNS",
    "LABEL_VALUES",
    "MISSING_SPELLINGS",
    "PATIENT_COLUMNS",
    "LabelRow",
    "LabelSpellingError",
    "LabelsTable",
    "MappingReport",
    "is_missing",
    "map_column",
    "map_label",
    "read_labels_table",
    "spellings",
]

#: The documented values of every label column (docs/data-format.md).
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "idh": ("mutant", "wildtype"),
    "codeletion_1p19q": ("codeleted", "intact"),
    "mgmt": ("methylated", "unmethylated"),
    "tertp": ("mutant", "wildtype"),
    "who_grade": ("1", "2", "3", "4"),
    "who_type": ("astrocytoma", "oligodendroglioma", "glioblastoma", "other"),
    "sex": ("M", "F", "O"),
    "timepoint": ("initial_diagnosis", "suspected_recurrence"),
    "diagnosis": ("progression", "treatment_related"),
    "diagnosis_basis": ("histology", "follow_up"),
}

#: Cells that mean "not known" (compared after :func:`_key`).
MISSING_SPELLINGS = ("", "n/a", "na", "nan", "none", "null", "unknown", "unk", "not done", "nd", "?", "-")

_TRUE = ("yes", "y", "true", "1", "positive", "pos", "present")
_FALSE = ("no", "n", "false", "0", "negative", "neg", "absent")
_MUTANT = ("mutant", "mutated", "mutation", "mut", "mt", "idhmutant", "idhmut", "tertmutant", "tertpmutant")
_WILDTYPE = ("wildtype", "wt", "wild", "nonmutated", "notmutated", "idhwildtype", "idhwt", "tertpwildtype",
             "tertwildtype")

_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "idh": {"mutant": _MUTANT + _TRUE, "wildtype": _WILDTYPE + _FALSE},
    "tertp": {"mutant": _MUTANT + _TRUE, "wildtype": _WILDTYPE + _FALSE},
    "codeletion_1p19q": {
        "codeleted": ("codeleted", "codeletion", "codel", "deleted", "1p19qcodeleted", "1p19qcodel", *_TRUE),
        "intact": ("intact", "noncodeleted", "notcodeleted", "noncodel", "nocodeletion", "retained",
                   "notdeleted", *_FALSE),
    },
    "mgmt": {
        "methylated": ("methylated", "meth", "methyl", "mgmtmethylated", "promotermethylated", *_TRUE),
        "unmethylated": ("unmethylated", "unmeth", "nonmethylated", "notmethylated", "mgmtunmethylated", *_FALSE),
    },
    "who_grade": {
        "1": ("1", "i", "grade1", "gradei", "g1", "cnswhograde1"),
        "2": ("2", "ii", "grade2", "gradeii", "g2", "cnswhograde2"),
        "3": ("3", "iii", "grade3", "gradeiii", "g3", "cnswhograde3"),
        "4": ("4", "iv", "grade4", "gradeiv", "g4", "cnswhograde4"),
    },
    "who_type": {
        "astrocytoma": ("astrocytoma", "astro", "astrocytomaidhmutant", "diffuseastrocytoma",
                        "anaplasticastrocytoma"),
        "oligodendroglioma": ("oligodendroglioma", "oligo", "oligodendrogliomaidhmutantand1p19qcodeleted",
                              "anaplasticoligodendroglioma"),
        "glioblastoma": ("glioblastoma", "gbm", "glioblastomaidhwildtype", "gb"),
        "other": ("other", "others"),
    },
    "sex": {"M": ("m", "male", "man"), "F": ("f", "female", "woman"), "O": ("o", "other", "x")},
    "timepoint": {
        "initial_diagnosis": ("initialdiagnosis", "initial", "diagnosis", "primary", "baseline", "newlydiagnosed"),
        "suspected_recurrence": ("suspectedrecurrence", "recurrencesuspected", "suspectedprogression",
                                 "followupsuspicion", "posttreatment"),
    },
    "diagnosis": {
        "progression": ("progression", "pd", "progressivedisease", "progressive", "recurrence", "recurrent",
                        "tumorrecurrence", "tumourrecurrence", "tumorprogression", "tumourprogression",
                        "trueprogression", "relapse", "recurrenttumor", "recurrenttumour"),
        "treatment_related": ("treatmentrelated", "treatmentrelatedchange", "treatmentrelatedchanges", "trc",
                              "treatmenteffect", "radionecrosis", "radiationnecrosis", "necrosis",
                              "pseudoprogression", "pseudo", "psp", "radiationinjury", "nonprogression"),
    },
    "diagnosis_basis": {
        "histology": ("histology", "histological", "histopathology", "pathology", "biopsy", "stereotacticbiopsy",
                      "surgery", "resection", "reresection", "tissue"),
        "follow_up": ("followup", "fu", "clinicalfollowup", "imagingfollowup", "clinicoradiological",
                      "clinicalandimagingfollowup", "mrifollowup", "clinical", "imaging", "rano"),
    },
}

_SEPARATORS = re.compile(r"[\s_\-/.]+")


def _key(raw: str) -> str:
    """Case-, space-, hyphen-, underscore-, slash- and dot-insensitive form of a cell."""
    return _SEPARATORS.sub("", raw.strip().lower())


_LOOKUP: dict[str, dict[str, str]] = {}
for _column, _values in _SYNONYMS.items():
    _table: dict[str, str] = {}
    for _value, _spellings in _values.items():
        for _s in (_value, *_spellings):
            _k = _key(_s)
            if _table.get(_k, _value) != _value:  # pragma: no cover - a programming error in the tables
                raise RuntimeError(f"{_column}: spelling {_s!r} maps to two values")
            _table[_k] = _value
    _LOOKUP[_column] = _table
_MISSING_KEYS = {_key(s) for s in MISSING_SPELLINGS} | {"", "na"}


class LabelSpellingError(ValueError):
    """A cell that is no known spelling of its column's values."""

    def __init__(self, column: str, given: str) -> None:
        self.column = column
        self.given = given
        allowed = ", ".join(LABEL_VALUES[column])
        super().__init__(f"unknown {column} value {given!r} (allowed: {allowed} or n/a; "
                         f"common spellings such as yes/no are read too, see docs/coordinator.md)")


def is_missing(raw: str | None) -> bool:
    """True for an empty cell or a spelling of "not known" (``n/a``, ``NA``, ``unknown``...)."""
    return raw is None or _key(str(raw)) in _MISSING_KEYS


def map_label(column: str, raw: str | None, *, report: MappingReport | None = None) -> str | None:
    """The documented value of ``column`` that ``raw`` spells, or None when the cell says "unknown".

    Args:
        column: one of :data:`LABEL_VALUES`.
        raw: the cell as written (any case, spaces, hyphens...).
        report: when given, records ``raw -> value`` if the spelling differs from the value.

    Raises:
        KeyError: ``column`` is not a label column.
        LabelSpellingError: ``raw`` is no known spelling of the column's values.
    """
    if column not in _LOOKUP:
        raise KeyError(f"{column!r} is not a label column ({', '.join(LABEL_VALUES)})")
    if is_missing(raw):
        return None
    given = str(raw).strip()
    key = _key(given)
    if column == "who_grade" and re.fullmatch(r"[1-4](\.0+)?", given):
        key = given[0]
    value = _LOOKUP[column].get(key)
    if value is None:
        raise LabelSpellingError(column, given)
    if report is not None:
        report.add(column, given, value)
    return value


def spellings(column: str) -> dict[str, list[str]]:
    """Every accepted spelling (normalised form) of each value of ``column``, for docs and forms."""
    out: dict[str, list[str]] = {v: [] for v in LABEL_VALUES[column]}
    for k, v in _LOOKUP[column].items():
        out[v].append(k)
    return out


@dataclass
class MappingReport:
    """Which spellings were read as which documented values, with counts.

    Only spellings that differ from the value itself are recorded (``mutant`` read as ``mutant`` is
    not news; ``Yes`` read as ``codeleted`` is).
    """

    counts: Counter = field(default_factory=Counter)

    def add(self, column: str, given: str, value: str) -> None:
        if given != value:
            self.counts[(column, given, value)] += 1

    def to_list(self) -> list[dict]:
        """JSON-safe rows ``{"column", "given", "value", "count"}``, sorted by column then spelling."""
        return [{"column": c, "given": g, "value": v, "count": n}
                for (c, g, v), n in sorted(self.counts.items())]

    def lines(self) -> list[str]:
        """Human-readable lines: ``codeletion_1p19q: 'yes' -> codeleted (3 rows)``."""
        return [f"{r['column']}: {r['given']!r} -> {r['value']} ({r['count']} row{'s' if r['count'] != 1 else ''})"
                for r in self.to_list()]

    def __bool__(self) -> bool:
        return bool(self.counts)


# --- Label tables (the labels import) -------------------------------------------------------------

#: Label columns that belong to the patient (one value per participant) and to the exam (per session).
PATIENT_COLUMNS = ("idh", "codeletion_1p19q", "mgmt", "tertp", "who_type", "who_grade")
EXAM_COLUMNS = ("diagnosis", "diagnosis_basis")

_COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "participant_id": ("participant_id", "participant", "subject", "subject_id", "sub", "patient", "patient_id",
                       "patient_code"),
    "session_id": ("session_id", "session", "ses", "exam", "exam_id", "exam_code", "visit"),
    "idh": ("idh", "idh_status", "idh_mutation", "idh1", "idh1_2", "idh_1_2"),
    "codeletion_1p19q": ("codeletion_1p19q", "1p19q", "1p_19q", "1p19q_codeletion", "codeletion", "1p19q_status",
                         "codel_1p19q"),
    "mgmt": ("mgmt", "mgmt_status", "mgmt_methylation", "mgmt_promoter", "mgmt_promoter_methylation"),
    "tertp": ("tertp", "tert", "tert_promoter", "tertp_status", "tert_status", "tertp_mutation"),
    "who_type": ("who_type", "who_2021_type", "tumour_type", "tumor_type", "type", "histological_type"),
    "who_grade": ("who_grade", "grade", "cns_who_grade", "who_2021_grade"),
    "diagnosis": ("diagnosis", "final_diagnosis", "outcome", "reference_diagnosis", "progression_status"),
    "diagnosis_basis": ("diagnosis_basis", "basis", "diagnosis_method", "reference_standard", "confirmation",
                        "reference"),
}
_COLUMN_LOOKUP = {_SEPARATORS.sub("", a.lower()): c for c, aliases in _COLUMN_ALIASES.items() for a in aliases}


def map_column(header: str) -> str | None:
    """The label column a header names (``1p/19q`` -> ``codeletion_1p19q``), or None if none."""
    return _COLUMN_LOOKUP.get(_SEPARATORS.sub("", header.strip().lower()))


@dataclass(frozen=True)
class LabelRow:
    """One row of a labels table: documented values only, cells that say "unknown" left out.

    Attributes:
        line: line number in the file (the header is line 1).
        participant: participant label without ``sub-``.
        session: session label without ``ses-``, or None.
        values: ``{column: documented value}`` of the cells that hold a value.
    """

    line: int
    participant: str
    session: str | None
    values: dict[str, str]


@dataclass
class LabelsTable:
    """A labels file read and checked, without any database: see :func:`read_labels_table`.

    Attributes:
        rows: the readable rows.
        columns: ``{header as written: label column}`` of the recognised columns.
        ignored_columns: headers that name no label column (kept out, reported).
        mappings: spellings read as documented values.
        problems: every problem found, each naming its line and column.
    """

    rows: list[LabelRow] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    mappings: MappingReport = field(default_factory=MappingReport)
    problems: list[str] = field(default_factory=list)


_BIDS_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def _bids_label(raw: str, prefix: str) -> str | None:
    value = raw.strip()
    if value.lower().startswith(prefix):
        value = value[len(prefix):]
    return value if _BIDS_LABEL.match(value) else None


def read_labels_table(content: bytes | str, *, name: str = "labels.tsv") -> LabelsTable:
    """Read a labels file: header row, then one row per participant (and session).

    The delimiter is a tab (TSV, as BIDS), or ``;`` / ``,`` when the header has no tab (spreadsheet
    exports). Headers are matched to label columns by :func:`map_column`; ``participant_id`` (BIDS
    ``sub-<label>`` or the bare label) is required, ``session_id`` (``ses-<label>`` or bare) is
    required on rows that give ``diagnosis`` or ``diagnosis_basis``. Every cell is read with
    :func:`map_label`; every problem (every row, every column) is collected, none stops the reading.
    """
    out = LabelsTable()
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            out.problems.append(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 TSV")
            return out
    lines = content.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        out.problems.append(f"{name}: the file is empty (a header row then one row per participant)")
        return out
    header_line = lines[0]
    delimiter = "\t" if "\t" in header_line else (";" if ";" in header_line else ",")
    try:
        table = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
    except csv.Error as exc:
        out.problems.append(f"{name}: cannot be read as a table ({exc})")
        return out
    header = [h.strip() for h in table[0]]
    index: dict[str, int] = {}
    for i, h in enumerate(header):
        column = map_column(h)
        if column is None:
            out.ignored_columns.append(h)
        elif column in index:
            out.problems.append(f"{name} line 1: columns {header[index[column]]!r} and {h!r} both give {column}")
        else:
            index[column] = i
            out.columns[h] = column
    if "participant_id" not in index:
        out.problems.append(f"{name} line 1: no participant_id column (BIDS sub-<label>); headers: {header}")
        return out
    if not set(index) & {*PATIENT_COLUMNS, *EXAM_COLUMNS}:
        out.problems.append(
            f"{name} line 1: no label column; expected some of {', '.join((*PATIENT_COLUMNS, *EXAM_COLUMNS))}")
    for n, cells in enumerate(table[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        where = f"{name} line {n}"
        if len(cells) != len(header):
            out.problems.append(f"{where}: {len(cells)} cells for {len(header)} columns")
            continue
        raw_pid = cells[index["participant_id"]]
        participant = _bids_label(raw_pid, "sub-")
        if participant is None:
            out.problems.append(f"{where}, participant_id: {raw_pid!r} is not a BIDS participant (sub-<label>)")
        session = None
        if "session_id" in index and not is_missing(cells[index["session_id"]]):
            raw_ses = cells[index["session_id"]]
            session = _bids_label(raw_ses, "ses-")
            if session is None:
                out.problems.append(f"{where}, session_id: {raw_ses!r} is not a BIDS session (ses-<label>)")
        values: dict[str, str] = {}
        for column, i in index.items():
            if column in ("participant_id", "session_id"):
                continue
            try:
                value = map_label(column, cells[i], report=out.mappings)
            except LabelSpellingError as exc:
                out.problems.append(f"{where}, column {header[i]!r}: {exc}")
                continue
            if value is not None:
                values[column] = value
        exam_values = sorted(set(values) & set(EXAM_COLUMNS))
        if exam_values and session is None and "session_id" not in index:
            out.problems.append(f"{where}: {', '.join(exam_values)} describe an exam: add a session_id column")
        elif exam_values and session is None and is_missing(cells[index["session_id"]]):
            out.problems.append(f"{where}: {', '.join(exam_values)} describe an exam but session_id is empty")
        if participant is not None:
            out.rows.append(LabelRow(line=n, participant=participant, session=session, values=values))
    return out
