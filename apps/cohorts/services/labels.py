"""Labels that arrive after the images: add or correct outcomes on patients and exams already imported.

``labels_import`` reads a TSV keyed by BIDS ``participant_id`` (and ``session_id`` for the exam's
diagnosis and its basis) at one site, with hospital spellings mapped by :mod:`ml.io.labels`. It
checks everything first (every row, every column, the participants and sessions of the site, the
WHO 2021 and diagnosis/basis constraints on the values as they would be stored) and raises one
:class:`LabelsImportError` listing every problem; only then, in the same transaction with the
rows locked, it writes. Each changed patient or exam gets a ``labels.change`` audit event with the
old and new values, and the import a ``labels.import`` summary. An empty cell (or ``n/a``,
``unknown``) leaves the stored value as it is: a labels file adds and corrects, it never erases.
A dry run does all of this but the writing, and returns the same report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from apps.accounts.models import Site
from apps.accounts.permissions import can_manage_site
from apps.audit.services import audit_record
from apps.cohorts.models import Exam, Patient
from ml.io.labels import EXAM_COLUMNS, PATIENT_COLUMNS, LabelRow, read_labels_table

#: Largest labels file accepted (a site's labels are a few kB).
MAX_LABELS_BYTES = 5 * 1024 * 1024


class LabelsImportError(ValueError):
    """A labels file that cannot be applied; ``problems`` lists every reason. Nothing was changed."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.name = name
        self.problems = problems
        listing = "\n  - ".join(problems[:200])
        more = f"\n  ... and {len(problems) - 200} more" if len(problems) > 200 else ""
        super().__init__(f"{name}: {len(problems)} problem(s), nothing changed:\n  - {listing}{more}")


@dataclass
class LabelsImportReport:
    """What a labels import changed (or, for a dry run, would change); ``to_dict()`` is JSON-safe.

    ``changes`` rows: ``{"participant_id", "session_id", "object", "field", "old", "new"}``
    (``old`` is ``""``/None when the value was not known yet).
    """

    site: str
    file: str
    dry_run: bool
    rows: int = 0
    patients_changed: int = 0
    exams_changed: int = 0
    unchanged_rows: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    mappings: list[dict[str, Any]] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)

    def message(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        return (f"{self.file}: {self.rows} rows read; {verb} {self.patients_changed} patients and "
                f"{self.exams_changed} exams ({len(self.changes)} values); {self.unchanged_rows} rows unchanged"
                + (f"; {sum(m['count'] for m in self.mappings)} cells read from hospital spellings"
                   if self.mappings else ""))

    def mapping_lines(self) -> list[str]:
        return [f"{m['column']}: {m['given']!r} -> {m['value']} ({m['count']})" for m in self.mappings]

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"message": self.message()}


def _stored(value: Any) -> Any:
    return value if value not in ("", None) else None


def _coerce(column: str, value: str) -> Any:
    return int(value) if column == "who_grade" else value


