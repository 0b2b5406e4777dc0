"""File formats (long CSV, iMRMC, .lrc), malformed input, the mrmc command, results and plots."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from matplotlib.figure import Figure

from reader_study.analysis import (
    dbm_analysis,
    or_analysis,
    read_ratings,
    ustat_analysis,
    write_imrmc,
    write_long_csv,
    write_lrc,
)
from reader_study.analysis.plots import plot_forest, plot_roc

from .published import FIXTURES

HEADER = "reader,case,modality,truth,rating\n"


@pytest.mark.parametrize("name", ["vandyke_long.csv", "vandyke.imrmc", "vandyke.lrc"])
def test_three_formats_give_the_same_study(name: str) -> None:
    ref = read_ratings(FIXTURES / "vandyke_long.csv")
    data = read_ratings(FIXTURES / name)
    assert (data.n_modalities, data.n_readers, data.n_negative, data.n_positive) == (2, 5, 69, 45)
    np.testing.assert_allclose(or_analysis(data).fom_values, or_analysis(ref).fom_values, rtol=1e-12)


@pytest.mark.parametrize("writer", [write_long_csv, write_imrmc, write_lrc])
def test_round_trip(writer, tmp_path: Path) -> None:
    data = read_ratings(FIXTURES / "franken_long.csv")
    ext = {write_long_csv: "csv", write_imrmc: "imrmc", write_lrc: "lrc"}[writer]
    path = writer(data, tmp_path / f"out.{ext}")
    back = read_ratings(path)
    assert back.modalities == data.modalities and back.readers == data.readers
    np.testing.assert_allclose(np.sort(back.ratings, axis=2), np.sort(data.ratings, axis=2))
    assert or_analysis(back).rrrc.global_test.statistic == pytest.approx(
        or_analysis(data).rrrc.global_test.statistic, rel=1e-9)


def _write(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(("text", "message"), [
    (HEADER + "r1,c1,A,,2\nr1,c2,A,1,3\n", "missing truth in row\\(s\\) 1"),
    (HEADER + "r1,c1,A,0,2\nr1,c2,A,2,3\n", "truth must be 0 or 1, found \\['2'\\]"),
    (HEADER + "r1,c1,A,0,nan\nr1,c2,A,1,3\n", "missing or non-numeric rating in row\\(s\\) 1"),
    (HEADER + "r1,c1,A,0,1\nr1,c1,A,0,2\nr1,c2,A,1,3\n", "repeated in row\\(s\\) 1, 2"),
    (HEADER + "r1,c1,A,0,1\nr2,c1,A,1,2\nr1,c2,A,1,3\n", "conflicting truth"),
    ("reader,case,truth,rating\nr1,c1,0,1\n", "missing column\\(s\\) \\['modality'\\]"),
    (HEADER + "r1,c1,A,0,1\nr1,c2,A,0,3\n", "diseased"),
])
def test_malformed_long_csv(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        read_ratings(_write(tmp_path, text))
    assert "bad.csv" in str(err.value)


def test_imbalance_is_reported_by_the_analyses(tmp_path: Path) -> None:
    text = HEADER + "".join(f"{r},c{k},{m},{int(k > 2)},{k}\n" for r in ("r1", "r2") for m in ("A", "B")
                            for k in range(1, 6) if not (r == "r2" and m == "B" and k == 5))
    data = read_ratings(_write(tmp_path, text))
    assert data.imbalance().loc["r2", "B"] == 4
    with pytest.raises(ValueError, match="1 readings are missing .*reader 'r2', case 'c5', modality 'B'.*r2/B: 4"):
        or_analysis(data)
    assert np.isfinite(ustat_analysis(data).modality[0].auc)


@pytest.mark.parametrize(("text", "message"), [
    ("x\nBEGIN DATA:\ntruth,1,truth,0\nr1,1,A,1\nr1,2,A,2\n", "missing truth for case\\(s\\) \\['2'\\]"),
    ("x\nBEGIN DATA:\ntruth,1,truth,3\n", "truth must be 0 or 1"),
    ("x\nr1,1,A,1\n", "no 'BEGIN DATA:'"),
    ("x\nBEGIN DATA:\ntruth,1,truth,0\nr1,1,A\n", "line 4: expected readerID"),
])
def test_malformed_imrmc(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_ratings(_write(tmp_path, text, "bad.imrmc"))


def test_malformed_lrc(tmp_path: Path) -> None:
    good = (FIXTURES / "vandyke.lrc").read_text().splitlines()
    bad = good[:10] + ["   1.0   x   Normal Case"] + good[11:]
    with pytest.raises(ValueError, match="line 11: expected 2 numeric ratings"):
        read_ratings(_write(tmp_path, "\n".join(bad), "bad.lrc"))
    with pytest.raises(ValueError, match="missing '\\*'"):
        read_ratings(_write(tmp_path, "\n".join(good[:30]), "short.lrc"))


# -------------------------------------------------------------------- CLI
def _run(*args: str) -> str:
    out = StringIO()
    call_command("mrmc", *args, stdout=out)
    return out.getvalue()


def test_cli_summary_and_json() -> None:
    text = _run(str(FIXTURES / "vandyke.lrc"))
    assert "Obuchowski-Rockette" in text and "15.26" in text and "RRFC" in text
    payload = json.loads(_run(str(FIXTURES / "vandyke_long.csv"), "--json", "--cov", "unbiased"))
    assert payload["method"] == "OR" and payload["cov_method"] == "unbiased"
    assert payload["rrrc"]["global_test"]["df_den"] == pytest.approx(15.03418, abs=5e-6)  # MRMCaov
    payload = json.loads(_run(str(FIXTURES / "vandyke.imrmc"), "--method", "dbm", "--json"))
    assert payload["ms"]["T"] == pytest.approx(0.54676316, rel=1e-6)
    text = _run(str(FIXTURES / "imrmc_example.imrmc"), "--method", "ustat")
    assert "0.704375" in text
    text = _run(str(FIXTURES / "vandyke_long.csv"), "--fom", "sensitivity", "--threshold", "3")
    assert "FOM: sensitivity" in text


def test_cli_errors(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="file not found"):
        _run(str(tmp_path / "nope.csv"))
    with pytest.raises(CommandError, match="truth must be 0 or 1"):
        _run(str(_write(tmp_path, HEADER + "r1,c1,A,0,2\nr1,c2,A,2,3\n")))
    with pytest.raises(CommandError, match="threshold"):
        _run(str(FIXTURES / "vandyke_long.csv"), "--fom", "specificity")


# -------------------------------------------------------- results and plots
def test_results_are_frozen_and_json_serialisable() -> None:
    data = read_ratings(FIXTURES / "fedroc_long.csv")
    for res in (or_analysis(data), dbm_analysis(data), ustat_analysis(data)):
        text = json.dumps(res.to_dict())
        assert "Infinity" not in text and "NaN" not in text
        assert len(res.summary().splitlines()) > 20
        with pytest.raises(AttributeError):
            res.alpha = 0.1  # type: ignore[misc]


def test_plots_return_figures() -> None:
    data = read_ratings(FIXTURES / "vandyke_long.csv")
    fig = plot_roc(data)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * 5 + 2 + 1  # reader curves, two averages, chance line
    assert [t.get_text() for t in ax.get_legend().get_texts()][0].startswith("0 (mean AUC 0.897")
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"
    ai = data.ratings[1].mean(axis=0)
    assert len(plot_roc(data, ai_ratings=ai, readers=False).axes[0].lines) == 2 + 1 + 1
    fig = plot_forest(or_analysis(data), a="0", b="1")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["0", "1", "2", "3", "4", "mean (RRRC)"]
    fig.savefig(StringIO(), format="svg")


def test_single_modality_study_gives_single_modality_intervals() -> None:
    data = read_ratings(FIXTURES / "vandyke_long.csv").select(modalities=["1"])
    o, d = or_analysis(data), dbm_analysis(data)
    assert o.rrrc.differences == () and "not applicable" in o.summary()
    # same interval as the single-treatment part (c) of the two-modality Iowa output
    assert o.rrrc.modality_cis[0].se == pytest.approx(0.02156637, abs=5e-9)
    assert o.rrrc.modality_cis[0].df == pytest.approx(12.71, abs=5e-3)
    assert d.rrrc.modality_cis[0].se == pytest.approx(o.rrrc.modality_cis[0].se, rel=1e-9)
    json.dumps(o.to_dict())


def test_study_report_bundles_every_analysis() -> None:
    import pandas as pd

    from reader_study.analysis import study_report

    data = read_ratings(FIXTURES / "vandyke_long.csv")
    ai = data.ratings[1].mean(axis=0)
    rng = np.random.default_rng(0)
    reader_effect = dict(zip(data.readers, rng.normal(0, 0.3, 5)))
    case_effect = dict(zip(data.cases, rng.normal(0, 0.4, 114)))
    times = pd.DataFrame([(r, c, m, float(np.exp(4 - 0.2 * (m == "1") + reader_effect[r] + case_effect[c]
                                                 + rng.normal(0, 0.2))))
                          for r in data.readers for c in data.cases[:30] for m in data.modalities],
                         columns=["reader", "case", "arm", "time"])
    rep = study_report(data, unaided="0", aided="1", threshold=3, ai_ratings=ai, times=times)
    assert rep.or_auc.rrrc.global_test.p_value == pytest.approx(0.05166569, rel=1e-6)  # MRMCaov
    assert rep.or_sensitivity.fom == "sensitivity" and rep.standalone is not None
    assert rep.decision_changes.overall.n_cases == 5 * 114
    assert rep.reading_time.effects[0].ratio < 1
    assert rep.notes == ()
    payload = json.loads(json.dumps(rep.to_dict()))
    assert set(payload) >= {"performance", "or_auc", "dbm_auc", "ustat_auc", "agreement", "reading_time"}
    assert "Decision changes" in rep.summary()
    # split-plot: the report falls back to the U-statistic analysis and says why
    ratings = data.ratings.copy()
    ratings[:, 0, :10] = np.nan
    from reader_study.analysis import ReaderStudyData

    sp = ReaderStudyData(ratings=ratings, truth=data.truth, modalities=data.modalities,
                         readers=data.readers, cases=data.cases)
    rep = study_report(sp, threshold=3)
    assert rep.or_auc is None and rep.ustat_auc is not None and "incomplete design" in rep.notes[0]


def test_roc_curves_json() -> None:
    from reader_study.analysis.fom import roc_curves

    data = read_ratings(FIXTURES / "vandyke_long.csv")
    curves = json.loads(json.dumps(roc_curves(data, ai_ratings=data.ratings[0].mean(axis=0))))
    assert set(curves) == {"0", "1", "AI"}
    assert curves["0"]["readers"]["0"]["auc"] == pytest.approx(0.91964573, abs=5e-9)
    assert curves["1"]["average"]["mean_auc"] == pytest.approx(0.94083736, abs=5e-9)
    assert curves["0"]["average"]["fpf"][0] == 0.0 and curves["0"]["average"]["tpf"][-1] == 1.0
