"""scikit-learn Pipelines of the classical baseline and their hyper-parameter grids.

Every model is ``impute (median) -> standardise -> SelectKBest(ANOVA F) -> classifier``, so the
whole preprocessing is learned inside each training fold (no leakage across CV folds). The
threshold rule (``"threshold"``) is a single :class:`~ml.classical.thresholds.ThresholdRule`.
"""
from __future__ import annotations

from typing import Any

from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ml.classical.thresholds import ThresholdRule

__all__ = ["MODELS", "build_estimator", "param_grid"]

MODELS: tuple[str, ...] = ("logreg", "rf", "svm", "threshold")


def _classifier(model: str, seed: int) -> BaseEstimator:
    if model == "logreg":
        return LogisticRegression(C=1.0, max_iter=5000)
    if model == "rf":
        return RandomForestClassifier(n_estimators=200, min_samples_leaf=2, random_state=seed,
                                      n_jobs=1)
    if model == "svm":
        # Platt scaling on held-out folds (SVC(probability=True) is deprecated in sklearn 1.9).
        return CalibratedClassifierCV(SVC(kernel="rbf", C=1.0, random_state=seed),
                                      method="sigmoid", cv=3, ensemble=False)
    raise ValueError(f"model: one of {MODELS}, got {model!r}")


def build_estimator(
    model: str, *, n_features: int, seed: int = 0, k_features: int = 10,
    threshold_feature: str | None = None,
) -> BaseEstimator:
    """The untrained estimator for ``model``.

    Args:
        model: ``"logreg"``, ``"rf"``, ``"svm"`` or ``"threshold"``.
        n_features: number of input columns (caps ``k_features``).
        seed: random state of the stochastic classifiers.
        k_features: features kept by SelectKBest (the grid may change it).
        threshold_feature: column of the threshold rule (e.g. ``"ts_max"``, ``"tbr_max"``).
    """
    if model == "threshold":
        return ThresholdRule(feature=threshold_feature, direction="auto")
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("select", SelectKBest(f_classif, k=min(k_features, n_features))),
        ("clf", _classifier(model, seed)),
    ])


def param_grid(model: str, *, n_features: int) -> dict[str, list[Any]]:
    """Small inner-CV grid (kept small: the nested CV runs on 2 shared CPU cores)."""
    ks = sorted({min(k, n_features) for k in (5, 10, 20)})
    grids: dict[str, dict[str, list[Any]]] = {
        "logreg": {"select__k": ks, "clf__C": [0.1, 1.0, 10.0]},
        "rf": {"select__k": ks, "clf__max_depth": [3, None]},
        "svm": {"select__k": ks, "clf__estimator__C": [0.3, 3.0]},
        "threshold": {},
    }
    if model not in grids:
        raise ValueError(f"model: one of {MODELS}, got {model!r}")
    return grids[model]