def _check_constraints(obj: Patient | Exam, where: str, problems: list[str]) -> None:
    """The model's validation and CHECK constraints on the values as they would be stored."""
    if isinstance(obj, Patient) and obj.codeletion_1p19q == "codeleted" and obj.idh == "wildtype":
        problems.append(f"{where}: 1p/19q codeleted with IDH wildtype is not a WHO 2021 entity "
                        "(oligodendroglioma is IDH-mutant); correct one of them")
        return
    if isinstance(obj, Exam) and obj.diagnosis != "unknown" and obj.diagnosis_basis == "unknown":
        problems.append(f"{where}: diagnosis {obj.diagnosis} needs its diagnosis_basis (histology or follow_up)")
        return
    try:
        obj.full_clean(validate_unique=False)
    except ValidationError as exc:
        problems.append(f"{where}: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in exc.message_dict.items()))


def _plan(rows: list[LabelRow], site: Site, name: str, problems: list[str]):
    """Match rows to the site's patients and exams (locked), and compute every change."""
    codes = {r.participant for r in rows}
    patients = {p.code: p for p in Patient.objects.select_for_update().filter(site=site, code__in=codes)}
    exams = {(e.patient.code, e.code): e for e in
             Exam.objects.select_for_update().filter(patient__in=patients.values()).select_related("patient")}
    patient_new: dict[str, dict[str, tuple[Any, int]]] = {}
    exam_new: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
    for row in rows:
        where = f"{name} line {row.line}"
        patient = patients.get(row.participant)
        if patient is None:
            problems.append(f"{where}: participant sub-{row.participant} is not imported at site {site.name}")
            continue
        if row.session is not None and (row.participant, row.session) not in exams:
            known = sorted(code for (p, code) in exams if p == row.participant)
            problems.append(f"{where}: sub-{row.participant} has no session ses-{row.session} at site {site.name} "
                            f"(it has {', '.join('ses-' + k for k in known) or 'none'})")
            continue
        seen = patient_new.setdefault(row.participant, {})
        for column in PATIENT_COLUMNS:
            if column not in row.values:
                continue
            value = _coerce(column, row.values[column])
            if column in seen and seen[column][0] != value:
                problems.append(f"{where}: {column} {value} contradicts {seen[column][0]} on line {seen[column][1]} "
                                f"for sub-{row.participant}")
            seen.setdefault(column, (value, row.line))
        exam_values = {c: row.values[c] for c in EXAM_COLUMNS if c in row.values}
        if exam_values and row.session is not None:  # without a session: reported by read_labels_table
            key = (row.participant, row.session)
            if key in exam_new:
                problems.append(f"{where}: sub-{row.participant} ses-{row.session} already given on line "
                                f"{exam_new[key][1]}")
                continue
            exam_new[key] = (exam_values, row.line)
    return patients, exams, patient_new, exam_new


def _apply(obj: Patient | Exam, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    changed = {}
    for column, value in values.items():
        old = getattr(obj, column)
        if old != value:
            changed[column] = {"old": _stored(old), "new": value}
            setattr(obj, column, value)
    return changed


def labels_import(
    *,
    site: Site | str,
    content: bytes | str,
    source_name: str = "labels.tsv",
    user=None,
    dry_run: bool = False,
    request=None,
) -> LabelsImportReport:
    """Add or correct labels of already imported patients and exams of ``site`` (module docstring).

    Args:
        site: the site (or its name) whose participants the file names.
        content: the file's bytes (UTF-8 TSV; ``;``/``,`` separated exports are read too).
        source_name: the file's name, for messages and the audit trail.
        user: who imports; ``None`` is the command line. Others must be coordinators of ``site``.
        dry_run: check and report the changes without writing them.
        request: the HTTP request, for the audit trail.

    Raises:
        PermissionError: ``user`` is not a coordinator of ``site``.
        LabelsImportError: listing every problem; nothing was changed.
    """
    site_obj = site if isinstance(site, Site) else Site.objects.filter(name=site).first()
    if site_obj is None:
        raise LabelsImportError(source_name, [f"no site named {site!r}"])
    if user is not None and not can_manage_site(user, site_obj):
        raise PermissionError(f"you are not a coordinator of site {site_obj.name!r}")
    size = len(content.encode() if isinstance(content, str) else content)
    if size > MAX_LABELS_BYTES:
        raise LabelsImportError(source_name, [f"{size} bytes: a labels file is at most {MAX_LABELS_BYTES} bytes"])
    table = read_labels_table(content, name=source_name)
    problems = list(table.problems)
    report = LabelsImportReport(site=site_obj.name, file=source_name, dry_run=dry_run, rows=len(table.rows),
                                mappings=table.mappings.to_list(), columns=table.columns,
                                ignored_columns=table.ignored_columns)
    with transaction.atomic():
        patients, exams, patient_new, exam_new = _plan(table.rows, site_obj, source_name, problems)
        changed: list[tuple[Patient | Exam, dict]] = []
        for code, values in patient_new.items():
            patient = patients[code]
            diff = _apply(patient, {c: v for c, (v, _) in values.items()})
            if diff:
                lines = sorted({line for _, line in values.values()})
                _check_constraints(patient, f"{source_name} line {', '.join(map(str, lines))} (sub-{code})",
                                   problems)
                changed.append((patient, diff))
        for (code, ses), (values, line) in exam_new.items():
            exam = exams[(code, ses)]
            diff = _apply(exam, values)
            if diff:
                _check_constraints(exam, f"{source_name} line {line} (sub-{code} ses-{ses})", problems)
                changed.append((exam, diff))
        if problems:
            raise LabelsImportError(source_name, problems)
        touched = {("p", o.pk) if isinstance(o, Patient) else ("e", o.pk) for o, _ in changed}
        for obj, diff in changed:
            is_patient = isinstance(obj, Patient)
            report.patients_changed += is_patient
            report.exams_changed += not is_patient
            for column, change in diff.items():
                report.changes.append({
                    "participant_id": f"sub-{obj.code if is_patient else obj.patient.code}",
                    "session_id": None if is_patient else f"ses-{obj.code}",
                    "object": "patient" if is_patient else "exam", "field": column, **change,
                })
        report.unchanged_rows = sum(
            1 for r in table.rows
            if ("p", patients[r.participant].pk) not in touched
            and (r.session is None or ("e", exams[(r.participant, r.session)].pk) not in touched)
        )
        if dry_run:
            return report
        for obj, diff in changed:
            obj.save(update_fields=list(diff))
            audit_record(action="labels.change", actor=user, target=obj, site=site_obj, request=request,
                         details={"source": "labels import", "file": source_name, "changes": diff})
        audit_record(action="labels.import", actor=user, target=site_obj, site=site_obj, request=request,
                     details={"file": source_name, "rows": report.rows, "patients_changed": report.patients_changed,
                              "exams_changed": report.exams_changed, "mappings": report.mappings})
    return report
