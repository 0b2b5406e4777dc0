"""Labels that arrive after the images, on a generated cohort imported without its labels.

The generator's participants.tsv / sessions.tsv hold the truth; the fixture blanks them, imports
the images of one site, and the tests bring the labels back the way hospitals write them.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.cohorts.models import Exam, Patient
from apps.cohorts.services.bids import bids_import
from apps.cohorts.services.labels import LabelsImportError, labels_import
from tests.factories import SiteFactory, user_with

pytestmark = pytest.mark.django_db

SITE = "nancy"
PATIENT_COLS = ("idh", "codeletion_1p19q", "mgmt", "tertp", "who_grade", "who_type")

# How a hospital writes each documented value (the spellings of the issue).
HOSPITAL = {
    "idh": {"mutant": "Mut", "wildtype": "WT"},
    "codeletion_1p19q": {"codeleted": "yes", "intact": "no"},
    "mgmt": {"methylated": "positive", "unmethylated": "Negative"},
    "tertp": {"mutant": "1", "wildtype": "0"},
    "who_grade": {"1": "I", "2": "II", "3": "III", "4": "IV"},
    "who_type": {"astrocytoma": "Astro", "oligodendroglioma": "Oligo", "glioblastoma": "GBM", "other": "other"},
    "diagnosis": {"progression": "PD", "treatment_related": "Radionecrosis"},
    "diagnosis_basis": {"histology": "Biopsy", "follow_up": "Follow-up"},
}


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def unlabelled(bids_copy) -> dict:
    """The generated cohort's site ``nancy`` imported with every label blanked; returns the truth."""
    participants = _read(bids_copy / "participants.tsv")
    truth = {"patients": {}, "exams": {}}
    for row in participants:
        if row["site"] == SITE:
            truth["patients"][row["participant_id"]] = {c: row[c] for c in PATIENT_COLS}
        for c in PATIENT_COLS:
            row[c] = "n/a"
    _write(bids_copy / "participants.tsv", participants)
    for tsv in bids_copy.glob("sub-*/sub-*_sessions.tsv"):
        sessions = _read(tsv)
        for row in sessions:
            if tsv.name.startswith(tuple(truth["patients"])):
                truth["exams"][(tsv.parent.name, row["session_id"])] = {
                    "diagnosis": row["diagnosis"], "diagnosis_basis": row["diagnosis_basis"]}
            row["diagnosis"] = row["diagnosis_basis"] = "n/a"
        _write(tsv, sessions)
    # Labels need no images beyond the static PET and T1c with their masks: keep the import fast.
    for pattern in ("*_rec-acdyn_pet.*", "*_T2w.*", "*_FLAIR.*"):
        for path in bids_copy.glob(f"sub-*/ses-*/*/{pattern}"):
            path.unlink()
    for path in bids_copy.glob("sub-*/ses-*/anat/*_T1w.*"):
        if "_ce-" not in path.name:
            path.unlink()
    for path in bids_copy.glob("derivatives/*/sub-*/ses-*/anat/*"):
        path.unlink()
    bids_import(path=bids_copy, site_name=SITE)
    assert not Patient.objects.exclude(idh="").exists()
    assert set(Exam.objects.values_list("diagnosis", flat=True)) == {"unknown"}
    return truth


def _hospital_tsv(truth: dict) -> str:
    """The truth as a hospital sends it: its own headers and spellings, one row per session."""
    header = ["Patient", "Visit", "IDH status", "1p/19q", "MGMT promoter", "TERT", "Grade", "Type",
              "Outcome", "Reference standard", "Notes"]
    lines = ["\t".join(header)]
    for (sub, ses), exam in sorted(truth["exams"].items()):
        p = truth["patients"][sub]
        cells = [sub, ses.removeprefix("ses-")]
        for c in PATIENT_COLS:
            cells.append(HOSPITAL[c].get(p[c], p[c]))  # n/a stays n/a
        for c in ("diagnosis", "diagnosis_basis"):
            cells.append(HOSPITAL[c].get(exam[c], exam[c]))
        cells.append("entered by the tumour board")
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def _snapshot() -> list:
    return [list(Patient.objects.order_by("pk").values_list(*PATIENT_COLS)),
            list(Exam.objects.order_by("pk").values_list("diagnosis", "diagnosis_basis"))]


