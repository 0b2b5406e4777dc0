"""A trained classical model: fitted estimator + decision cut-off + the config that rebuilds it.

Saved with joblib as one file (``TrainedModel.save`` / ``TrainedModel.load``); the config dict
(task, model, seed, CV settings, feature list, library versions) is also what
:func:`ml.classical.training.train_from_config` needs to retrain it identically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from ml.classical.tasks import prepare_features

__all__ = ["TrainedModel"]


@dataclass(frozen=True)
class TrainedModel:
    """Fitted estimator and everything needed to use and explain it.

    Attributes:
        estimator: fitted Pipeline or :class:`~ml.classical.thresholds.ThresholdRule`.
        threshold: probability cut-off: decision positive when ``probability >= threshold``
            (Youden on out-of-fold training probabilities; 0.5 for the threshold rule, which is
            exactly its feature cut-off).
        feature_names: input columns, in order.
        task: ``progression``, ``idh`` or ``codeletion``.
        model: ``logreg``, ``rf``, ``svm`` or ``threshold``.
        positive_label / negative_label: class names of 1 / 0.
        background: training rows kept for SHAP (<= 50).
        best_params: hyper-parameters chosen by the inner CV.
        config: reproducibility config (JSON-safe).
    """

    estimator: BaseEstimator
    threshold: float
    feature_names: tuple[str, ...]
    task: str
    model: str
    positive_label: str
    negative_label: str
    background: pd.DataFrame
    best_params: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def align(self, features: pd.DataFrame) -> pd.DataFrame:
        """Numeric features in training column order; extra columns are ignored.

        Raises:
            ValueError: a training feature is missing.
        """
        df = prepare_features(features.drop(
            columns=[c for c in features.columns if c not in self.feature_names]
        ))
        missing = [c for c in self.feature_names if c not in df.columns]
        if missing:
            raise ValueError(f"features: missing columns the model was trained on: {missing}")
        return df[list(self.feature_names)]

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Probability of the positive class (N,)."""
        return self.estimator.predict_proba(self.align(features))[:, 1]

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Decisions at the stored cut-off (N,) bool."""
        return self.predict_proba(features) >= self.threshold

    def save(self, path: str | Path) -> Path:
        """Write the model as one joblib file."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, out)
        return out

    @staticmethod
    def load(path: str | Path) -> TrainedModel:
        """Read a model written by :meth:`save` (only load files you trust: joblib is pickle)."""
        obj = joblib.load(Path(path))
        if not isinstance(obj, TrainedModel):
            raise ValueError(f"{path}: not an AminoPET TrainedModel ({type(obj).__name__})")
        return obj
