"""Training of the classical baseline: nested CV, final model, external (held-out site) test.

Protocol (Varma & Simon, BMC Bioinformatics 2006 for nested CV; Steyerberg, Clinical Prediction
Models, 2nd ed., ch. 17 for external validation):

1. development set = all sites, or all but ``external_site``;
2. nested CV on the development set: outer stratified K-fold (``n_outer``); in each outer
   training part, an inner stratified CV (``n_inner``) picks hyper-parameters by AUC, then the
   decision cut-off is chosen by Youden on the inner out-of-fold probabilities; the outer test
   fold gets probabilities and decisions at that cut-off -> "cross-validation" metrics;
3. the final model is fitted the same way on the whole development set (its cut-off stored);
4. if ``external_site`` is given, the final model is evaluated on that site at the stored cut-off
   -> "external" metrics. :func:`leave_one_site_out` repeats 3-4 for every site.

Everything is reproducible from the returned ``config`` plus the data
(:func:`train_from_config`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shap
import sklearn
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict

from ml.classical.evaluation import EvaluationResult, evaluate_predictions, json_safe
from ml.classical.explain import shap_importance, shap_values
from ml.classical.model import TrainedModel
from ml.classical.pipelines import MODELS, build_estimator, param_grid
from ml.classical.tasks import TASKS, encode_labels, prepare_features
from ml.classical.thresholds import ThresholdRule, youden_threshold

__all__ = [
    "TrainingResult",
    "LosoResult",
    "train_classical",
    "train_from_config",
    "leave_one_site_out",
]

_BACKGROUND_ROWS = 50


def _n_splits(y: np.ndarray, wanted: int, what: str) -> int:
    n_min = int(min(np.sum(y == 1), np.sum(y == 0)))
    k = min(wanted, n_min)
    if k < 2:
        raise ValueError(f"{what}: the smaller class has {n_min} case(s); need at least 2 for CV")
    return k


def _fit_with_threshold(
    model: str, X: pd.DataFrame, y: np.ndarray, *, seed: int, n_inner: int, k_features: int,
    threshold_feature: str | None,
) -> tuple[BaseEstimator, float, dict[str, Any]]:
    """Inner CV: grid search by AUC, Youden cut-off on inner out-of-fold probabilities."""
    est = build_estimator(model, n_features=X.shape[1], seed=seed, k_features=k_features,
                          threshold_feature=threshold_feature)
    if model == "threshold":
        return est.fit(X, y), 0.5, {}
    inner = StratifiedKFold(_n_splits(y, n_inner, "inner CV"), shuffle=True, random_state=seed)
    search = GridSearchCV(est, param_grid(model, n_features=X.shape[1]), cv=inner,
                          scoring="roc_auc", refit=True, n_jobs=1)
    search.fit(X, y)
    oof = cross_val_predict(clone(search.best_estimator_), X, y, cv=inner,
                            method="predict_proba")[:, 1]
    threshold, _ = youden_threshold(oof, y)
    return search.best_estimator_, threshold, dict(search.best_params_)


@dataclass(frozen=True)
class TrainingResult:
    """Result of :func:`train_classical`.

    Attributes:
        model: the final model (fitted on the development set).
        cv: nested cross-validation on the development set.
        external: evaluation on ``config["external_site"]``, or None.
        importance: mean |SHAP| per feature on the development set, decreasing.
        config: reproducibility config (JSON-safe).
        n_excluded: cases left out for a missing label.
    """

    model: TrainedModel
    cv: EvaluationResult
    external: EvaluationResult | None
    importance: dict[str, float]
    config: dict[str, Any]
    n_excluded: int

    def summary(self) -> str:
        """Plain-text report: config, CV and external metrics, top features."""
        c = self.config
        lines = [
            f"task={c['task']} model={c['model']} seed={c['seed']} "
            f"external_site={c['external_site']} threshold={self.model.threshold:.4f}",
            self.cv.summary(),
        ]
        if self.external is not None:
            lines.append(self.external.summary())
        rule = self.rule()
        if rule is not None:
            sign = ">=" if rule["direction"] == "greater" else "<="
            lines.append(f"rule: {rule['feature']} {sign} {rule['cutoff']:.4g} "
                         f"(Youden J {rule['youden_j']:.3f} on the development set)")
        top = list(self.importance.items())[:5]
        lines.append("top features (mean |SHAP|): " + ", ".join(f"{k}={v:.3g}" for k, v in top))
        return "\n".join(lines)

    def rule(self) -> dict[str, Any] | None:
        """The threshold rule in feature units (``model="threshold"`` only), else None."""
        est = self.model.estimator
        if not isinstance(est, ThresholdRule):
            return None
        return {"feature": self.config["threshold_feature"], "cutoff": float(est.threshold_),
                "direction": est.direction_, "youden_j": float(est.youden_j_)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict for the model registry."""
        return json_safe({
            "config": self.config,
            "threshold": self.model.threshold,
            "rule": self.rule(),
            "best_params": {k: _jsonable(v) for k, v in self.model.best_params.items()},
            "cv": self.cv.to_dict(),
            "external": None if self.external is None else self.external.to_dict(),
            "importance": self.importance,
            "n_excluded": self.n_excluded,
        })

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``model.joblib``, ``result.json`` and the PNG plots side by side."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        out = {"model": self.model.save(d / "model.joblib")}
        (d / "result.json").write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        out["result"] = d / "result.json"
        for ev, tag in ((self.cv, "cv"), (self.external, "external")):
            if ev is not None:
                for kind, fig in (("roc", ev.roc_figure()), ("calibration", ev.calibration_figure())):
                    path = d / f"{tag}_{kind}.png"
                    fig.savefig(path, format="png")
                    out[f"{tag}_{kind}"] = path
        return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _inputs(
    features: pd.DataFrame, labels: pd.Series, sites: pd.Series, task: str, model: str
) -> tuple[pd.DataFrame, np.ndarray, pd.Series, int]:
    if model not in MODELS:
        raise ValueError(f"model: one of {MODELS}, got {model!r}")
    if not (features.index.equals(labels.index) and features.index.equals(sites.index)):
        raise ValueError("features/labels/sites: must share the same index (one row per exam)")
    if not features.index.is_unique:
        raise ValueError("features: the index (exam identifiers) has duplicates")
    y, excluded = encode_labels(labels, task)
    X = prepare_features(features.loc[y.index])
    return X, y.to_numpy(), sites.loc[y.index].astype(str), len(excluded)


