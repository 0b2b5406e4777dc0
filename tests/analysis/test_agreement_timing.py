"""Agreement (Fleiss, Cohen), decision changes and the reading-time mixed model."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

from reader_study.analysis import (
    ReaderStudyData,
    agreement,
    cohen_kappa,
    decision_changes,
    fleiss_kappa,
    read_ratings,
    reading_time_model,
)

from .published import FIXTURES


@functools.cache
def vandyke() -> ReaderStudyData:
    return read_ratings(FIXTURES / "vandyke_long.csv")


@pytest.mark.parametrize("threshold", [None, 3.0])
def test_fleiss_and_cohen_match_statsmodels_and_sklearn(threshold) -> None:
    data = vandyke()
    res = agreement(data, threshold=threshold)
    for t in range(2):
        cats = data.ratings[t] if threshold is None else (data.ratings[t] >= threshold).astype(float)
        table, _ = aggregate_raters(cats.T)
        assert res.fleiss[t] == pytest.approx(sm_fleiss(table, method="fleiss"), rel=1e-10)
        for a in range(5):
            for b in range(a + 1, 5):
                assert res.cohen[t][a, b] == pytest.approx(cohen_kappa_score(cats[a], cats[b]), rel=1e-10)
    assert all(0 < p < 1e-6 for p in res.fleiss_p)  # readers agree far beyond chance
    json.dumps(res.to_dict())
    assert "Fleiss" in res.summary()


def test_kappa_limits_perfect_and_chance_agreement() -> None:
    """Perfect agreement gives kappa 1; independent raters give kappa near 0 within its SE."""
    same = np.repeat(np.array([0, 1, 1, 0, 1, 0, 0, 1])[:, None], 4, axis=1)
    assert fleiss_kappa(same)[0] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    k, se = fleiss_kappa(rng.integers(0, 2, size=(2000, 5)))
    assert abs(k) < 4 * se
    assert cohen_kappa(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0])) == pytest.approx(-1.0)


def test_decision_changes_counts() -> None:
    truth = np.array([1, 1, 1, 0, 0, 0])
    unaided = np.array([[1, 0, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=float)
    aided = np.array([[1, 1, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=float)
    data = ReaderStudyData(ratings=np.stack([unaided, aided]), truth=truth, modalities=("unaided", "aided"),
                           readers=("A", "B"), cases=tuple("abcdef"))
    res = decision_changes(data, unaided="unaided", aided="aided")
    a, b = res.per_reader
    # reader A: cases b, c (FN->TP) and e (FP->TN) improve; none worsens; a and d stay correct; f stays wrong
    assert (a.incorrect_to_correct, a.correct_to_incorrect, a.stayed_correct, a.stayed_incorrect) == (3, 0, 2, 1)
    assert (b.incorrect_to_correct, b.correct_to_incorrect, b.stayed_correct) == (0, 1, 5)
    assert res.overall.net_gain == 2 and res.overall.changed == 4
    assert a.p_value == pytest.approx(0.25)  # exact McNemar: 3 of 3 discordant, two-sided 2 * 1/8
    json.dumps(res.to_dict())


def _simulate_times(seed: int, n_readers: int = 8, n_cases: int = 60, effect: float = -0.25):
    rng = np.random.default_rng(seed)
    ru = rng.normal(0, 0.3, n_readers)
    cu = rng.normal(0, 0.5, n_cases)
    rows = []
    for r in range(n_readers):
        for c in range(n_cases):
            for arm, b in (("unaided", 0.0), ("aided", effect)):
                rows.append((f"r{r}", f"c{c}", arm, float(np.exp(4.0 + b + ru[r] + cu[c] + rng.normal(0, 0.2)))))
    return pd.DataFrame(rows, columns=["reader", "case", "arm", "time"])


def test_reading_time_model_recovers_effect_and_components() -> None:
    df = _simulate_times(1)
    res = reading_time_model(df)
    e = res.effects[0]
    logs = np.log(df["time"])
    # balanced design: the GLS estimate of the arm effect is the difference of mean log times
    diff = logs[df["arm"] == "aided"].mean() - logs[df["arm"] == "unaided"].mean()
    assert e.log_ratio == pytest.approx(diff, abs=1e-6)
    assert e.ratio == pytest.approx(np.exp(diff), rel=1e-6)
    # its SE in a balanced crossed design: residual variance only, sqrt(2 s2 / (R C))
    assert e.se == pytest.approx(np.sqrt(2 * res.var_residual / (8 * 60)), rel=1e-3)
    assert res.var_residual == pytest.approx(0.04, rel=0.2)
    assert res.var_case == pytest.approx(0.25, rel=0.4)
    assert 0.0 < res.var_reader < 0.3
    assert res.converged and e.p_value < 1e-10
    assert e.ratio_ci_low < e.ratio < e.ratio_ci_high
    json.dumps(res.to_dict())
    assert "time ratio" in res.summary()


def test_reading_time_rejects_non_positive_times() -> None:
    df = _simulate_times(2, n_readers=2, n_cases=4)
    df.loc[0, "time"] = 0.0
    with pytest.raises(ValueError, match="positive"):
        reading_time_model(df)
