"""ml.classify.metrics against sklearn, statsmodels, the reader-study DeLong code and hand counts."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import expit, logit
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from ml.classify.metrics import (
    PostHocCalibrator,
    calibration_stats,
    classification_report,
    delong_test,
    placement_values,
    stratified_delong,
)


def _scores(n: int, d: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2], y[2:4] = 1, 0
    return y, rng.normal(d * y, 1.0)


def test_report_matches_sklearn_and_a_hand_count():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4, 0.7])
    r = classification_report("t", y, p, threshold=0.5, n_bootstrap=200, seed=1)
    pred = (p >= 0.5).astype(int)
    # hand count at 0.5: TP 3 (0.9, 0.8, 0.7), FN 1 (0.3), FP 1 (0.6), TN 3
    assert r.metrics["sensitivity"].estimate == pytest.approx(3 / 4) == recall_score(y, pred)
    assert r.metrics["specificity"].estimate == pytest.approx(3 / 4)
    assert r.metrics["ppv"].estimate == pytest.approx(precision_score(y, pred))
    assert r.metrics["npv"].estimate == pytest.approx(3 / 4)
    assert r.metrics["accuracy"].estimate == pytest.approx(accuracy_score(y, pred))
    assert r.metrics["auc"].estimate == pytest.approx(roc_auc_score(y, p))
    assert r.calibration.brier == pytest.approx(brier_score_loss(y, p))
    for m in r.metrics.values():
        assert m.lower <= m.estimate <= m.upper


def test_calibration_slope_and_intercept_match_statsmodels():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.98, 3000)
    # truth generated with slope 0.6 and intercept 0.4 on the logit scale: over-confident p
    y = (rng.random(p.size) < expit(0.4 + 0.6 * logit(p))).astype(int)
    c = calibration_stats(y, p)
    lp = logit(p)
    slope_fit = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    citl_fit = sm.GLM(y, np.ones((p.size, 1)), family=sm.families.Binomial(), offset=lp).fit()
    assert c.slope == pytest.approx(slope_fit.params[1], abs=1e-6)
    assert c.intercept == pytest.approx(citl_fit.params[0], abs=1e-6)
    assert c.slope == pytest.approx(0.6, abs=0.1)
    # a perfectly calibrated model: slope near 1, intercept near 0
    y2 = (rng.random(p.size) < p).astype(int)
    c2 = calibration_stats(y2, p)
    assert c2.slope == pytest.approx(1.0, abs=0.15) and abs(c2.intercept) < 0.15


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_post_hoc_calibration_fitted_on_validation_improves_held_out_brier(method):
    rng = np.random.default_rng(4)

    def draw(n):
        p = rng.uniform(0.02, 0.98, n)
        y = (rng.random(n) < expit(-0.8 + 0.4 * logit(p))).astype(int)  # badly calibrated p
        return y, p

    y_val, p_val = draw(600)
    y_test, p_test = draw(2000)
    cal = PostHocCalibrator(method).fit(p_val, y_val)
    assert cal.n_fit_ == 600
    before = brier_score_loss(y_test, p_test)
    after = brier_score_loss(y_test, cal.transform(p_test))
    assert after < before - 0.01
    if method == "platt":  # monotone increasing map: AUC unchanged
        assert roc_auc_score(y_test, cal.transform(p_test)) == pytest.approx(roc_auc_score(y_test, p_test))


def test_post_hoc_calibration_rejects_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        PostHocCalibrator().fit([0.2, 0.4], [1, 1])
    with pytest.raises(ValueError, match="method"):
        PostHocCalibrator("beta").fit([0.2, 0.4], [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PostHocCalibrator().fit([0.2, 1.4], [0, 1])


def test_delong_matches_the_reader_study_implementation_and_a_brute_force_kernel():
    from reader_study.analysis.covariance import delong_covariance
    from reader_study.analysis.fom import StructuralComponents
    from reader_study.analysis.fom import placement_values as rs_placement

    y, s1 = _scores(80, 1.2, 5)
    s2 = 0.6 * s1 + np.random.default_rng(6).normal(0, 0.9, y.size)
    s2 = np.round(s2, 1)  # ties inside one score
    res = delong_test(y, s1, s2)
    neg = np.vstack([s1[y == 0], s2[y == 0]])
    pos = np.vstack([s1[y == 1], s2[y == 1]])
    theta, v10, v01 = rs_placement(neg, pos)
    sc = StructuralComponents("auc", theta.reshape(2, 1), v10.reshape(2, 1, -1), v01.reshape(2, 1, -1), y)
    cov = delong_covariance(sc)
    assert np.allclose(res.covariance, cov)
    assert res.auc1 == pytest.approx(roc_auc_score(y, s1)) and res.auc2 == pytest.approx(roc_auc_score(y, s2))
    # brute force: psi kernel over all (positive, negative) pairs
    for s, auc in ((s1, res.auc1), (s2, res.auc2)):
        psi = (s[y == 1][:, None] > s[y == 0][None]) + 0.5 * (s[y == 1][:, None] == s[y == 0][None])
        assert psi.mean() == pytest.approx(auc)
        _, v10_own, v01_own = placement_values(y, s)
        assert np.allclose(v10_own, psi.mean(axis=1)) and np.allclose(v01_own, psi.mean(axis=0))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert res.z == pytest.approx((res.auc1 - res.auc2) / np.sqrt(var))
    assert res.p_value == pytest.approx(2 * stats.norm.sf(abs(res.z)))


def test_delong_null_has_calibrated_type_one_error():
    """Two equally good, correlated scores: p < 0.05 in about 5% of data sets."""
    rng = np.random.default_rng(7)
    rejections = 0
    n_rep = 300
    for _ in range(n_rep):
        y = (rng.random(100) < 0.5).astype(int)
        common = rng.normal(y * 1.0, 1.0)
        s1 = common + rng.normal(0, 0.7, y.size)
        s2 = common + rng.normal(0, 0.7, y.size)
        rejections += delong_test(y, s1, s2).p_value < 0.05
    assert 0.02 <= rejections / n_rep <= 0.09


def test_delong_identical_scores_and_bad_input():
    y, s = _scores(30, 1.0, 8)
    r = delong_test(y, s, s)
    assert r.difference == 0 and r.p_value == 1.0
    with pytest.raises(ValueError, match="2 cases per class"):
        delong_test([1, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="lengths"):
        delong_test([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.3, 0.2, 0.1])


def test_stratified_delong_weights_sites_by_cases_and_ignores_their_scales():
    rng = np.random.default_rng(3)
    strata = []
    for n, d in ((50, 1.0), (30, 1.5), (80, 0.7)):
        y = (rng.random(n) < 0.5).astype(int)
        y[:2], y[2:4] = 1, 0
        common = rng.normal(y * d, 1.0)
        strata.append((y, common + rng.normal(0, 0.5, n), common + rng.normal(0, 0.5, n)))
    one = delong_test(*strata[0])
    alone = stratified_delong([one])
    assert (alone.difference, alone.se, alone.p_value) == pytest.approx((one.difference, one.se, one.p_value))
    per = [delong_test(*t) for t in strata]
    w = np.array([50, 30, 80]) / 160
    got = stratified_delong(per)
    assert got.difference == pytest.approx(np.dot(w, [r.difference for r in per]))
    assert got.se == pytest.approx(np.sqrt(np.dot(w ** 2, [r.se ** 2 for r in per])))
    assert got.p_value == pytest.approx(2 * stats.norm.sf(abs(got.difference / got.se)))
    assert got.n_positive + got.n_negative == 160
    # the same score on another scale in each stratum (each site's own model): no difference at all
    # once stratified, while one DeLong on the pooled cases sees one
    y = np.concatenate([t[0] for t in strata])
    s1 = np.concatenate([t[1] for t in strata])
    s2 = np.concatenate([t[1] * 0.2 + k * 3.0 for k, t in enumerate(strata)])
    same = stratified_delong([delong_test(t[0], t[1], t[1] * 0.2 + k * 3.0) for k, t in enumerate(strata)])
    assert same.difference == pytest.approx(0, abs=1e-12) and same.p_value == pytest.approx(1.0)
    assert delong_test(y, s1, s2).p_value < 0.05
    with pytest.raises(ValueError, match="no stratum"):
        stratified_delong([])


def test_bootstrap_auc_ci_covers_the_true_auc_about_95_percent():
    """Binormal scores (shift d, unit SDs): true AUC = Phi(d / sqrt 2)."""
    d = 1.0
    true_auc = stats.norm.cdf(d / np.sqrt(2))
    n_rep, covered = 80, 0
    rng = np.random.default_rng(9)
    for rep in range(n_rep):
        y = np.repeat([0, 1], 40)
        s = rng.normal(d * y, 1.0)
        p = expit(s)
        r = classification_report("c", y, p, n_bootstrap=300, seed=rep)
        covered += r.metrics["auc"].lower <= true_auc <= r.metrics["auc"].upper
    assert 0.85 <= covered / n_rep <= 1.0


def test_platt_never_reverses_the_ranking():
    # validation data where the score is inversely related to the truth
    p_val = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    y_val = np.array([1, 1, 1, 0, 0, 1])
    cal = PostHocCalibrator("platt").fit(p_val, y_val)
    assert cal.coef_ > 0
    p = np.linspace(0.01, 0.99, 50)
    assert np.all(np.diff(cal.transform(p)) >= 0)
