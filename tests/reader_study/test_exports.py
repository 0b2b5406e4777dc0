"""export_study: the three files, whole or none, audited; the iMRMC file holds the same ratings."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from reader_study.analysis import read_ratings
from reader_study.results import COLUMNS, readings_frame
from reader_study.simulation import readers_simulate
from tests.reader_study.factories import study_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def study():
    study = study_world(n_cases=8, n_readers=3, seed=2)
    readers_simulate(study=study, n_readers=3, seed=4, ai_benefit=0.5)
    return study


def test_csv_imrmc_json_files(study, tmp_path, capsys):
    csv, imrmc, js = tmp_path / "r.csv", tmp_path / "r.imrmc", tmp_path / "r.json"
    call_command("export_study", study.slug, "--format", "csv", "--out", str(csv))
    call_command("export_study", str(study.pk), "--format", "imrmc", "--out", str(imrmc))
    call_command("export_study", study.slug, "--format", "json", "--out", str(js))
    table = pd.read_csv(csv)
    assert list(table.columns) == list(COLUMNS) and len(table) == 8 * 3 * 2
    assert set(table["arm_label"]) == {"Without AI", "With AI"}
    assert table.loc[table["modality"] == "aided", "ai_agreement_label"].isin(
        ["Agree with the AI", "Disagree with the AI", "Unsure"]).all()
    a, b = read_ratings(csv), read_ratings(imrmc)
    order = [b.cases.index(c) for c in a.cases]
    assert a.readers == b.readers and a.modalities == b.modalities
    assert np.allclose(a.ratings, b.ratings[:, :, order]) and (a.truth == b.truth[order]).all()
    doc = json.loads(js.read_text())
    assert doc["n_submitted"] == 48 and len(doc["readings"]) == 48
    assert doc["report"]["performance"]["rows"][0]["reader"] == "R01"
    events = list(AuditEvent.objects.filter(action="study.export").order_by("pk"))
    assert [e.details["format"] for e in events] == ["csv", "imrmc", "json"] and events[0].actor == ""
    # to standard output
    call_command("export_study", study.slug)
    assert capsys.readouterr().out.splitlines()[0] == ",".join(COLUMNS)


def test_the_csv_reads_with_the_mrmc_command(study, tmp_path, capsys):
    csv = tmp_path / "r.csv"
    call_command("export_study", study.slug, "--out", str(csv))
    call_command("mrmc", str(csv), "--threshold", "50", "--fom", "sensitivity", "--json")
    out = json.loads(capsys.readouterr().out)
    frame = readings_frame(study)
    unaided = frame[(frame["modality"] == "unaided") & (frame["truth"] == 1)]
    assert out["modality_means"][0] == pytest.approx(unaided["decision"].mean())


def test_refusals_write_nothing(tmp_path):
    empty = study_world(n_cases=6, n_readers=2)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "r.csv"
    with pytest.raises(CommandError, match="no submitted readings yet"):
        call_command("export_study", empty.slug, "--out", str(out))
    with pytest.raises(CommandError, match="no study 'nope'"):
        call_command("export_study", "nope")
    with pytest.raises(CommandError, match="is not a directory"):
        call_command("export_study", empty.slug, "--out", str(tmp_path / "missing" / "r.csv"))
    readers_simulate(study=empty, n_readers=2, seed=1)
    with pytest.raises(CommandError, match="is not a directory"):  # refused before anything is audited
        call_command("export_study", empty.slug, "--out", str(tmp_path / "missing" / "r.csv"))
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("export_study", empty.slug, "--format", "xlsx")
    assert not list((tmp_path / "out").iterdir())
    assert not AuditEvent.objects.filter(action="study.export").exists()


def test_comments_and_biopsy_targets_in_csv_and_json(study, tmp_path):
    """The reader's comment and biopsy target (scanner mm and common-grid voxel) reach both files:
    the CSV on one line and safe for spreadsheets, the JSON exactly as typed."""
    from reader_study.models import Reading
    from reader_study.services import target_voxel

    readings = list(Reading.objects.filter(reader__study=study, submitted_at__isnull=False).order_by("pk"))
    first, second = readings[0], readings[1]
    target = [12.5, -20.0, 31.0]
    voxel = target_voxel(target)
    Reading.objects.filter(pk=first.pk).update(comment="Hot rim, necrotic core;\nbiopsy the rim",
                                               target_mm=target, target_voxel=voxel)
    Reading.objects.filter(pk=second.pk).update(comment="=HYPERLINK(\"x\")")
    csv, js = tmp_path / "r.csv", tmp_path / "r.json"
    call_command("export_study", study.slug, "--format", "csv", "--out", str(csv))
    call_command("export_study", study.slug, "--format", "json", "--out", str(js))

    table = pd.read_csv(csv, keep_default_na=False)
    assert len(table) == 48 and list(table.columns) == list(COLUMNS)
    key = ["reader", "case", "modality"]

    def row(frame, reading):
        match = ((frame["reader"] == reading.reader.code) & (frame["case"] == reading.case.code)
                 & (frame["modality"] == reading.arm))
        assert match.sum() == 1
        return frame[match].iloc[0]

    r1 = row(table, first)
    assert r1["comment"] == "Hot rim, necrotic core; biopsy the rim"
    assert [float(r1[c]) for c in ("target_x_mm", "target_y_mm", "target_z_mm")] == target
    assert [int(r1[c]) for c in ("target_i", "target_j", "target_k")] == voxel
    assert row(table, second)["comment"] == "'=HYPERLINK(\"x\")"
    others = table.drop(index=table.index[table.set_index(key).index.isin(
        [(r.reader.code, r.case.code, r.arm) for r in (first, second)])])
    assert (others["comment"] == "").all() and (others["target_x_mm"] == "").all() and (others["target_i"] == "").all()

    doc = json.loads(js.read_text())
    assert {"comment", "target_x_mm", "target_i"} <= set(doc["columns"])
    j1 = row(pd.DataFrame(doc["readings"]), first)
    assert j1["comment"] == "Hot rim, necrotic core;\nbiopsy the rim"
    assert [j1["target_x_mm"], j1["target_y_mm"], j1["target_z_mm"]] == target
    assert [j1["target_i"], j1["target_j"], j1["target_k"]] == voxel
    j2 = [r for r in doc["readings"] if (r["reader"], r["case"], r["modality"])
          == (second.reader.code, second.case.code, second.arm)]
    assert len(j2) == 1 and j2[0]["target_x_mm"] is None and j2[0]["target_i"] is None
    # the analysis reads the CSV as before (its columns, comments with commas and quotes included)
    ratings = read_ratings(csv)
    assert len(ratings.readers) == 3 and ratings.ratings.shape[-1] == 8