def train_classical(
    features: pd.DataFrame,
    labels: pd.Series,
    sites: pd.Series,
    *,
    task: str,
    model: str = "logreg",
    external_site: str | None = None,
    seed: int = 0,
    n_outer: int = 5,
    n_inner: int = 3,
    n_bootstrap: int = 1000,
    k_features: int = 10,
    threshold_feature: str | None = None,
) -> TrainingResult:
    """Nested CV, final fit and optional external-site test (module docstring).

    Args:
        features: one row per exam (index = exam id), numeric columns (``curve_class`` and the
            id columns ``site``/``patient``/``exam`` are handled by
            :func:`~ml.classical.tasks.prepare_features`); NaN allowed (median-imputed).
        labels: task labels (``progression``/``treatment_related``, ``mutant``/``wildtype``,
            ``codeleted``/``intact``, or 0/1), same index; ``n/a`` rows are excluded.
        sites: site of each exam, same index.
        task: ``progression``, ``idh`` or ``codeletion``.
        model: ``logreg``, ``rf``, ``svm`` or ``threshold`` (clinical rule on one feature).
        external_site: site held out for external validation.
        seed: seed of CV splits, classifiers and bootstrap.
        n_outer / n_inner: folds of the outer / inner CV (capped by the smaller class).
        n_bootstrap: bootstrap resamples of the CIs.
        k_features: default SelectKBest size (the inner grid tries 5/10/20).
        threshold_feature: column of the threshold rule (e.g. ``"ts_max"``); required for
            ``model="threshold"``.

    Raises:
        ValueError: misaligned inputs, unknown task/model/site, too few cases per class.
    """
    if model == "threshold" and threshold_feature is None:
        raise ValueError("threshold_feature: required with model='threshold' (e.g. 'tbr_max')")
    X, y, site, n_excluded = _inputs(features, labels, sites, task, model)
    if external_site is not None:
        if external_site not in set(site):
            raise ValueError(f"external_site: {external_site!r} not among sites {sorted(set(site))}")
        dev = (site != external_site).to_numpy()
    else:
        dev = np.ones(len(y), dtype=bool)
    Xd, yd = X[dev], y[dev]
    fit_kw = dict(seed=seed, n_inner=n_inner, k_features=k_features,
                  threshold_feature=threshold_feature)
    outer = StratifiedKFold(_n_splits(yd, n_outer, "outer CV"), shuffle=True, random_state=seed)
    prob = np.zeros(len(yd))
    thr = np.zeros(len(yd))
    for train, test in outer.split(Xd, yd):
        est, cut, _ = _fit_with_threshold(model, Xd.iloc[train], yd[train], **fit_kw)
        prob[test] = est.predict_proba(Xd.iloc[test])[:, 1]
        thr[test] = cut
    cv = evaluate_predictions("cross-validation", yd, prob, thr, cases=tuple(Xd.index),
                              n_bootstrap=n_bootstrap, seed=seed)
    est, cut, best = _fit_with_threshold(model, Xd, yd, **fit_kw)
    config = {
        "task": task, "model": model, "external_site": external_site, "seed": seed,
        "n_outer": n_outer, "n_inner": n_inner, "n_bootstrap": n_bootstrap,
        "k_features": k_features, "threshold_feature": threshold_feature,
        "features": list(X.columns), "n_development": int(dev.sum()),
        "development_sites": sorted(set(site[dev])),
        "versions": {"sklearn": sklearn.__version__, "shap": shap.__version__,
                     "numpy": np.__version__},
    }
    pos, neg = TASKS[task]
    rng = np.random.default_rng(seed)
    bg_idx = np.sort(rng.choice(len(yd), size=min(_BACKGROUND_ROWS, len(yd)), replace=False))
    trained = TrainedModel(
        estimator=est, threshold=float(cut), feature_names=tuple(X.columns), task=task,
        model=model, positive_label=pos, negative_label=neg, background=Xd.iloc[bg_idx].copy(),
        best_params=best, config=config,
    )
    external = None
    if external_site is not None:
        Xe, ye = X[~dev], y[~dev]
        external = evaluate_predictions(
            f"external:{external_site}", ye, trained.predict_proba(Xe), trained.threshold,
            cases=tuple(Xe.index), n_bootstrap=n_bootstrap, seed=seed,
        )
    rows = Xd if model != "svm" else Xd.iloc[bg_idx]  # permutation SHAP is the slow one
    importance = shap_importance(shap_values(trained, rows, seed=seed))
    return TrainingResult(trained, cv, external, importance, config, n_excluded)