def test_hospital_spellings_bring_back_the_truth(unlabelled):
    truth = unlabelled
    coordinator = user_with("coordinator", Patient.objects.first().site)
    report = labels_import(site=SITE, content=_hospital_tsv(truth), source_name="board.tsv", user=coordinator)
    for sub, labels in truth["patients"].items():
        p = Patient.objects.get(site__name=SITE, code=sub.removeprefix("sub-"))
        for c in PATIENT_COLS:
            expected = "" if labels[c] == "n/a" else labels[c]
            assert str(getattr(p, c) or "") == expected, (sub, c)
    for (sub, ses), labels in truth["exams"].items():
        e = Exam.objects.get(patient__code=sub.removeprefix("sub-"), code=ses.removeprefix("ses-"))
        assert e.diagnosis == ("unknown" if labels["diagnosis"] == "n/a" else labels["diagnosis"])
        assert e.diagnosis_basis == ("unknown" if labels["diagnosis_basis"] == "n/a" else labels["diagnosis_basis"])
    # The mapping is reported: which spelling became which value, how often.
    read = {(m["column"], m["given"]): (m["value"], m["count"]) for m in report.mappings}
    idh_values = [p["idh"] for p in truth["patients"].values()]
    if "wildtype" in idh_values:
        assert read[("idh", "WT")] == ("wildtype", 2 * idh_values.count("wildtype"))  # two sessions each
    for grade in {p["who_grade"] for p in truth["patients"].values()} - {"n/a"}:
        assert read[("who_grade", HOSPITAL["who_grade"][grade])][0] == grade
    assert {("diagnosis", "PD"), ("diagnosis", "Radionecrosis")} & set(read)
    assert report.columns["1p/19q"] == "codeletion_1p19q" and report.columns["Outcome"] == "diagnosis"
    assert report.ignored_columns == ["Notes"]
    # Who changed what: one event per changed object with old and new values, and a summary.
    changes = AuditEvent.objects.filter(action="labels.change")
    assert changes.count() == report.patients_changed + report.exams_changed == len(truth["patients"]) + sum(
        1 for v in truth["exams"].values() if v["diagnosis"] != "n/a")
    event = changes.get(object_type="cohorts.patient", object_id=str(
        Patient.objects.get(code=next(iter(truth["patients"])).removeprefix("sub-")).pk))
    assert event.actor == coordinator.username
    assert event.details["changes"]["idh"]["old"] is None
    assert event.details["changes"]["idh"]["new"] == next(iter(truth["patients"].values()))["idh"]
    summary = AuditEvent.objects.get(action="labels.import")
    assert summary.details["file"] == "board.tsv" and summary.details["mappings"] == report.mappings
    # The same file again changes nothing and records no change.
    again = labels_import(site=SITE, content=_hospital_tsv(truth), source_name="board.tsv")
    assert again.changes == [] and again.unchanged_rows == again.rows
    assert AuditEvent.objects.filter(action="labels.change").count() == changes.count()


def test_a_correction_is_recorded_with_old_and_new(unlabelled):
    labels_import(site=SITE, content=_hospital_tsv(unlabelled), source_name="first.tsv")
    sub, ses = next((k for k, v in unlabelled["exams"].items() if v["diagnosis"] != "n/a"))
    exam = Exam.objects.get(patient__code=sub[4:], code=ses[4:])
    old = exam.diagnosis
    new = "treatment_related" if old == "progression" else "progression"
    spelled = {"progression": "Recurrence", "treatment_related": "pseudoprogression"}[new]
    report = labels_import(site=SITE, content=f"participant_id\tsession_id\tdiagnosis\n{sub}\t{ses}\t{spelled}\n",
                           source_name="correction.tsv")
    exam.refresh_from_db()
    assert exam.diagnosis == new and report.exams_changed == 1 and report.patients_changed == 0
    event = AuditEvent.objects.filter(action="labels.change", object_id=str(exam.pk)).latest("pk")
    assert event.details["changes"] == {"diagnosis": {"old": old, "new": new}}
    assert event.details["file"] == "correction.tsv"


