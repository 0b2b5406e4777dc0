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
