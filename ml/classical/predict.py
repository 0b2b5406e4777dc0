"""Predictions with explanations: what the reader study's aided arm shows for each exam.

For each case: probability of the positive class, decision at the model's stored cut-off, and the
``top_k`` SHAP contributions (feature, its value, its SHAP value in the model's output units; see
:mod:`ml.classical.explain`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ml.classical.explain import shap_values
from ml.classical.model import TrainedModel

__all__ = ["Contribution", "Prediction", "predict_with_explanations"]


@dataclass(frozen=True)
class Contribution:
    """One feature's SHAP contribution to one prediction (``value`` None when missing)."""

    feature: str
    value: float | None
    shap: float


@dataclass(frozen=True)
class Prediction:
    """One case's prediction.

    Attributes:
        case: the features' index label, as str.
        probability: P(positive class).
        decision: ``probability >= threshold``.
        label: ``positive_label`` if decision else ``negative_label``.
        threshold: the model's probability cut-off.
        base_value: SHAP expected value (``output`` units).
        output: ``"log-odds"`` or ``"probability"``: units of base_value and SHAP values.
        contributions: top contributions by |SHAP|, decreasing.
    """

    case: str
    probability: float
    decision: bool
    label: str
    threshold: float
    base_value: float
    output: str
    contributions: tuple[Contribution, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "case": self.case, "probability": self.probability, "decision": self.decision,
            "label": self.label, "threshold": self.threshold, "base_value": self.base_value,
            "output": self.output,
            "contributions": [
                {"feature": c.feature, "value": c.value, "shap": c.shap}
                for c in self.contributions
            ],
        }


def predict_with_explanations(
    model: TrainedModel, features: pd.DataFrame, *, top_k: int = 5, seed: int = 0
) -> list[Prediction]:
    """Predict every row of ``features`` with its top-``top_k`` SHAP contributions.

    Args:
        model: a trained model (:class:`~ml.classical.model.TrainedModel`).
        features: one row per exam, containing at least the model's feature columns.
        top_k: contributions kept per case.
        seed: seed of the permutation explainer (SVM only).
    """
    X = model.align(features)
    prob = model.estimator.predict_proba(X)[:, 1]
    expl = shap_values(model, X, seed=seed)
    out = []
    for i, case in enumerate(expl.cases):
        row = expl.values[i]
        order = sorted(range(len(row)), key=lambda j: -abs(row[j]))[:top_k]
        contribs = tuple(
            Contribution(
                feature=expl.feature_names[j],
                value=None if math.isnan(X.iat[i, j]) else float(X.iat[i, j]),
                shap=float(row[j]),
            )
            for j in order
        )
        decision = bool(prob[i] >= model.threshold)
        out.append(Prediction(
            case=case, probability=float(prob[i]), decision=decision,
            label=model.positive_label if decision else model.negative_label,
            threshold=model.threshold, base_value=expl.base_value, output=expl.output,
            contributions=contribs,
        ))
    return out
