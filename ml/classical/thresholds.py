"""Youden cut-offs and the clinical threshold rule (T/S max, TBR max) as a sklearn estimator.

Routine reading of amino-acid PET uses one parameter and a cut-off (e.g. FDOPA T/S max or TBR
max for progression vs treatment-related change, Zaragori et al., EJNMMI Res 2020; Rozenblum et
al., Eur Radiol 2022). The cut-off is chosen on TRAINING data by Youden's index
(Youden, Cancer 1950):

``J(t) = Se(t) + Sp(t) - 1``, with the rule "positive if score >= t" (``direction="greater"``),
over the observed scores ``t``; ties in J go to the lowest threshold (higher sensitivity).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.utils.validation import check_is_fitted

__all__ = ["youden_threshold", "ThresholdRule"]


def youden_threshold(scores: np.ndarray, y_true: np.ndarray) -> tuple[float, float]:
    """Cut-off maximising Youden's J for the rule ``score >= t`` (module docstring).

    Args:
        scores: continuous scores (N,), higher = more likely positive.
        y_true: 0/1 labels (N,), both classes present.

    Returns:
        ``(threshold, J)``.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(y_true).astype(int).ravel()
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"scores/y_true: need equal non-zero lengths, got {s.size} and {y.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores: NaN or infinite values")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("y_true: both classes are needed for a Youden threshold")
    cand = np.unique(s)  # ascending: argmax returns the lowest threshold among ties
    positive = s[None, :] >= cand[:, None]
    se = (positive & (y == 1)).sum(axis=1) / n_pos
    sp = (~positive & (y == 0)).sum(axis=1) / n_neg
    j = se + sp - 1.0
    best = int(np.argmax(j))
    return float(cand[best]), float(j[best])


class ThresholdRule(ClassifierMixin, BaseEstimator):
    """One feature and a Youden cut-off learned on training data.

    ``predict(X) = [sign * x >= sign * threshold_]``. ``predict_proba`` maps the signed distance
    to the cut-off through a one-parameter logistic curve fitted on the training data
    (``p = sigmoid(a * sign * (x - threshold_) / scale_)``, ``a >= 0``), so ``p >= 0.5`` exactly
    when the rule says positive and the AUC equals the feature's AUC.

    Args:
        feature: column name (DataFrame input) or index; None = the only column.
        direction: ``"greater"`` (high values positive), ``"less"``, or ``"auto"`` (chosen on
            the training data: ``"greater"`` when the feature's AUC >= 0.5).

    Attributes:
        threshold_: cut-off in feature units. youden_j_: J at the cut-off.
        direction_: the direction used. feature_index_: column used.
        classes_: ``[0, 1]``.
    """

    def __init__(self, feature: str | int | None = None, direction: str = "auto") -> None:
        self.feature = feature
        self.direction = direction

    def _column(self, X: np.ndarray | pd.DataFrame, *, fitting: bool) -> np.ndarray:
        if fitting:
            names = list(X.columns) if isinstance(X, pd.DataFrame) else None
            n_cols = np.shape(X)[1]
            if self.feature is None:
                if n_cols != 1:
                    raise ValueError(f"feature: None needs a single column, got {n_cols}")
                idx = 0
            elif isinstance(self.feature, str):
                if names is None or self.feature not in names:
                    raise ValueError(f"feature: column {self.feature!r} not in the features")
                idx = names.index(self.feature)
            else:
                idx = int(self.feature)
            self.feature_index_ = idx
            self.feature_names_in_ = np.asarray(names, dtype=object) if names else None
        col = np.asarray(X, dtype=np.float64)[:, self.feature_index_]
        if np.isnan(col).any():
            raise ValueError(f"ThresholdRule: missing values in feature {self.feature!r}")
        return col

    def fit(self, X: np.ndarray | pd.DataFrame, y: np.ndarray) -> ThresholdRule:
        """Learn direction, Youden cut-off and the probability slope; returns self."""
        if self.direction not in ("greater", "less", "auto"):
            raise ValueError(f"direction: 'greater', 'less' or 'auto', got {self.direction!r}")
        x = self._column(X, fitting=True)
        yy = np.asarray(y).astype(int)
        self.classes_ = np.array([0, 1])
        direction = self.direction
        if direction == "auto":
            direction = "greater" if roc_auc_score(yy, x) >= 0.5 else "less"
        self.direction_ = direction
        self.sign_ = 1.0 if direction == "greater" else -1.0
        thr, j = youden_threshold(self.sign_ * x, yy)
        self.threshold_ = self.sign_ * thr
        self.youden_j_ = j
        self.scale_ = float(np.std(x)) or 1.0
        z = (self.sign_ * (x - self.threshold_) / self.scale_).reshape(-1, 1)
        lr = LogisticRegression(fit_intercept=False, C=1e4).fit(z, yy)
        self.slope_ = max(float(lr.coef_[0, 0]), 1e-3)
        return self

    def decision_function(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Signed standardised distance to the cut-off (positive = rule positive)."""
        check_is_fitted(self, "threshold_")
        return self.sign_ * (self._column(X, fitting=False) - self.threshold_) / self.scale_

    def predict_proba(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """(N, 2) probabilities, monotone in the feature, 0.5 at the cut-off."""
        p = 1.0 / (1.0 + np.exp(-self.slope_ * self.decision_function(X)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """1 where the rule is positive (``x >= threshold_`` for ``direction_ == "greater"``)."""
        return (self.decision_function(X) >= 0).astype(int)
