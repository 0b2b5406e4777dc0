"""Classical baseline: Youden, threshold rule, metrics and CIs, nested CV, external site, SHAP.

The tables are synthetic with a known truth: the label depends on ``f0`` only (logistic model,
slope 2.5) in three sites, or is pure noise.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score, roc_curve

from ml.classical import (
    ThresholdRule,
    TrainedModel,
    binary_metrics,
    bootstrap_metrics,
    encode_labels,
    leave_one_site_out,
    predict_with_explanations,
    prepare_features,
    shap_values,
    train_classical,
    train_from_config,
    youden_threshold,
)
from ml.classical.metrics import mann_whitney_auc

FAST = dict(n_outer=3, n_inner=3, n_bootstrap=300)


def _table(n: int = 120, *, informative: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)],
                     index=[f"sub-{i:03d}/ses-1" for i in range(n)])
    p = 1 / (1 + np.exp(-2.5 * X["f0"])) if informative else np.full(n, 0.5)
    y = pd.Series(np.where(rng.random(n) < p, "progression", "treatment_related"), index=X.index)
    sites = pd.Series(np.tile(["nancy", "paris", "lyon"], n // 3), index=X.index)
    return X, y, sites


@pytest.fixture(scope="module")
def informative_logreg():
    X, y, s = _table()
    return X, y, s, train_classical(X, y, s, task="progression", model="logreg",
                                    external_site="lyon", **FAST)


def test_youden_threshold_hand_example():
    # Cut-offs: t=4 -> Se 4/4, Sp 3/4, J = 0.75 (the maximum); t=7 -> J = 0.5; t=6 -> 0.25.
    scores = np.arange(1, 9)
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    assert youden_threshold(scores, y) == (4.0, 0.75)


def test_youden_threshold_matches_roc_curve_maximum():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    s = y + rng.normal(size=200)
    fpr, tpr, thr = roc_curve(y, s)
    t, j = youden_threshold(s, y)
    assert j == pytest.approx(np.max(tpr - fpr))
    assert t == pytest.approx(thr[np.argmax(tpr - fpr)])


def test_threshold_rule_is_a_sklearn_estimator_learning_on_training_data():
    X = pd.DataFrame({"ts_max": np.arange(1.0, 9.0), "other": 0.0})
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    rule = ThresholdRule(feature="ts_max").fit(X, y)
    assert rule.threshold_ == 4.0 and rule.youden_j_ == 0.75 and rule.direction_ == "greater"
    assert np.array_equal(rule.predict(X), (X["ts_max"] >= 4).astype(int))
    assert np.array_equal(rule.predict_proba(X)[:, 1] >= 0.5, X["ts_max"] >= 4)
    assert clone(rule).get_params() == {"feature": "ts_max", "direction": "auto"}
    inverse = ThresholdRule(feature="ts_max").fit(-X, y)  # low values positive
    assert inverse.direction_ == "less" and inverse.threshold_ == -4.0
    assert roc_auc_score(y, inverse.predict_proba(-X)[:, 1]) == roc_auc_score(y, X["ts_max"])


def test_binary_metrics_hand_counts():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.6])
    m = binary_metrics(y, p, 0.5)  # TP 3, FN 1, FP 1, TN 3
    assert m["sensitivity"] == 0.75 and m["specificity"] == 0.75
    assert m["ppv"] == 0.75 and m["npv"] == 0.75 and m["accuracy"] == 0.75
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))


def test_mann_whitney_auc_with_ties_matches_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) + 0.3 * y, 1)  # many ties
    assert mann_whitney_auc(y, p) == pytest.approx(roc_auc_score(y, p))


def test_bootstrap_cis_contain_point_estimates():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(scale=0.2, size=80), 0, 1)
    ci = bootstrap_metrics(y, p, 0.5, n_boot=500, seed=1)
    for name, m in ci.items():
        assert m.lower <= m.estimate <= m.upper, name
        assert m.upper - m.lower > 0.01, name


def test_informative_feature_gives_high_auc_and_ranks_first_in_shap(informative_logreg):
    X, y, s, res = informative_logreg
    assert res.cv.metrics["auc"].lower > 0.65
    assert res.external is not None and res.external.n == 40
    assert res.external.metrics["auc"].estimate > 0.8
    assert list(res.importance)[0] == "f0"
    assert res.config["development_sites"] == ["nancy", "paris"]
    assert set(res.cv.cases).isdisjoint(res.external.cases)


def test_shap_local_accuracy_and_predictions(informative_logreg):
    X, y, s, res = informative_logreg
    expl = shap_values(res.model, X.iloc[:10])
    prob = res.model.predict_proba(X.iloc[:10])
    assert expl.output == "log-odds"
    assert np.allclose(expl.base_value + expl.values.sum(axis=1), np.log(prob / (1 - prob)))
    preds = predict_with_explanations(res.model, X.iloc[:10], top_k=3)
    assert [p.case for p in preds] == list(X.index[:10])
    for p, pr in zip(preds, prob):
        assert p.probability == pytest.approx(pr)
        assert p.decision == (pr >= res.model.threshold)
        assert p.label == ("progression" if p.decision else "treatment_related")
        assert len(p.contributions) == 3
        assert abs(p.contributions[0].shap) >= abs(p.contributions[-1].shap)
    json.dumps([p.to_dict() for p in preds], allow_nan=False)


def test_random_labels_auc_ci_covers_half():
    X, y, s = _table(informative=False, seed=3)
    res = train_classical(X, y, s, task="progression", model="logreg", **FAST)
    auc = res.cv.metrics["auc"]
    assert auc.lower < 0.5 < auc.upper


def test_random_forest_shap_ranks_informative_feature_first():
    X, y, s = _table(seed=1)
    res = train_classical(X, y, s, task="progression", model="rf", n_outer=2, n_inner=2,
                          n_bootstrap=100)
    assert list(res.importance)[0] == "f0"
    expl = shap_values(res.model, X.iloc[:5])
    assert expl.output == "probability"
    assert np.allclose(expl.base_value + expl.values.sum(axis=1),
                       res.model.predict_proba(X.iloc[:5]))


def test_threshold_rule_model_and_external_site():
    X, y, s = _table(seed=2)
    res = train_classical(X, y, s, task="progression", model="threshold",
                          threshold_feature="f0", external_site="paris", **FAST)
    rule = res.model.estimator
    dev = s != "paris"
    yd = encode_labels(y[dev], "progression")[0].to_numpy()
    assert rule.threshold_ == youden_threshold(X.loc[dev, "f0"], yd)[0]
    ext = X[~dev]
    assert np.array_equal(res.model.predict(ext), ext["f0"] >= rule.threshold_)
    assert list(res.importance)[0] == "f0"
    assert res.to_dict()["rule"] == {"feature": "f0", "cutoff": rule.threshold_,
                                     "direction": "greater", "youden_j": rule.youden_j_}
    assert "rule: f0 >= " in res.summary()


def test_save_load_and_retrain_from_config(informative_logreg, tmp_path):
    X, y, s, res = informative_logreg
    paths = res.save(tmp_path / "run")
    assert {"model", "result", "cv_roc", "cv_calibration", "external_roc"} <= set(paths)
    assert paths["cv_roc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads(paths["result"].read_text())
    assert stored["cv"]["metrics"]["auc"]["estimate"] == pytest.approx(
        res.cv.metrics["auc"].estimate)
    loaded = TrainedModel.load(paths["model"])
    assert np.array_equal(loaded.predict_proba(X), res.model.predict_proba(X))
    again = train_from_config(X, y, s, stored["config"])
    assert np.allclose(again.model.predict_proba(X), res.model.predict_proba(X))
    assert np.allclose(again.cv.prob, res.cv.prob)
    assert "auc" in res.summary() and "external:lyon" in res.summary()


def test_leave_one_site_out():
    X, y, s = _table(seed=4)
    loso = leave_one_site_out(X, y, s, task="progression", model="logreg", n_bootstrap=100)
    assert sorted(loso.per_site) == ["lyon", "nancy", "paris"]
    assert loso.pooled.n == 120 and all(e.n == 40 for e in loso.per_site.values())
    assert loso.pooled.metrics["auc"].estimate > 0.75
    json.dumps(loso.to_dict(), allow_nan=False)


def test_labels_and_features_preparation():
    labels = pd.Series(["mutant", "n/a", "wildtype", None, "mutant"])
    y, excluded = encode_labels(labels, "idh")
    assert y.tolist() == [1, 0, 1] and list(excluded) == [1, 3]
    with pytest.raises(ValueError, match="not 'codeleted'/'intact'"):
        encode_labels(pd.Series(["mutant"]), "codeletion")
    table = pd.DataFrame({"site": ["a", "b"], "patient": ["p", "q"], "exam": ["e", "f"],
                          "tbr_max": [2.0, 3.0], "curve_class": ["decreasing", "n/a"]})
    feats = prepare_features(table)
    assert list(feats.columns) == ["tbr_max", "curve_class"]
    assert feats["curve_class"].iloc[0] == 2.0 and np.isnan(feats["curve_class"].iloc[1])
    with pytest.raises(ValueError, match="non-numeric columns"):
        prepare_features(pd.DataFrame({"x": ["a"]}))


def test_input_errors():
    X, y, s = _table(n=30)
    with pytest.raises(ValueError, match="external_site"):
        train_classical(X, y, s, task="progression", external_site="berlin", **FAST)
    with pytest.raises(ValueError, match="same index"):
        train_classical(X, y.iloc[:-1], s, task="progression", **FAST)
    with pytest.raises(ValueError, match="threshold_feature"):
        train_classical(X, y, s, task="progression", model="threshold", **FAST)
    with pytest.raises(ValueError, match="task"):
        train_classical(X, y, s, task="grade", **FAST)


@pytest.mark.slow
def test_svm_pipeline_with_permutation_shap():
    X, y, s = _table(n=90, seed=6)
    res = train_classical(X, y, s, task="progression", model="svm", n_outer=2, n_inner=2,
                          n_bootstrap=100)
    assert res.cv.metrics["auc"].estimate > 0.75
    assert list(res.importance)[0] == "f0"
    preds = predict_with_explanations(res.model, X.iloc[:3])
    assert preds[0].output == "probability"
    assert preds[0].contributions[0].feature == "f0" or abs(X.iloc[0]["f0"]) < 0.5
