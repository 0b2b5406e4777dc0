"""SHAP values of a trained classical model, per case and overall (Lundberg & Lee, NeurIPS 2017).

The appropriate explainer per model, on the features after imputation/scaling/selection, mapped
back to the input feature names (features dropped by the selection get 0):

* logistic regression: ``shap.LinearExplainer`` (exact, log-odds units):
  ``phi_j = w_j (z_j - E_bg[z_j])``;
* random forest: ``shap.TreeExplainer`` (exact TreeSHAP, probability units);
* SVM: ``shap.PermutationExplainer`` on the positive-class probability (model-agnostic,
  sampled; background <= 50 rows);
* threshold rule: the model depends on one feature, so its SHAP value is exactly
  ``f(x) - E_bg[f]`` (probability units), the others 0.

In every case ``base_value + sum_j phi_j`` equals the model output in ``output`` units
(local accuracy), up to the sampling error of the permutation explainer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shap
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from ml.classical.model import TrainedModel
from ml.classical.thresholds import ThresholdRule

__all__ = ["ShapExplanation", "shap_values", "shap_importance"]


@dataclass(frozen=True)
class ShapExplanation:
    """SHAP values (N, F) with the base value and the output units (``log-odds``/``probability``)."""

    values: np.ndarray
    base_value: float
    feature_names: tuple[str, ...]
    output: str
    cases: tuple[str, ...]

    def frame(self) -> pd.DataFrame:
        """Values as a DataFrame (cases x features)."""
        return pd.DataFrame(self.values, index=list(self.cases), columns=list(self.feature_names))


def shap_values(model: TrainedModel, features: pd.DataFrame, *, seed: int = 0) -> ShapExplanation:
    """SHAP values of ``model`` on ``features`` (module docstring for the explainer used)."""
    X = model.align(features)
    est = model.estimator
    bg = model.background[list(model.feature_names)]
    cases = tuple(str(i) for i in X.index)
    names = model.feature_names
    if isinstance(est, ThresholdRule):
        f = est.predict_proba(X)[:, 1]
        base = float(est.predict_proba(bg)[:, 1].mean())
        vals = np.zeros(X.shape)
        vals[:, est.feature_index_] = f - base
        return ShapExplanation(vals, base, names, "probability", cases)
    pre, clf = est[:-1], est[-1]
    Z = np.asarray(pre.transform(X), dtype=np.float64)
    Zb = np.asarray(pre.transform(bg), dtype=np.float64)
    support = est.named_steps["select"].get_support()
    if isinstance(clf, LogisticRegression):
        explainer = shap.LinearExplainer(clf, Zb)
        sv = np.asarray(explainer.shap_values(Z))
        base, output = float(np.ravel(explainer.expected_value)[0]), "log-odds"
    elif isinstance(clf, RandomForestClassifier):
        explainer = shap.TreeExplainer(clf)
        sv = np.asarray(explainer.shap_values(Z))
        sv = sv[..., 1] if sv.ndim == 3 else sv
        base, output = float(np.ravel(explainer.expected_value)[1]), "probability"
    else:
        masker = shap.maskers.Independent(Zb, max_samples=50)
        explainer = shap.PermutationExplainer(lambda z: clf.predict_proba(z)[:, 1], masker,
                                              seed=seed)
        res = explainer(Z, max_evals=max(200, 2 * Z.shape[1] + 1), silent=True)
        sv = np.asarray(res.values)
        base, output = float(np.ravel(res.base_values)[0]), "probability"
    vals = np.zeros((X.shape[0], len(names)))
    vals[:, support] = sv.reshape(X.shape[0], -1)
    return ShapExplanation(vals, base, names, output, cases)


def shap_importance(explanation: ShapExplanation) -> dict[str, float]:
    """Overall importance: mean |SHAP| per feature, sorted decreasing."""
    imp = np.abs(explanation.values).mean(axis=0)
    order = np.argsort(-imp, kind="stable")
    return {explanation.feature_names[i]: float(imp[i]) for i in order}
