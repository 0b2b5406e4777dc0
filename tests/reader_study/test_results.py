"""The results of a study equal ``study_report`` run independently on its exported CSV."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from reader_study.analysis import read_ratings, study_report
from reader_study.exports import study_export
from reader_study.models import Arm, Design, Reading, StudyStatus
from reader_study.results import reading_rating, readings_frame, study_results
from reader_study.simulation import readers_simulate
from tests.reader_study.factories import study_world

pytestmark = pytest.mark.django_db


def assert_same(a, b, path="report"):
    """Every number, string and list of two to_dict() trees equal (floats to 1e-12 relative)."""
    if isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), (path, a, b)
    else:
        assert a == b, (path, a, b)


def _independent_report(study, tmp_path, *, time_column):
    """study_report from the CSV export alone: read_ratings, AI and times from the file's columns."""
    csv = study_export(study=study, format="csv").content
    path = tmp_path / "readings.csv"
    path.write_bytes(csv)
    data = read_ratings(path)
    table = pd.read_csv(io.BytesIO(csv))
    ai = table.groupby("case")["ai_probability"].first().reindex(list(data.cases)).to_numpy()
    times = pd.DataFrame({"reader": table["reader"], "case": table["case"], "arm": table["modality"],
                          "time": np.maximum(table[time_column], 0.1)})
    return study_report(data, unaided="unaided", aided="aided", threshold=table["threshold"].iloc[0],
                        ai_ratings=ai, ai_threshold=study.model_version.threshold, times=times)


@pytest.mark.parametrize("design,scale", [(Design.SEQUENTIAL, "confidence"), (Design.CROSSOVER, "five_point")])
def test_results_equal_study_report_on_the_csv(tmp_path, design, scale):
    study = study_world(n_cases=14, n_readers=4, design=design, rating_scale=scale, seed=12)
    readers_simulate(study=study, n_readers=4, seed=3, ai_benefit=0.8)
    results = study_results(study)
    assert results.time_basis == "active_seconds"
    expected = _independent_report(study, tmp_path, time_column="active_seconds")
    got = results.report
    for part in ("or_auc", "dbm_auc", "ustat_auc", "or_sensitivity", "or_specificity", "agreement",
                 "decision_changes", "standalone", "reading_time", "performance"):
        assert getattr(got, part) is not None, part
    assert_same(got.to_dict(), expected.to_dict())
    assert results.label == "interim: 112 of 112 readings"


def test_decisions_are_the_readers_own():
    """Se/Sp of the report are those of the stored decisions, not of a cut on the score."""
    study = study_world(n_cases=10, n_readers=3, seed=1)
    readers_simulate(study=study, n_readers=3, seed=2)
    # a reader who answers "positive" at the midpoint, and one "negative" at the midpoint
    pos, neg = Reading.objects.filter(reader__study=study, arm=Arm.UNAIDED, reader__code="R01")[:2]
    Reading.objects.filter(pk=pos.pk).update(confidence=50, decision=True)
    Reading.objects.filter(pk=neg.pk).update(confidence=50, decision=False)
    results = study_results(study)
    frame = results.frame
    for row in results.report.performance.rows:
        if row.reader == "AI":
            continue
        sub = frame[(frame["reader"] == row.reader) & (frame["modality"] == row.modality)]
        tp = int(((sub["decision"] == 1) & (sub["truth"] == 1)).sum())
        assert row.tp == tp and row.sensitivity == tp / int((sub["truth"] == 1).sum())
    assert reading_rating(rating_scale="confidence", decision=True, confidence=50, scale=None) == 50.5
    assert reading_rating(rating_scale="confidence", decision=False, confidence=50, scale=None) == 49.5
    assert reading_rating(rating_scale="five_point", decision=True, confidence=None, scale=3) == 3.25
    with pytest.raises(ValueError, match="needs its score"):
        reading_rating(rating_scale="five_point", decision=True, confidence=70, scale=None)


def test_interim_split_plot_and_final():
    study = study_world(n_cases=12, n_readers=4, split_plot=True, cases_per_reader=6, seed=4)
    readers_simulate(study=study, n_readers=4, seed=5, ai_benefit=0.5)
    # take back the last reader's aided answers: an interim state
    last = Reading.objects.filter(reader__study=study, reader__code="R04", arm=Arm.AIDED)
    n_removed = last.count()
    last.delete()
    results = study_results(study)
    assert results.n_expected == 4 * 6 * 2 and results.n_submitted == 48 - n_removed
    assert results.label == f"interim: {48 - n_removed} of 48 readings"
    rep = results.report
    assert rep.or_auc is None and rep.ustat_auc is not None  # split-plot: the U-statistic analysis
    assert any("incomplete design" in n for n in results.notes)
    assert not results.final
    study.status = StudyStatus.CLOSED
    study.save()
    assert study_results(study).label == "final"


