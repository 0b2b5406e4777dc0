"""Metrics of the WP3 classifiers: discrimination with bootstrap CIs, calibration, post-hoc
calibration and the paired DeLong test.

Discrimination (AUC, accuracy, sensitivity, specificity, PPV, NPV with percentile-bootstrap 95%
CIs) reuses :func:`ml.classical.metrics.bootstrap_metrics`, so every family of models is scored by
the same code as the classical baseline.

Calibration (Cox, Biometrika 1958; Van Calster et al., J Clin Epidemiol 2016, "calibration
hierarchy"): with ``L = logit(p)``,

* *calibration slope* ``b`` from the logistic regression ``logit P(y=1) = a + b L`` (ideal 1;
  ``b < 1``: predictions too extreme, overfitting);
* *calibration intercept* (calibration-in-the-large) ``a'`` from ``logit P(y=1) = a' + 1 * L``,
  i.e. ``L`` as an offset (ideal 0; ``a' > 0``: risks underestimated);
* Brier score ``mean (p - y)^2``.

Post-hoc calibration (:class:`PostHocCalibrator`): Platt scaling (Platt 1999: logistic
regression on ``logit p``) or isotonic regression (Zadrozny & Elkan, KDD 2002), fitted on
VALIDATION predictions only (never on the cases it is judged on).

Paired DeLong test (DeLong, DeLong & Clarke-Pearson, Biometrics 1988): two models scored on the
same cases; with placement values ``V10_r(x_i) = mean_j psi(x_i, y_j)`` over the K1 positives
and ``V01_r(y_j) = mean_i psi(x_i, y_j)`` over the K0 negatives (``psi = 1`` if the positive
scores higher, 1/2 on ties), ``S = S10 / K1 + S01 / K0`` (S10, S01 the 2x2 sample covariance
matrices, divisor K-1) and ``z = (A1 - A2) / sqrt(S11 + S22 - 2 S12)``, two-sided normal p-value.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from scipy.special import expit, logit
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.utils.validation import check_is_fitted

from ml.classical.metrics import METRICS, MetricCI, bootstrap_metrics, brier_score

__all__ = [
    "METRICS",
    "CalibrationStats",
    "ClassificationReport",
    "DeLongResult",
    "MetricCI",
    "PostHocCalibrator",
    "calibration_stats",
    "classification_report",
    "delong_test",
    "placement_values",
    "stratified_delong",
]

_EPS = 1e-12
_MIN_SLOPE = 1e-3


def _check_binary(y_true: Any, prob: Any, what: str = "prob") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.size == 0 or y.shape != p.shape:
        raise ValueError(f"y_true/{what}: need equal non-zero lengths, got {y.size} and {p.size}")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError(f"y_true: labels must be 0/1, got values {sorted(set(y.tolist()))[:5]}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{what}: NaN or infinite values")
    return y.astype(int), p


def _check_prob(p: np.ndarray, what: str = "prob") -> None:
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"{what}: probabilities must lie in [0, 1], got range [{p.min():g}, {p.max():g}]")


@dataclass(frozen=True)
class CalibrationStats:
    """Calibration of predicted probabilities (module docstring).

    Attributes:
        slope: ``b`` in ``logit P(y=1) = a + b logit(p)`` (ideal 1).
        intercept: ``a'`` in ``logit P(y=1) = a' + logit(p)`` (offset; ideal 0).
        brier: ``mean (p - y)^2``.
        n: number of cases.
    """

    slope: float
    intercept: float
    brier: float
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe (NaN -> None)."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                for k, v in (("slope", self.slope), ("intercept", self.intercept),
                             ("brier", self.brier), ("n", self.n))}


def _logistic_fit(y: np.ndarray, x: np.ndarray | None, offset: np.ndarray) -> np.ndarray:
    """Unpenalised maximum-likelihood logistic regression by Newton-Raphson.

    Model ``logit P(y=1) = beta0 + beta1 x + offset`` (``x=None``: intercept only).
    Returns ``beta`` (NaN when separation makes the MLE infinite).
    """
    design = np.ones((y.size, 1)) if x is None else np.column_stack([np.ones(y.size), x])
    beta = np.zeros(design.shape[1])
    for _ in range(100):
        eta = design @ beta + offset
        mu = expit(eta)
        w = mu * (1 - mu)
        grad = design.T @ (y - mu)
        hess = design.T @ (design * w[:, None])
        try:
            step = np.linalg.solve(hess + 1e-12 * np.eye(beta.size), grad)
        except np.linalg.LinAlgError:
            return np.full(beta.size, np.nan)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            return beta
        if np.max(np.abs(beta)) > 1e3:  # complete separation: the MLE diverges
            return np.full(beta.size, np.nan)
    return beta


def calibration_stats(y_true: Any, prob: Any) -> CalibrationStats:
    """Calibration slope, intercept (calibration-in-the-large) and Brier score.

    Args:
        y_true: 0/1 truth (N,).
        prob: predicted probability of class 1 (N,), clipped to ``[1e-12, 1 - 1e-12]`` before the
            logit.

    Returns:
        :class:`CalibrationStats`; slope/intercept NaN with one class only or separation.
    """
    y, p = _check_binary(y_true, prob)
    _check_prob(p)
    lp = logit(np.clip(p, _EPS, 1 - _EPS))
    if 0 < y.sum() < y.size:
        slope = float(_logistic_fit(y, lp, np.zeros(y.size))[1])
        intercept = float(_logistic_fit(y, None, lp)[0])
    else:
        slope = intercept = float("nan")
    return CalibrationStats(slope=slope, intercept=intercept, brier=brier_score(y, p), n=int(y.size))


class PostHocCalibrator(BaseEstimator):
    """Maps raw probabilities to calibrated ones; fit it on validation predictions only.

    Args:
        method: ``"platt"`` (logistic regression on ``logit p``, unpenalised; the slope is kept
            >= 1e-3 so the map never reverses the model's ranking) or ``"isotonic"``
            (monotone, clipped to [0, 1], out-of-range inputs mapped to the end values).

    Attributes:
        coef_, intercept_: Platt parameters (``p' = expit(intercept_ + coef_ logit p)``).
        isotonic_: fitted :class:`sklearn.isotonic.IsotonicRegression` (isotonic only).
        n_fit_: number of validation cases it was fitted on.
    """

    def __init__(self, method: str = "platt") -> None:
        self.method = method

    def fit(self, prob: Any, y_true: Any) -> PostHocCalibrator:
        """Fit on validation probabilities (N,) and their 0/1 truth (N,); returns self.

        Raises:
            ValueError: unknown method, one class only, bad values.
        """
        if self.method not in ("platt", "isotonic"):
            raise ValueError(f"method: 'platt' or 'isotonic', got {self.method!r}")
        y, p = _check_binary(y_true, prob)
        _check_prob(p)
        if not 0 < y.sum() < y.size:
            raise ValueError("PostHocCalibrator.fit: the validation data need both classes")
        if self.method == "platt":
            lp = logit(np.clip(p, _EPS, 1 - _EPS))
            beta = _logistic_fit(y, lp, np.zeros(y.size))
            if not np.all(np.isfinite(beta)):
                # separable validation data: a lightly penalised fit keeps the map finite
                from sklearn.linear_model import LogisticRegression
                lr = LogisticRegression(C=10.0).fit(lp.reshape(-1, 1), y)
                beta = np.array([lr.intercept_[0], lr.coef_[0, 0]])
            if beta[1] < _MIN_SLOPE:
                # a calibration map must not reverse the ranking (tiny validation sets can suggest
                # it): keep the slope at a small positive value and refit the intercept only
                beta = np.array([_logistic_fit(y, None, _MIN_SLOPE * lp)[0], _MIN_SLOPE])
            self.intercept_, self.coef_ = float(beta[0]), float(beta[1])
        else:
            self.isotonic_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        self.n_fit_ = int(y.size)
        return self

    def transform(self, prob: Any) -> np.ndarray:
        """Calibrated probabilities (N,)."""
        check_is_fitted(self, "n_fit_")
        p = np.asarray(prob, dtype=np.float64).ravel()
        if not np.all(np.isfinite(p)):
            raise ValueError("prob: NaN or infinite values")
        _check_prob(p)
        if self.method == "platt":
            return expit(self.intercept_ + self.coef_ * logit(np.clip(p, _EPS, 1 - _EPS)))
        return np.asarray(self.isotonic_.predict(p), dtype=np.float64)


def placement_values(y_true: Any, score: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """Empirical AUC and DeLong placement values of one score.

    Args:
        y_true: 0/1 truth (N,), both classes present.
        score: scores (N,), higher = more likely positive.

    Returns:
        ``(auc, v10 (K1,), v01 (K0,))``: ``v10_i`` the fraction of negatives below positive i
        (ties 1/2), ``v01_j`` the fraction of positives above negative j.
    """
    y, s = _check_binary(y_true, score, "score")
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("y_true: both classes are needed for the AUC")
    # psi via ranks: #(neg < x) + #(neg == x)/2 = rank of x among all - rank of x among positives
    r_all = stats.rankdata(np.concatenate([neg, pos]))
    below_pos = r_all[neg.size:] - stats.rankdata(pos)
    below_neg = r_all[:neg.size] - stats.rankdata(neg)  # #(pos < y) + #(pos == y)/2 for negative y
    v10 = below_pos / neg.size
    v01 = (pos.size - below_neg) / pos.size
    return float(v10.mean()), v10, v01


@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong comparison of two AUCs on the same cases (module docstring).

    Attributes:
        auc1, auc2: the two empirical AUCs.
        difference: ``auc1 - auc2``.
        se: standard error of the difference.
        z: ``difference / se``.
        p_value: two-sided.
        covariance: 2x2 DeLong covariance of (auc1, auc2).
        n_positive, n_negative: K1, K0.
    """

    auc1: float
    auc2: float
    difference: float
    se: float
    z: float
    p_value: float
    covariance: np.ndarray
    n_positive: int
    n_negative: int

    def conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        """Wald ``1 - alpha`` interval of the AUC difference."""
        q = stats.norm.ppf(1 - alpha / 2)
        return (self.difference - q * self.se, self.difference + q * self.se)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary."""
        lo, hi = self.conf_int()
        out = {"auc1": self.auc1, "auc2": self.auc2, "difference": self.difference, "se": self.se,
               "z": self.z, "p_value": self.p_value, "ci_lower": lo, "ci_upper": hi,
               "n_positive": self.n_positive, "n_negative": self.n_negative}
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


def _wald(diff: float, cov: np.ndarray) -> tuple[float, float, float]:
    """SE, z and two-sided p of an AUC difference with 2x2 covariance ``cov`` (a zero variance: z 0
    and p 1 for no difference, else an infinite z and p 0)."""
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        z = 0.0 if abs(diff) < 1e-15 else float(np.sign(diff) * np.inf)
        return 0.0, z, (1.0 if z == 0.0 else 0.0)
    se = float(np.sqrt(var))
    return se, float(diff / se), float(2 * stats.norm.sf(abs(diff / se)))


def stratified_delong(results: Sequence[DeLongResult]) -> DeLongResult:
    """Paired DeLong comparisons on independent strata (e.g. the held-out sites of a
    leave-one-site-out) combined into one, each stratum weighted by its share of the cases.

    AUCs and their difference are the case-weighted means of the strata's; the covariance is
    ``sum(w_s^2 cov_s)`` (independent strata). Unlike one DeLong on the pooled cases, no case of one
    stratum is ranked against a case of another: each stratum's scores come from its own model, whose
    probabilities need not be on a common scale.

    Raises:
        ValueError: no stratum.
    """
    if not results:
        raise ValueError("stratified_delong: no stratum")
    n = np.array([r.n_positive + r.n_negative for r in results], dtype=float)
    w = n / n.sum()
    auc1 = float(np.dot(w, [r.auc1 for r in results]))
    auc2 = float(np.dot(w, [r.auc2 for r in results]))
    cov = sum(wi ** 2 * r.covariance for wi, r in zip(w, results, strict=True))
    diff = auc1 - auc2
    se, z, p = _wald(diff, cov)
    return DeLongResult(auc1=auc1, auc2=auc2, difference=diff, se=se, z=z, p_value=p, covariance=cov,
                        n_positive=sum(r.n_positive for r in results),
                        n_negative=sum(r.n_negative for r in results))


def delong_test(y_true: Any, score1: Any, score2: Any) -> DeLongResult:
    """Paired DeLong test of ``AUC(score1) == AUC(score2)`` on the same cases.

    Args:
        y_true: 0/1 truth (N,), both classes with at least 2 cases each.
        score1, score2: the two models' scores on the same N cases, same order.

    Raises:
        ValueError: mismatched lengths, one class or a single case in a class.
    """
    y, s1 = _check_binary(y_true, score1, "score1")
    _, s2 = _check_binary(y, score2, "score2")
    k1, k0 = int(y.sum()), int((1 - y).sum())
    if k1 < 2 or k0 < 2:
        raise ValueError(f"y_true: DeLong needs >= 2 cases per class, got {k1} positive, {k0} negative")
    a1, v10a, v01a = placement_values(y, s1)
    a2, v10b, v01b = placement_values(y, s2)
    s10 = np.cov(np.vstack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.vstack([v01a, v01b]), ddof=1)
    cov = s10 / k1 + s01 / k0
    diff = a1 - a2
    se, z, p = _wald(diff, cov)
    return DeLongResult(auc1=a1, auc2=a2, difference=diff, se=se, z=z, p_value=p,
                        covariance=cov, n_positive=k1, n_negative=k0)


@dataclass(frozen=True)
class ClassificationReport:
    """Metrics of one model on one set of cases.

    Attributes:
        name: what was evaluated (e.g. ``"external:bordeaux"``).
        metrics: AUC, accuracy, sensitivity, specificity, PPV, NPV with bootstrap CIs.
        calibration: slope / intercept / Brier of the probabilities judged.
        threshold: decision cut-off applied (``p >= threshold`` is positive).
        n, n_positive: cases and positives.
        n_bootstrap, seed: of the CIs.
    """

    name: str
    metrics: dict[str, MetricCI]
    calibration: CalibrationStats
    threshold: float
    n: int
    n_positive: int
    n_bootstrap: int
    seed: int

    def summary(self) -> str:
        """Plain-text table."""
        c = self.calibration
        lines = [f"{self.name}: n={self.n} ({self.n_positive} positive), threshold {self.threshold:.3f}, "
                 f"calibration slope {c.slope:.2f} intercept {c.intercept:.2f} Brier {c.brier:.3f}"]
        for k in METRICS:
            m = self.metrics[k]
            lines.append(f"  {k:<12}{m.estimate:6.3f}  [{m.lower:.3f}, {m.upper:.3f}]")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return {"name": self.name, "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "calibration": self.calibration.to_dict(), "threshold": float(self.threshold),
                "n": self.n, "n_positive": self.n_positive, "n_bootstrap": self.n_bootstrap,
                "seed": self.seed}


def classification_report(
    name: str, y_true: Any, prob: Any, *, threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0,
) -> ClassificationReport:
    """AUC/accuracy/Se/Sp/PPV/NPV with percentile-bootstrap 95% CIs plus calibration.

    Args:
        name: label of the evaluation.
        y_true: 0/1 truth (N,).
        prob: probabilities of class 1 (N,).
        threshold: cut-off (chosen on training/validation data, never on these cases).
        n_bootstrap: bootstrap resamples; seed: their generator seed.
    """
    y, p = _check_binary(y_true, prob)
    _check_prob(p)
    return ClassificationReport(
        name=name, metrics=bootstrap_metrics(y, p, threshold, n_boot=n_bootstrap, seed=seed),
        calibration=calibration_stats(y, p), threshold=float(threshold), n=int(y.size),
        n_positive=int(y.sum()), n_bootstrap=n_bootstrap, seed=seed)
