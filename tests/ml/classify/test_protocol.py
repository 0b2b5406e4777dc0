"""ml.classify.protocol: patient splits without leakage, external site unseen, calibration on validation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.classify.metrics import PostHocCalibrator
from ml.classify.protocol import (
    FeatureClassifier,
    LabelledCohort,
    StackLoader,
    learning_curve,
    leave_one_site_out,
    make_estimator,
    make_split,
    run_split,
)


@pytest.fixture(scope="module")
def big_cohort() -> LabelledCohort:
    """Label-only cohort: 4 sites x 30 patients, two exams for every third patient."""
    rng = np.random.default_rng(0)
    keys, patients, sites, y = [], [], [], []
    for s in ("nancy", "paris", "lyon", "bordeaux"):
        for i in range(30):
            pid = f"sub-{s[:2]}{i:03d}"
            label = int(rng.random() < 0.45)
            for e in range(2 if i % 3 == 0 else 1):
                keys.append(f"{pid}/ses-0{e + 1}")
                patients.append(pid)
                sites.append(s)
                y.append(label)
    return LabelledCohort("progression", tuple(keys), tuple(patients), tuple(sites), np.array(y))


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_split_is_by_patient_and_never_trains_on_the_external_site(big_cohort, fraction, seed):
    split = make_split(big_cohort, test_site="bordeaux", seed=seed, label_fraction=fraction)
    tr, va, te = (split.patients(big_cohort, p) for p in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    site_of = dict(zip(big_cohort.keys, big_cohort.sites, strict=True))
    assert {site_of[k] for k in split.test} == {"bordeaux"}
    assert "bordeaux" not in {site_of[k] for k in (*split.train, *split.val, *split.unlabelled)}
    # every exam of a patient stays on one side
    for part in (split.train, split.val, split.test):
        pats = {big_cohort.patients[big_cohort.keys.index(k)] for k in part}
        assert set(part) == {k for k, p in zip(big_cohort.keys, big_cohort.patients, strict=True) if p in pats}
    # both classes in training and validation
    for part in (split.train, split.val):
        assert set(big_cohort.subset(part)) == {0, 1}
    dev = sum(s != "bordeaux" for s in big_cohort.sites)
    assert len(split.train) + len(split.val) + len(split.unlabelled) == dev


def test_label_fractions_are_nested_and_seeds_reproducible(big_cohort):
    labelled = {}
    for f in (0.1, 0.25, 0.5, 1.0):
        s = make_split(big_cohort, test_site="paris", seed=2, label_fraction=f)
        labelled[f] = set(s.train) | set(s.val)
    assert labelled[0.1] < labelled[0.25] < labelled[0.5] < labelled[1.0]
    n_dev_patients = len({p for p, s in zip(big_cohort.patients, big_cohort.sites, strict=True) if s != "paris"})
    n_lab_patients = len(make_split(big_cohort, test_site="paris", seed=2, label_fraction=0.25)
                         .patients(big_cohort, "train") | make_split(big_cohort, test_site="paris", seed=2,
                                                                     label_fraction=0.25).patients(big_cohort, "val"))
    assert n_lab_patients == pytest.approx(0.25 * n_dev_patients, abs=2)
    a = make_split(big_cohort, test_site="paris", seed=2, label_fraction=0.5)
    b = make_split(big_cohort, test_site="paris", seed=2, label_fraction=0.5)
    c = make_split(big_cohort, test_site="paris", seed=3, label_fraction=0.5)
    assert a == b and set(a.train) != set(c.train)


def test_internal_split_and_bad_arguments(big_cohort):
    s = make_split(big_cohort, test_site=None, seed=1)
    assert s.name == "internal" and len(s.test) > 0
    s.check(big_cohort)
    with pytest.raises(ValueError, match="not among"):
        make_split(big_cohort, test_site="marseille")
    with pytest.raises(ValueError, match="label_fraction"):
        make_split(big_cohort, test_site="paris", label_fraction=0)
    leaky = s.__class__(**{**s.__dict__, "val": (*s.val, s.test[0])})
    with pytest.raises(ValueError, match="two parts"):
        leaky.check(big_cohort)


def test_cohort_from_index_keeps_labelled_recurrence_exams():
    index = pd.DataFrame({
        "key": ["a/ses-01", "a/ses-02", "b/ses-02", "c/ses-02"], "site": ["x", "x", "y", "y"],
        "patient": ["a", "a", "b", "c"], "timepoint": ["initial_diagnosis"] + ["suspected_recurrence"] * 3,
        "diagnosis": ["n/a", "progression", "treatment_related", "n/a"], "idh": ["mutant"] * 4,
        "codeletion_1p19q": ["intact"] * 4}).set_index("key")
    c = LabelledCohort.from_index(index, "progression")
    assert c.keys == ("a/ses-02", "b/ses-02") and list(c.y) == [1, 0] and c.n_excluded == 1
    with pytest.raises(ValueError, match="task"):
        LabelledCohort.from_index(index, "grade")


def test_ts_rule_on_generator_stacks_separates_progression(phantom_stacks, phantom_cohort):
    """On the generator's exams the T/S max of progression exceeds that of treatment-related change."""
    from ml.classify.protocol import stack_feature_table

    table = stack_feature_table(list(phantom_stacks.values()), radiomics=False)
    y = phantom_cohort.subset(list(table.index))
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y, table["ts_max"]) > 0.7
    assert (table["tbr_max"] > 1.0).all()