def test_early_interim_leaves_out_readers_without_both_classes():
    study = study_world(n_cases=8, n_readers=3, seed=4)
    readers_simulate(study=study, n_readers=3, seed=5)
    keep_one = Reading.objects.filter(reader__code="R02", reader__study=study).order_by("case__code").first()
    Reading.objects.filter(reader__code="R02", reader__study=study).exclude(pk=keep_one.pk).delete()
    results = study_results(study)
    assert results.report is not None
    assert "R02" not in results.report.ustat_auc.readers
    assert any("reader R02" in n and "left out" in n for n in results.notes)


def test_no_readings_yet():
    study = study_world(n_cases=6, n_readers=2)
    results = study_results(study)
    assert results.report is None and results.n_submitted == 0 and results.n_expected == 24
    assert "no submitted readings yet" in results.notes


def test_one_reader_is_not_enough_for_mrmc():
    study = study_world(n_cases=8, n_readers=1, seed=4)
    readers_simulate(study=study, n_readers=1, seed=5)
    results = study_results(study)
    assert results.report is None and results.n_submitted == 16
    assert any("at least 2 readers" in n for n in results.notes)


def test_acceptability_summaries_match_the_readings():
    study = study_world(n_cases=10, n_readers=3, seed=2)
    study.questionnaire = {"sus": True, "trust_items": ["I trust the AI.", "I would use it."]}
    study.save()
    readers_simulate(study=study, n_readers=3, seed=8, ai_benefit=0.5)
    acc = study_results(study).acceptability
    frame = readings_frame(study)
    aided = frame[frame["modality"] == "aided"]
    r1 = aided[aided["reader"] == "R01"]
    assert acc["per_reader"]["R01"]["agree"] == int((r1["ai_agreement"] == "agree").sum())
    assert acc["overall"]["n"] == len(aided)
    assert acc["overall"]["usefulness"]["mean"] == pytest.approx(aided["explanation_usefulness"].astype(float).mean())
    assert acc["overall"]["same_decision_as_ai_pct"] == pytest.approx(
        100 * (aided["decision"] == aided["ai_decision"]).mean())
    sus = list(study.readers.values_list("questionnaire__sus_score", flat=True))
    assert acc["sus"]["n"] == 3 and acc["sus"]["mean"] == pytest.approx(np.mean(sus))
    assert acc["sus"]["sd"] == pytest.approx(np.std(sus, ddof=1))
    assert [t["item"] for t in acc["trust_items"]] == ["I trust the AI.", "I would use it."]


def test_crossover_interim_after_the_first_session():
    """Half-way through a crossover each reader has read one arm only: the U-statistic analysis runs."""
    study = study_world(n_cases=10, n_readers=4, design=Design.CROSSOVER, seed=9)
    readers_simulate(study=study, n_readers=4, seed=3, ai_benefit=1.0)
    Reading.objects.filter(reader__study=study, assignment__session__number=2).delete()
    results = study_results(study)
    assert results.label == "interim: 40 of 80 readings"
    rep = results.report
    assert rep is not None and rep.or_auc is None and rep.agreement is None
    assert set(rep.ustat_auc.modalities) == {"unaided", "aided"}
    assert np.isnan(rep.ustat_auc.reader_auc).sum() == 4  # each reader read one arm


def test_a_study_without_ai_output():
    study = study_world(n_cases=8, n_readers=3, seed=2, with_model=False)
    readers_simulate(study=study, n_readers=3, seed=3)
    results = study_results(study)
    assert results.report.or_auc is not None and results.report.standalone is None
    assert any("no AI probability" in n for n in results.notes)
    assert results.frame["ai_probability"].isna().all()
    assert results.acceptability["overall"]["same_decision_as_ai_pct"] is None


def test_a_singular_time_model_does_not_take_the_results_down(monkeypatch):
    import reader_study.analysis.report as report_module

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    study = study_world(n_cases=8, n_readers=3, seed=2)
    readers_simulate(study=study, n_readers=3, seed=3)
    monkeypatch.setattr(report_module, "reading_time_model", singular)
    results = study_results(study)
    assert results.report.or_auc is not None and results.report.reading_time is None
    assert any("reading-time model not estimable yet (LinAlgError" in n for n in results.notes)