def test_every_problem_is_listed_and_nothing_changes(unlabelled):
    subs = sorted(unlabelled["patients"])
    before = _snapshot()
    tsv = "\n".join([
        "participant_id\tsession_id\tidh\tcodeletion_1p19q\tmgmt\tdiagnosis\tdiagnosis_basis",
        f"{subs[0]}\tses-01\tmaybe\tyes\tpositive\tn/a\tn/a",  # 2: unreadable idh
        f"{subs[0]}\tses-02\tWT\tyes\tsometimes\tPD\tbiopsy",  # 3: unreadable mgmt; codeleted + wildtype
        f"{subs[1]}\tses-07\tmut\tno\tneg\tn/a\tn/a",  # 4: no such session
        "sub-NOBODY\tses-01\tmut\tno\tneg\tn/a\tn/a",  # 5: not imported at this site
        f"{subs[1]}\tses-02\twildtype\tno\tneg\tTRC\t",  # 6: a diagnosis without its basis
        f"{subs[1]}\t\tmut\tno\tneg\tprogression\thistology",  # 7: diagnosis without session; idh contradicts 6
        "",
    ])
    with pytest.raises(LabelsImportError) as info:
        labels_import(site=SITE, content=tsv, source_name="bad.tsv")
    problems = info.value.problems
    text = "\n".join(problems)
    assert "line 2, column 'idh': unknown idh value 'maybe'" in text
    assert "line 3, column 'mgmt': unknown mgmt value 'sometimes'" in text
    assert f"line 4: {subs[1]} has no session ses-07" in text
    assert "line 5: participant sub-NOBODY is not imported at site nancy" in text
    assert "line 7: diagnosis, diagnosis_basis describe an exam but session_id is empty" in text
    assert f"line 7: idh mutant contradicts wildtype on line 6 for {subs[1]}" in text
    assert "1p/19q codeleted with IDH wildtype" in text  # subs[0]: WT + yes (line 3)
    # An exam's diagnosis without a basis (line 6, stored basis unknown).
    assert "diagnosis treatment_related needs its diagnosis_basis" in text
    assert len(problems) == 8, text
    assert _snapshot() == before
    assert not AuditEvent.objects.filter(action__startswith="labels.").exists()