def test_run_split_fits_calibration_and_threshold_on_validation_only(phantom_stacks, phantom_cohort):
    load = StackLoader(phantom_stacks)
    split = make_split(phantom_cohort, test_site="lyon", seed=0, label_fraction=1.0, val_fraction=0.4)
    est = make_estimator("ts_rule", seed=0)
    result, fitted, calibrator = run_split(est, phantom_cohort, split, load, family="ts_rule", n_bootstrap=100)
    assert set(result.test_keys) == {k for k, s in zip(phantom_cohort.keys, phantom_cohort.sites, strict=True)
                                     if s == "lyon"}
    # the calibrator is exactly Platt on the validation predictions
    p_val = fitted.predict_proba(load(split.val))[:, 1]
    expected = PostHocCalibrator("platt").fit(p_val, phantom_cohort.subset(split.val))
    assert np.allclose(calibrator.transform(result.prob_raw), expected.transform(result.prob_raw))
    assert np.allclose(result.prob, expected.transform(result.prob_raw))
    assert calibrator.n_fit_ == len(split.val)
    # test labels play no part: flipping them leaves probabilities and threshold unchanged
    flipped = LabelledCohort(phantom_cohort.task, phantom_cohort.keys, phantom_cohort.patients,
                             phantom_cohort.sites,
                             np.where(np.isin(phantom_cohort.keys, split.test), 1 - phantom_cohort.y,
                                      phantom_cohort.y))
    again, _, _ = run_split(est, flipped, split, load, family="ts_rule", n_bootstrap=100)
    assert np.allclose(again.prob, result.prob) and again.threshold == result.threshold
    assert again.report.metrics["auc"].estimate == pytest.approx(1 - result.report.metrics["auc"].estimate)