_CONFIG_KEYS = ("task", "model", "external_site", "seed", "n_outer", "n_inner", "n_bootstrap",
                "k_features", "threshold_feature")


def train_from_config(
    features: pd.DataFrame, labels: pd.Series, sites: pd.Series, config: dict[str, Any]
) -> TrainingResult:
    """Retrain from a stored ``TrainingResult.config`` (same data + config -> same model)."""
    kw = {k: config[k] for k in _CONFIG_KEYS if k in config}
    cols = config.get("features")
    if cols:
        missing = [c for c in cols if c not in features.columns]
        if missing:
            raise ValueError(f"features: columns of the stored config are missing: {missing}")
        features = features[list(cols)]
    return train_classical(features, labels, sites, **kw)


@dataclass(frozen=True)
class LosoResult:
    """Leave-one-site-out: one external evaluation per site plus the pooled held-out predictions."""

    per_site: dict[str, EvaluationResult]
    pooled: EvaluationResult
    config: dict[str, Any]

    def summary(self) -> str:
        """Plain-text report, pooled first."""
        return "\n".join([self.pooled.summary(), *(e.summary() for e in self.per_site.values())])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return json_safe({"config": self.config, "pooled": self.pooled.to_dict(),
                          "per_site": {k: v.to_dict() for k, v in self.per_site.items()}})


def leave_one_site_out(
    features: pd.DataFrame,
    labels: pd.Series,
    sites: pd.Series,
    *,
    task: str,
    model: str = "logreg",
    seed: int = 0,
    n_inner: int = 3,
    n_bootstrap: int = 1000,
    k_features: int = 10,
    threshold_feature: str | None = None,
) -> LosoResult:
    """Train on all sites but one (inner CV for hyper-parameters and cut-off), test on it; repeat.

    Per-site metrics are NaN where the held-out site has one class only (AUC, Se or Sp undefined);
    the pooled evaluation concatenates every held-out prediction.
    """
    if model == "threshold" and threshold_feature is None:
        raise ValueError("threshold_feature: required with model='threshold'")
    X, y, site, _ = _inputs(features, labels, sites, task, model)
    names = sorted(set(site))
    if len(names) < 2:
        raise ValueError(f"sites: leave-one-site-out needs at least 2 sites, got {names}")
    prob = np.zeros(len(y))
    thr = np.zeros(len(y))
    per_site: dict[str, EvaluationResult] = {}
    for name in names:
        test = (site == name).to_numpy()
        est, cut, _ = _fit_with_threshold(model, X[~test], y[~test], seed=seed, n_inner=n_inner,
                                          k_features=k_features,
                                          threshold_feature=threshold_feature)
        prob[test] = est.predict_proba(X[test])[:, 1]
        thr[test] = cut
        per_site[name] = evaluate_predictions(
            f"external:{name}", y[test], prob[test], cut, cases=tuple(X.index[test]),
            n_bootstrap=n_bootstrap, seed=seed)
    pooled = evaluate_predictions("leave-one-site-out (pooled)", y, prob, thr,
                                  cases=tuple(X.index), n_bootstrap=n_bootstrap, seed=seed)
    config = {"task": task, "model": model, "seed": seed, "n_inner": n_inner,
              "n_bootstrap": n_bootstrap, "k_features": k_features,
              "threshold_feature": threshold_feature, "sites": names}
    return LosoResult(per_site, pooled, config)