def test_the_write_is_all_or_nothing(unlabelled, monkeypatch):
    before = _snapshot()
    real = Exam.save
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("database went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Exam, "save", flaky)
    with pytest.raises(RuntimeError):
        labels_import(site=SITE, content=_hospital_tsv(unlabelled), source_name="board.tsv")
    assert calls["n"] == 2  # the patients and the first exam were written, then rolled back
    assert _snapshot() == before
    assert not AuditEvent.objects.filter(action__startswith="labels.").exists()


def test_dry_run_reports_and_writes_nothing(unlabelled):
    before = _snapshot()
    report = labels_import(site=SITE, content=_hospital_tsv(unlabelled), dry_run=True)
    assert report.dry_run and report.changes and report.patients_changed == len(unlabelled["patients"])
    assert _snapshot() == before
    assert not AuditEvent.objects.filter(action__startswith="labels.").exists()


def test_only_coordinators_of_the_site(unlabelled):
    other = user_with(None)
    elsewhere = user_with("coordinator", SiteFactory(name="elsewhere"))
    researcher = user_with("researcher", Patient.objects.first().site)
    for user in (other, elsewhere, researcher):
        with pytest.raises(PermissionError):
            labels_import(site=SITE, content=_hospital_tsv(unlabelled), user=user)


def test_command(unlabelled, tmp_path, capsys):
    good = tmp_path / "labels.tsv"
    good.write_text(_hospital_tsv(unlabelled))
    call_command("import_labels", str(good), "--site", SITE, "--dry-run")
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "read idh: 'WT' -> wildtype (4)" in out
    assert not Patient.objects.exclude(idh="").exists()
    call_command("import_labels", str(good), "--site", SITE)
    assert not Patient.objects.filter(site__name=SITE, idh="").exists()
    bad = tmp_path / "bad.tsv"
    bad.write_text("participant_id\tidh\tmgmt\nsub-X\tmaybe\tsometimes\n")
    with pytest.raises(CommandError) as info:
        call_command("import_labels", str(bad), "--site", SITE)
    assert "3 problem(s)" in str(info.value) and "maybe" in str(info.value) and "sometimes" in str(info.value)
    with pytest.raises(CommandError, match="no site named 'nowhere'"):
        call_command("import_labels", str(good), "--site", "nowhere")


def test_upload_page_previews_then_applies(unlabelled, client):
    site = Patient.objects.first().site
    client.force_login(user_with("coordinator", site))
    url = reverse("cohorts:import-labels")
    assert client.get(url).status_code == 200
    upload = SimpleUploadedFile("board.tsv", _hospital_tsv(unlabelled).encode())
    page = client.post(url, {"file": upload, "site": SITE})
    html = page.content.decode()
    assert page.status_code == 200 and "Preview of board.tsv" in html and "Changes to be made" in html
    assert "<code>WT</code>" in html or "<code>Mut</code>" in html
    assert not Patient.objects.exclude(idh="").exists()
    content = page.context["confirm_form"].initial["content"]
    done = client.post(url, {"site": SITE, "content": content, "source_name": "board.tsv", "confirm": "True"})
    assert "Applied board.tsv" in done.content.decode()
    assert not Patient.objects.filter(site=site, idh="").exists()
    bad = SimpleUploadedFile("bad.tsv", b"participant_id\tidh\nsub-X\tmaybe\n")
    page = client.post(url, {"file": bad, "site": SITE})
    assert "2 problems in bad.tsv: nothing was changed" in page.content.decode()


def test_api(unlabelled, client):
    site = Patient.objects.first().site
    client.force_login(user_with("coordinator", site))
    url = reverse("api:import-labels")
    r = client.post(url, {"file": SimpleUploadedFile("l.tsv", _hospital_tsv(unlabelled).encode()), "site": SITE,
                          "dry_run": "true"})
    assert r.status_code == 200 and r.json()["dry_run"] and r.json()["changes"]
    assert not Patient.objects.exclude(idh="").exists()
    r = client.post(url, {"file": SimpleUploadedFile("l.tsv", _hospital_tsv(unlabelled).encode()), "site": SITE})
    assert r.status_code == 200 and r.json()["patients_changed"] == len(unlabelled["patients"])
    r = client.post(url, {"file": SimpleUploadedFile("l.tsv", b"participant_id\tidh\nsub-X\tmaybe\n"), "site": SITE})
    assert r.status_code == 400 and len(r.json()["problems"]) == 2
    client.force_login(user_with("coordinator", SiteFactory(name="elsewhere")))
    r = client.post(url, {"file": SimpleUploadedFile("l.tsv", _hospital_tsv(unlabelled).encode()), "site": SITE})
    assert r.status_code == 403


def test_bids_import_reads_hospital_spellings(one_subject):
    tsv = one_subject / "participants.tsv"
    rows = _read(tsv)
    rows[0]["idh"], rows[0]["codeletion_1p19q"], rows[0]["mgmt"] = "Mut", "yes", "Positive"
    _write(tsv, rows)
    report = bids_import(path=one_subject)
    p = Patient.objects.get()
    assert (p.idh, p.codeletion_1p19q, p.mgmt) == ("mutant", "codeleted", "methylated")
    assert {(m["column"], m["given"], m["value"]) for m in report.label_mappings} >= {
        ("idh", "Mut", "mutant"), ("codeletion_1p19q", "yes", "codeleted"), ("mgmt", "Positive", "methylated")}


def test_bids_import_error_lists_every_session(one_subject, settings):
    from ml.io.bids import BidsError

    flairs = sorted(one_subject.glob("sub-*/ses-*/anat/*_FLAIR.nii.gz"))
    assert len(flairs) == 2
    for path in flairs:
        path.write_bytes(path.read_bytes()[:200])  # truncated gzip in both sessions
    with pytest.raises(BidsError) as info:
        bids_import(path=one_subject)
    assert len(info.value.problems) == 2
    assert all(any(p.name in problem for problem in info.value.problems) for p in flairs)
    assert not Patient.objects.exists() and not Exam.objects.exists()