def test_learning_curve_and_loso_on_generator_stacks(phantom_stacks, phantom_cohort, tmp_path):
    load = StackLoader(phantom_stacks)
    families = {"ts_rule": lambda s: make_estimator("ts_rule", seed=s),
                "radiomics": lambda s: FeatureClassifier(model="logreg", radiomics=False, random_state=s)}
    lines = []
    lc = learning_curve(families, phantom_cohort, load, test_site="paris", fractions=(0.5, 1.0), seeds=(0, 1),
                        val_fraction=0.3, n_bootstrap=50, progress=lines.append)
    table = lc.table()
    assert len(table) == 2 * 2 * 2 and len(lines) == 8
    assert set(table["n_test"]) == {4}
    assert (table.loc[table.fraction == 0.5, "n_train"].to_numpy()
            <= table.loc[table.fraction == 1.0, "n_train"].to_numpy()).all()
    summary = lc.summary_frame()
    assert set(summary["family"]) == {"ts_rule", "radiomics"} and (summary["seeds"] == 2).all()
    tests = lc.delong("radiomics", "ts_rule", fraction=1.0)
    assert len(tests) == 2 and all(0 <= t.p_value <= 1 for t in tests)
    lc.figure().savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 5000
    loso = leave_one_site_out(families["ts_rule"], phantom_cohort, load, family="ts_rule", n_bootstrap=50)
    assert [f.split.test_site for f in loso.folds] == ["lyon", "nancy", "paris"]
    for f in loso.folds:
        assert f.split.test_site not in {phantom_cohort.sites[phantom_cohort.keys.index(k)]
                                         for k in (*f.split.train, *f.split.val)}
    assert loso.pooled.n == len(phantom_cohort.keys)
    # paired DeLong per held-out site and site-stratified: never ranks one site's case against another's
    other = leave_one_site_out(families["radiomics"], phantom_cohort, load, family="radiomics", n_bootstrap=50)
    d, per_site = other.delong(loso)
    assert [r.auc1 for r in per_site] == pytest.approx([f.report.metrics["auc"].estimate for f in other.folds])
    assert [r.auc2 for r in per_site] == pytest.approx([f.report.metrics["auc"].estimate for f in loso.folds])
    n = np.array([f.y_test.size for f in loso.folds])
    assert d.n_positive + d.n_negative == n.sum() == len(phantom_cohort.keys)
    assert d.difference == pytest.approx(np.dot(n / n.sum(), [r.difference for r in per_site]))
    assert d.se == pytest.approx(np.sqrt(np.sum((n / n.sum()) ** 2 * np.array([r.se for r in per_site]) ** 2)))
    assert loso.delong(loso)[0].difference == 0
    # one factory per held-out site (a foundation encoder pretrained without it): each fold uses its own
    called = []

    def per_site(site):
        return lambda s: called.append(site) or make_estimator("ts_rule", seed=s)

    sites = ["lyon", "nancy", "paris"]
    own = leave_one_site_out({x: per_site(x) for x in sites}, phantom_cohort, load, family="ts_rule", n_bootstrap=50)
    assert called == sites and [f.split.test_site for f in own.folds] == sites
    assert np.allclose(np.concatenate([f.prob for f in own.folds]), np.concatenate([f.prob for f in loso.folds]))
    with pytest.raises(ValueError, match="paris"):
        leave_one_site_out({x: per_site(x) for x in sites[:2]}, phantom_cohort, load, family="ts_rule")
    shuffled = type(loso)(tuple(reversed(loso.folds)), loso.pooled, loso.config)
    with pytest.raises(ValueError, match="same cases"):
        other.delong(shuffled)


def test_ts_rule_probabilities_keep_the_ranking_of_ts_max(phantom_stacks, phantom_cohort):
    """The rule's AUC is the AUC of T/S max itself (no saturated, tied probabilities)."""
    from sklearn.metrics import roc_auc_score

    from ml.classify.protocol import stack_feature_table

    X = [phantom_stacks[k] for k in phantom_cohort.keys]
    rule = make_estimator("ts_rule", seed=0).fit(X, phantom_cohort.y)
    p = rule.predict_proba(X)[:, 1]
    ts = stack_feature_table(X, radiomics=False)["ts_max"].to_numpy()
    assert len(np.unique(p)) == len(np.unique(ts))
    assert roc_auc_score(phantom_cohort.y, p) == pytest.approx(roc_auc_score(phantom_cohort.y, ts))
    assert np.array_equal(p >= 0.5, rule.estimator_.predict(stack_feature_table(X, radiomics=False)) == 1)

