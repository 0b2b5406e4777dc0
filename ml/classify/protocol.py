"""One evaluation protocol for every WP3 model family (CLAIM / TRIPOD+AI items).

Families (:data:`FAMILIES`, :func:`make_estimator`): ``foundation`` (WP1 encoder fine-tuned),
``probe`` (WP1 encoder frozen, linear probe), ``cnn`` (3D CNN from scratch), ``radiomics`` (clinical
PET parameters + IBSI radiomics, the classical pipeline of :mod:`ml.classical.pipelines`:
impute -> standardise -> SelectKBest -> logistic regression) and ``ts_rule`` (the clinical T/S max
rule, :class:`ml.classical.thresholds.ThresholdRule`). All are estimators over lists of
:class:`ml.foundation.data.ExamStack`, so they run through the same splits.

Splits (:func:`make_split`), all by PATIENT (every exam of a patient on one side):

1. test set: every exam of the external site ``test_site`` (never seen in training, tuning,
   calibration or thresholding), or without a site a stratified ``test_fraction`` of patients;
2. development patients (the other sites): a stratified ``label_fraction`` of them keep their
   labels (nested: for one seed, the 10 % patients are inside the 25 %, inside the 50 %...);
   at least 2 per class;
3. of the labelled patients, a stratified ``val_fraction`` (>= 1 per class) is the validation set:
   early stopping of the deep models, post-hoc calibration (Platt or isotonic) and the decision
   threshold (Youden on the calibrated validation probabilities) are fitted there only;
4. hyper-parameter tuning of the classical and probe models is an inner CV inside the training set.

:func:`run_split` fits one family on one split and evaluates it on the test cases with bootstrap
CIs, calibration slope/intercept/Brier before and after post-hoc calibration. :func:`learning_curve`
runs families x label fractions x seeds on one external site; :func:`leave_one_site_out` holds out
each site in turn. Seeds are fixed by the caller and stored in every result.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from ml.classical.pipelines import build_estimator, param_grid
from ml.classical.tasks import TASKS, encode_labels
from ml.classical.thresholds import youden_threshold
from ml.classify.inputs import stack_features
from ml.classify.metrics import (
    ClassificationReport,
    DeLongResult,
    PostHocCalibrator,
    classification_report,
    delong_test,
    stratified_delong,
)
from ml.classify.training import check_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ml.foundation.data import ExamStack

__all__ = [
    "FAMILIES",
    "TASK_TIMEPOINT",
    "LabelledCohort",
    "Split",
    "FoldResult",
    "LearningCurveResult",
    "LosoResult",
    "FeatureClassifier",
    "StackLoader",
    "make_estimator",
    "make_split",
    "run_split",
    "learning_curve",
    "learning_curve_figure",
    "summarise_learning_curve",
    "leave_one_site_out",
]

FAMILIES: tuple[str, ...] = ("foundation", "probe", "cnn", "radiomics", "ts_rule")
#: The exams each task is read on.
TASK_TIMEPOINT: dict[str, str] = {"progression": "suspected_recurrence", "idh": "initial_diagnosis",
                                  "codeletion": "initial_diagnosis"}
_LABEL_COLUMN = {"progression": "diagnosis", "idh": "idh", "codeletion": "codeletion_1p19q"}


# --- cohort -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelledCohort:
    """The labelled exams of one task.

    Attributes:
        task: ``progression``, ``idh`` or ``codeletion``.
        keys: exam keys (N,). patients: patient of each exam. sites: site of each exam.
        y: 0/1 labels (N,), 1 = the task's positive class (``progression``...).
        n_excluded: exams of the task's time point without a label.
    """

    task: str
    keys: tuple[str, ...]
    patients: tuple[str, ...]
    sites: tuple[str, ...]
    y: np.ndarray
    n_excluded: int = 0

    def __post_init__(self) -> None:
        n = len(self.keys)
        if not (len(self.patients) == len(self.sites) == np.size(self.y) == n):
            raise ValueError("LabelledCohort: keys, patients, sites and y must have the same length")
        if len(set(self.keys)) != n:
            raise ValueError("LabelledCohort: duplicate exam keys")

    @classmethod
    def from_index(cls, index: pd.DataFrame, task: str = "progression") -> LabelledCohort:
        """From a stack index (:func:`ml.foundation.data.load_index`: key index, columns site,
        patient, timepoint, diagnosis, idh, codeletion_1p19q): the task's time point, known labels."""
        if task not in TASKS:
            raise ValueError(f"task: one of {sorted(TASKS)}, got {task!r}")
        missing = {"site", "patient", "timepoint", _LABEL_COLUMN[task]} - set(index.columns)
        if missing:
            raise ValueError(f"index: missing columns {sorted(missing)}")
        rows = index[index["timepoint"] == TASK_TIMEPOINT[task]]
        y, excluded = encode_labels(rows[_LABEL_COLUMN[task]].astype(str), task)
        rows = rows.loc[y.index]
        return cls(task=task, keys=tuple(str(k) for k in rows.index), patients=tuple(rows["patient"].astype(str)),
                   sites=tuple(rows["site"].astype(str)), y=y.to_numpy().astype(int), n_excluded=len(excluded))

    def subset(self, keys: Sequence[str]) -> np.ndarray:
        """Labels of ``keys``, in that order."""
        pos = {k: i for i, k in enumerate(self.keys)}
        return self.y[[pos[k] for k in keys]]

    @property
    def site_names(self) -> list[str]:
        """Sorted site names."""
        return sorted(set(self.sites))


# --- splits -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """One train / validation / test partition of a cohort by patient (module docstring).

    Attributes:
        name: ``"external:<site>"`` or ``"internal"``.
        test_site: the held-out site, or None.
        seed: seed of the patient draws.
        label_fraction: fraction of development patients whose labels are used.
        val_fraction: fraction of the labelled patients used for validation.
        train, val, test: exam keys.
        unlabelled: development exams whose labels the fraction withheld (unused).
    """

    name: str
    test_site: str | None
    seed: int
    label_fraction: float
    val_fraction: float
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    unlabelled: tuple[str, ...] = ()

    def patients(self, cohort: LabelledCohort, part: str) -> set[str]:
        """Patients of ``part`` (``train``, ``val``, ``test``)."""
        pos = {k: i for i, k in enumerate(cohort.keys)}
        return {cohort.patients[pos[k]] for k in getattr(self, part)}

    def check(self, cohort: LabelledCohort) -> None:
        """ValueError when a patient is in two parts or the test site appears in training/validation."""
        tr, va, te = (self.patients(cohort, p) for p in ("train", "val", "test"))
        shared = (tr & va) | (tr & te) | (va & te)
        if shared:
            raise ValueError(f"split {self.name}: patients in two parts: {sorted(shared)[:5]}")
        if self.test_site is not None:
            pos = {k: i for i, k in enumerate(cohort.keys)}
            leaked = [k for k in (*self.train, *self.val) if cohort.sites[pos[k]] == self.test_site]
            if leaked:
                raise ValueError(f"split {self.name}: test-site exams in training/validation: {leaked[:5]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return {"name": self.name, "test_site": self.test_site, "seed": self.seed,
                "label_fraction": self.label_fraction, "val_fraction": self.val_fraction,
                "train": list(self.train), "val": list(self.val), "test": list(self.test),
                "n_unlabelled": len(self.unlabelled)}


def _patient_labels(cohort: LabelledCohort, keep: np.ndarray) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in np.flatnonzero(keep):
        out[cohort.patients[i]] = max(out.get(cohort.patients[i], 0), int(cohort.y[i]))
    return out


def _by_class(labels: dict[str, int], rng: np.random.Generator) -> dict[int, list[str]]:
    return {c: [p for p in rng.permutation(sorted(q for q, v in labels.items() if v == c))] for c in (0, 1)}


def make_split(
    cohort: LabelledCohort,
    *,
    test_site: str | None,
    seed: int = 0,
    label_fraction: float = 1.0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> Split:
    """Partition ``cohort`` by patient (module docstring).

    Args:
        cohort: the labelled exams.
        test_site: external test site; None: a stratified ``test_fraction`` of patients.
        seed: seed of every patient draw.
        label_fraction: in (0, 1], fraction of development patients (per class) that keep labels.
        val_fraction: in (0, 1), fraction of the labelled patients held for validation.
        test_fraction: internal test fraction when ``test_site`` is None.

    Raises:
        ValueError: unknown site, fractions out of range, too few patients of a class.
    """
    if not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction: must be in (0, 1], got {label_fraction}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: must be in (0, 1), got {val_fraction}")
    sites = np.asarray(cohort.sites)
    # one generator per purpose, so the labelled subsets are nested across fractions
    rng_test, rng_dev = (np.random.default_rng([seed, k]) for k in (1, 2))
    if test_site is not None:
        if test_site not in set(cohort.sites):
            raise ValueError(f"test_site: {test_site!r} not among the cohort's sites {cohort.site_names}")
        test_mask = sites == test_site
        name = f"external:{test_site}"
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction: must be in (0, 1), got {test_fraction}")
        labels = _patient_labels(cohort, np.ones(len(cohort.keys), bool))
        groups = _by_class(labels, rng_test)
        test_patients = {p for c in (0, 1) for p in groups[c][:max(1, round(test_fraction * len(groups[c])))]}
        test_mask = np.array([p in test_patients for p in cohort.patients])
        name = "internal"
    dev_patients = _patient_labels(cohort, ~test_mask)
    groups = _by_class(dev_patients, rng_dev)
    labelled: set[str] = set()
    val: set[str] = set()
    for c in (0, 1):
        n = len(groups[c])
        n_lab = max(2, math.ceil(label_fraction * n - 1e-9))
        if n < 2:
            raise ValueError(f"split {name}: {n} development patient(s) of class {c}; need at least 2")
        n_lab = min(n_lab, n)
        n_val = min(n_lab - 1, max(1, round(val_fraction * n_lab)))
        val.update(groups[c][:n_val])
        labelled.update(groups[c][:n_lab])
    keys = np.asarray(cohort.keys)
    pats = np.asarray(cohort.patients)
    in_val = np.array([p in val for p in pats]) & ~test_mask
    in_lab = np.array([p in labelled for p in pats]) & ~test_mask
    split = Split(name=name, test_site=test_site, seed=seed, label_fraction=float(label_fraction),
                  val_fraction=float(val_fraction), train=tuple(keys[in_lab & ~in_val]), val=tuple(keys[in_val]),
                  test=tuple(keys[test_mask]), unlabelled=tuple(keys[~test_mask & ~in_lab]))
    split.check(cohort)
    return split


# --- the classical families on stack features -----------------------------------------------------

_FEATURE_CACHE: dict[tuple, dict[str, float]] = {}


def _fingerprint(stack: Any) -> tuple:
    suv = np.asarray(stack.suv)
    return (stack.key, suv.shape, float(suv[::7, ::7, ::7].sum()))


def stack_feature_table(stacks: Sequence[ExamStack], *, radiomics: bool) -> pd.DataFrame:
    """Feature rows of :func:`ml.classify.inputs.stack_features` (cached per stack in the process)."""
    rows = []
    for s in stacks:
        key = (*_fingerprint(s), radiomics)
        if key not in _FEATURE_CACHE:
            _FEATURE_CACHE[key] = stack_features(s, radiomics=radiomics)
        rows.append(_FEATURE_CACHE[key])
    return pd.DataFrame(rows, index=[s.key for s in stacks]).astype(float)


class FeatureClassifier(ClassifierMixin, BaseEstimator):
    """The classical baseline on stack features (sklearn estimator over stacks).

    Args:
        model: ``"logreg"``, ``"rf"``, ``"svm"`` (:mod:`ml.classical.pipelines`) or ``"threshold"``.
        radiomics: add IBSI radiomics of the TBR to the clinical parameters.
        threshold_feature: the rule's feature (``"ts_max"``) for ``model="threshold"``.
        n_inner: inner CV folds for the hyper-parameter grid (on the training cases only).
        random_state: seed.

    Attributes:
        estimator_: the fitted sklearn estimator. best_params_: the inner CV's choice.
        feature_names_: columns used.
    """

    def __init__(self, *, model: str = "logreg", radiomics: bool = True, threshold_feature: str = "ts_max",
                 n_inner: int = 3, random_state: int = 0) -> None:
        self.model = model
        self.radiomics = radiomics
        self.threshold_feature = threshold_feature
        self.n_inner = n_inner
        self.random_state = random_state

    def _table(self, X: Sequence[ExamStack]) -> pd.DataFrame:
        table = stack_feature_table(X, radiomics=self.radiomics and self.model != "threshold")
        if hasattr(self, "feature_names_"):
            return table.reindex(columns=list(self.feature_names_))
        return table

    def fit(self, X: Sequence[ExamStack], y: Any, *, X_val: Sequence[ExamStack] | None = None,
            y_val: Any = None) -> FeatureClassifier:
        """Fit with an inner CV grid on the training cases (validation data unused here)."""
        yy = check_labels(X, y)
        if yy.min() == yy.max():
            raise ValueError("y: training labels hold one class only")
        table = self._table(X)
        table = table.loc[:, table.notna().any()]
        self.feature_names_ = tuple(table.columns)
        est = build_estimator(self.model, n_features=table.shape[1], seed=self.random_state,
                              threshold_feature=self.threshold_feature if self.model == "threshold" else None)
        n_min = int(min(yy.sum(), (1 - yy).sum()))
        grid = param_grid(self.model, n_features=table.shape[1])
        if grid and n_min >= 2:
            inner = StratifiedKFold(min(self.n_inner, n_min), shuffle=True, random_state=self.random_state)
            search = GridSearchCV(est, grid, cv=inner, scoring="roc_auc", refit=True, n_jobs=1,
                                  error_score=0.5).fit(table, yy)
            self.estimator_, self.best_params_ = search.best_estimator_, dict(search.best_params_)
        else:
            self.estimator_, self.best_params_ = clone(est).fit(table, yy), {}
        self.classes_ = np.array([0, 1])
        self.n_train_ = len(X)
        return self

    def predict_proba(self, X: Sequence[ExamStack]) -> np.ndarray:
        """(N, 2) probabilities.

        For the threshold rule: ``1/2 + arctan(z) / pi`` with ``z`` the rule's standardised distance
        to its cut-off (the decision at 0.5 is the rule's). This keeps every case's rank: on
        separable training data :class:`~ml.classical.thresholds.ThresholdRule` fits a huge slope
        and its logistic probabilities saturate to exactly 0 or 1 (as does any logistic map a few
        tens of SDs from the cut-off), which ties cases and lowers the rule's AUC below the
        feature's. Post-hoc calibration on validation data follows anyway.
        """
        check_is_fitted(self, "estimator_")
        table = self._table(X)
        if self.model == "threshold":
            p = 0.5 + np.arctan(self.estimator_.decision_function(table)) / np.pi
            return np.column_stack([1.0 - p, p])
        return self.estimator_.predict_proba(table)

    def predict(self, X: Sequence[ExamStack]) -> np.ndarray:
        """0/1 at 0.5."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def make_estimator(
    family: str, *, seed: int = 0, epochs: int = 30, encoder_path: str | None = None, device: str = "cpu",
    crop: int = 48, batch_size: int = 8, radiomics: bool = True, **kwargs: Any,
) -> BaseEstimator:
    """A fresh, unfitted estimator of ``family`` (:data:`FAMILIES`) with its seed.

    Args:
        family: ``foundation``, ``probe``, ``cnn``, ``radiomics`` or ``ts_rule``.
        seed: ``random_state`` of the estimator.
        epochs, device, crop, batch_size: deep-family training options.
        encoder_path: WP1 checkpoint for ``foundation``/``probe`` (None: random encoder).
        radiomics: the ``radiomics`` family adds IBSI features to the clinical parameters.
        **kwargs: more estimator parameters (e.g. ``lr``, ``arch``).
    """
    if family == "cnn":
        from ml.classify.cnn import CnnClassifier
        return CnnClassifier(epochs=epochs, device=device, crop=crop, batch_size=batch_size, random_state=seed,
                             **kwargs)
    if family in ("foundation", "probe"):
        from ml.classify.finetune import FoundationClassifier
        return FoundationClassifier(encoder_path=encoder_path, mode="finetune" if family == "foundation" else "probe",
                                    epochs=epochs, device=device, crop=crop, batch_size=batch_size,
                                    random_state=seed, **kwargs)
    if family == "radiomics":
        return FeatureClassifier(model=kwargs.get("model", "logreg"), radiomics=radiomics, random_state=seed)
    if family == "ts_rule":
        return FeatureClassifier(model="threshold", radiomics=False, threshold_feature="ts_max", random_state=seed)
    raise ValueError(f"family: one of {FAMILIES}, got {family!r}")


# --- running one split -----------------------------------------------------------------------------

class StackLoader:
    """Loads stacks by key from a stack index (``path`` column), keeping them in memory.

    Args:
        index: :func:`ml.foundation.data.load_index` table, or a ``{key: ExamStack}`` mapping.
    """

    def __init__(self, index: pd.DataFrame | Mapping[str, Any]) -> None:
        self.index = index
        self._cache: dict[str, Any] = {} if isinstance(index, pd.DataFrame) else dict(index)

    def __call__(self, keys: Sequence[str]) -> list[ExamStack]:
        """The stacks of ``keys``, in order."""
        from ml.foundation.data import load_stack

        out = []
        for k in keys:
            if k not in self._cache:
                if not isinstance(self.index, pd.DataFrame) or k not in self.index.index:
                    raise ValueError(f"no stack for exam {k!r}")
                self._cache[k] = load_stack(self.index.loc[k, "path"])
            out.append(self._cache[k])
        return out


@dataclass(frozen=True)
class FoldResult:
    """One family fitted on one split, evaluated on its test cases.

    Attributes:
        family: family name. split: the split (seed, fraction, keys).
        test_keys: test exams; y_test: their truth; prob_raw: the model's probabilities;
        prob: after post-hoc calibration (fitted on validation); threshold: Youden cut-off on the
        calibrated validation probabilities (0.5 when validation lacks a class).
        report: metrics of ``prob`` at ``threshold`` (bootstrap CIs, calibration).
        report_raw: metrics of ``prob_raw`` at the raw Youden cut-off.
        calibration_method: ``"platt"``, ``"isotonic"`` or ``"none"`` (validation without both classes).
        fit_seconds: wall time of the fit. n_train, n_val: labelled cases used.
        details: family-specific (best epoch, chosen C...).
    """

    family: str
    split: Split
    test_keys: tuple[str, ...]
    y_test: np.ndarray
    prob_raw: np.ndarray
    prob: np.ndarray
    threshold: float
    report: ClassificationReport
    report_raw: ClassificationReport
    calibration_method: str
    fit_seconds: float
    n_train: int
    n_val: int
    details: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """One flat table row."""
        m = self.report.metrics
        out = {"family": self.family, "split": self.split.name, "fraction": self.split.label_fraction,
               "seed": self.split.seed, "n_train": self.n_train, "n_val": self.n_val, "n_test": len(self.test_keys)}
        for k, v in m.items():
            out[k] = v.estimate
            out[f"{k}_lo"], out[f"{k}_hi"] = v.lower, v.upper
        c, cr = self.report.calibration, self.report_raw.calibration
        out.update({"brier": c.brier, "cal_slope": c.slope, "cal_intercept": c.intercept,
                    "brier_raw": cr.brier, "cal_slope_raw": cr.slope, "cal_intercept_raw": cr.intercept,
                    "threshold": self.threshold, "calibration": self.calibration_method,
                    "fit_seconds": self.fit_seconds})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (with per-case predictions)."""
        from ml.classical.evaluation import json_safe
        return json_safe({"family": self.family, "split": self.split.to_dict(), "report": self.report.to_dict(),
                          "report_raw": self.report_raw.to_dict(), "threshold": self.threshold,
                          "calibration_method": self.calibration_method, "fit_seconds": self.fit_seconds,
                          "cases": list(self.test_keys), "y_true": self.y_test.tolist(),
                          "prob": self.prob.tolist(), "prob_raw": self.prob_raw.tolist(), "details": self.details})


def _fit_details(est: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("best_epoch_", "probe_C_", "probe_inner_auc_", "best_params_", "train_seconds_"):
        if hasattr(est, name):
            out[name.rstrip("_")] = getattr(est, name)
    if hasattr(est, "history_"):
        out["history"] = est.history_
    return out


def run_split(
    estimator: BaseEstimator,
    cohort: LabelledCohort,
    split: Split,
    load: Callable[[Sequence[str]], list[ExamStack]],
    *,
    family: str = "",
    calibration: str = "platt",
    n_bootstrap: int = 1000,
) -> tuple[FoldResult, BaseEstimator, PostHocCalibrator | None]:
    """Fit ``estimator`` on the split's training cases, calibrate and threshold on validation, test.

    Args:
        estimator: unfitted estimator over stacks (``fit(X, y, X_val=, y_val=)``, ``predict_proba``).
        cohort: labels. split: the partition (checked for leakage first).
        load: keys -> stacks.
        family: name stored in the result.
        calibration: ``"platt"`` or ``"isotonic"``, fitted on the validation predictions.
        n_bootstrap: CI resamples (seeded with the split's seed).

    Returns:
        ``(result, fitted estimator, fitted calibrator or None)``.
    """
    if calibration not in ("platt", "isotonic"):
        raise ValueError(f"calibration: 'platt' or 'isotonic', got {calibration!r}")
    split.check(cohort)
    X_tr, X_va, X_te = load(split.train), load(split.val), load(split.test)
    y_tr, y_va, y_te = cohort.subset(split.train), cohort.subset(split.val), cohort.subset(split.test)
    t0 = time.perf_counter()
    est = clone(estimator).fit(X_tr, y_tr, X_val=X_va, y_val=y_va)
    fit_seconds = time.perf_counter() - t0
    p_val_raw = est.predict_proba(X_va)[:, 1] if len(X_va) else np.zeros(0)
    p_te_raw = est.predict_proba(X_te)[:, 1]
    both = len(y_va) > 0 and 0 < y_va.sum() < len(y_va)
    calibrator = PostHocCalibrator(calibration).fit(p_val_raw, y_va) if both else None
    p_val = calibrator.transform(p_val_raw) if calibrator else p_val_raw
    p_te = calibrator.transform(p_te_raw) if calibrator else p_te_raw
    thr = youden_threshold(p_val, y_va)[0] if both else 0.5
    thr_raw = youden_threshold(p_val_raw, y_va)[0] if both else 0.5
    name = f"{family or type(est).__name__} {split.name} f={split.label_fraction:g} seed={split.seed}"
    report = classification_report(name, y_te, p_te, threshold=thr, n_bootstrap=n_bootstrap, seed=split.seed)
    report_raw = classification_report(name + " (uncalibrated)", y_te, p_te_raw, threshold=thr_raw,
                                       n_bootstrap=n_bootstrap, seed=split.seed)
    result = FoldResult(family=family, split=split, test_keys=tuple(split.test), y_test=y_te, prob_raw=p_te_raw,
                        prob=p_te, threshold=float(thr), report=report, report_raw=report_raw,
                        calibration_method=calibration if calibrator else "none", fit_seconds=fit_seconds,
                        n_train=len(split.train), n_val=len(split.val), details=_fit_details(est))
    return result, est, calibrator


# --- learning curves and leave-one-site-out ----------------------------------------------------------

@dataclass(frozen=True)
class LearningCurveResult:
    """Families x label fractions x seeds on one external site.

    Attributes:
        folds: every :class:`FoldResult`. config: seeds, fractions, site, calibration...
    """

    folds: tuple[FoldResult, ...]
    config: dict[str, Any]

    def table(self) -> pd.DataFrame:
        """One row per (family, fraction, seed)."""
        return pd.DataFrame([f.row() for f in self.folds])

    def summary_frame(self) -> pd.DataFrame:
        """Per (family, fraction): mean and SD of the AUC over seeds, mean CI bounds, mean Brier."""
        return summarise_learning_curve(self.table())

    def fold(self, family: str, fraction: float, seed: int) -> FoldResult:
        """The fold of one family, fraction and seed."""
        for f in self.folds:
            if f.family == family and abs(f.split.label_fraction - fraction) < 1e-9 and f.split.seed == seed:
                return f
        raise ValueError(f"no fold for family={family!r} fraction={fraction} seed={seed}")

    def delong(self, family_a: str, family_b: str, *, fraction: float = 1.0) -> list[DeLongResult]:
        """Paired DeLong tests of two families on the same external cases, one per seed."""
        out = []
        for seed in self.config["seeds"]:
            a, b = self.fold(family_a, fraction, seed), self.fold(family_b, fraction, seed)
            if a.test_keys != b.test_keys:
                raise ValueError("delong: the two folds were not tested on the same cases")
            out.append(delong_test(a.y_test, a.prob, b.prob))  # the probabilities the table reports
        return out

    def figure(self) -> Figure:
        """AUC on the external site vs label fraction: per-seed points, mean line, mean 95% CI band."""
        return learning_curve_figure(self.table(), test_site=self.config.get("test_site"))


def summarise_learning_curve(table: pd.DataFrame) -> pd.DataFrame:
    """Per (family, fraction) of a table with one row per run (columns ``family``, ``fraction``,
    ``seed``, ``auc``, ``auc_lo``, ``auc_hi`` and optionally ``n_train``, ``brier``, ``cal_slope``):
    mean and SD of the AUC over seeds, mean CI bounds, the other columns' means."""
    t = table.copy()
    for col in ("n_train", "brier", "cal_slope"):
        if col not in t.columns:
            t[col] = np.nan
    g = t.groupby(["family", "fraction"], sort=False)
    out = g.agg(n_train=("n_train", "mean"), seeds=("seed", "count"), auc_mean=("auc", "mean"),
                auc_sd=("auc", "std"), auc_lo=("auc_lo", "mean"), auc_hi=("auc_hi", "mean"),
                brier=("brier", "mean"), cal_slope=("cal_slope", "median"))
    return out.reset_index()


def learning_curve_figure(table: pd.DataFrame, *, test_site: str | None) -> Figure:
    """The label-efficiency plot of a run table (see :func:`summarise_learning_curve`): AUC on the
    external site vs label fraction, per-seed points, mean line, mean 95% CI band, one colour a family."""
    from matplotlib.figure import Figure

    s = summarise_learning_curve(table).sort_values(["family", "fraction"], kind="stable")
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.subplots()
    for i, (fam, part) in enumerate(s.groupby("family", sort=False)):
        colour = f"C{i}"
        x = part["fraction"].to_numpy() * 100
        ax.plot(x, part["auc_mean"], "-o", color=colour, label=fam)
        ax.fill_between(x, part["auc_lo"], part["auc_hi"], color=colour, alpha=0.12)
        pts = table[table["family"] == fam]
        ax.scatter(pts["fraction"] * 100, pts["auc"], color=colour, s=10, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xticks([10, 25, 50, 100], labels=["10%", "25%", "50%", "100%"])
    ax.set_xlabel("training labels used")
    ax.set_ylabel(f"AUC on {test_site} (external)")
    ax.set_ylim(0.3, 1.0)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Label efficiency (mean of seeds, band: mean bootstrap 95% CI)", fontsize=9)
    fig.tight_layout()
    return fig


def learning_curve(
    estimators: Mapping[str, Callable[[int], BaseEstimator]],
    cohort: LabelledCohort,
    load: Callable[[Sequence[str]], list[ExamStack]],
    *,
    test_site: str,
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    val_fraction: float = 0.2,
    calibration: str = "platt",
    n_bootstrap: int = 1000,
    progress: Callable[[str], None] | None = None,
) -> LearningCurveResult:
    """Every family at every label fraction and seed, tested on ``test_site``.

    Args:
        estimators: ``{family: seed -> unfitted estimator}`` (e.g. ``partial(make_estimator, "cnn")``
            wrapped to take the seed).
        cohort, load: labels and stack loader.
        test_site: the external site (never in training).
        fractions, seeds: the grid (splits are shared by all families at a fraction and seed).
        val_fraction, calibration, n_bootstrap: see :func:`make_split` / :func:`run_split`.
        progress: called with a line per finished fold.
    """
    folds = []
    for seed in seeds:
        for fraction in fractions:
            split = make_split(cohort, test_site=test_site, seed=seed, label_fraction=fraction,
                               val_fraction=val_fraction)
            for family, factory in estimators.items():
                result, _, _ = run_split(factory(seed), cohort, split, load, family=family,
                                         calibration=calibration, n_bootstrap=n_bootstrap)
                folds.append(result)
                if progress:
                    m = result.report.metrics["auc"]
                    progress(f"{family:<11} f={fraction:<5g} seed={seed} n_train={result.n_train:<4d} "
                             f"AUC {m.estimate:.3f} [{m.lower:.3f}, {m.upper:.3f}] ({result.fit_seconds:.0f} s)")
    config = {"task": cohort.task, "test_site": test_site, "fractions": [float(f) for f in fractions],
              "seeds": [int(s) for s in seeds], "val_fraction": val_fraction, "calibration": calibration,
              "n_bootstrap": n_bootstrap, "families": list(estimators), "versions": _versions()}
    return LearningCurveResult(tuple(folds), config)


@dataclass(frozen=True)
class LosoResult:
    """Leave-one-site-out of one family: a fold per held-out site and the pooled test predictions."""

    folds: tuple[FoldResult, ...]
    pooled: ClassificationReport
    config: dict[str, Any]

    def summary(self) -> str:
        """Plain text, pooled first."""
        return "\n".join([self.pooled.summary(), *(f.report.summary() for f in self.folds)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return {"config": self.config, "pooled": self.pooled.to_dict(),
                "per_site": {f.split.test_site: f.to_dict() for f in self.folds}}

    def delong(self, other: LosoResult) -> tuple[DeLongResult, list[DeLongResult]]:
        """Paired DeLong tests of this family against ``other``, one per held-out site (same cases, each
        judged by the models that did not see its site), and their site-stratified combination
        (:func:`~ml.classify.metrics.stratified_delong`): ``(combined, per_site)``.

        Raises:
            ValueError: the two runs did not hold out the same cases.
        """
        if [f.test_keys for f in self.folds] != [f.test_keys for f in other.folds]:
            raise ValueError("delong: the two leave-one-site-out runs did not hold out the same cases")
        per_site = [delong_test(a.y_test, a.prob, b.prob) for a, b in zip(self.folds, other.folds, strict=True)]
        return stratified_delong(per_site), per_site


def leave_one_site_out(
    factory: Callable[[int], BaseEstimator] | Mapping[str, Callable[[int], BaseEstimator]],
    cohort: LabelledCohort,
    load: Callable[[Sequence[str]], list[ExamStack]],
    *,
    family: str = "",
    seed: int = 0,
    label_fraction: float = 1.0,
    val_fraction: float = 0.2,
    calibration: str = "platt",
    n_bootstrap: int = 1000,
    progress: Callable[[str], None] | None = None,
) -> LosoResult:
    """Hold out each site in turn (train/validate on the others); pooled metrics over all held-out cases.

    Each case is judged at the threshold of the model that did not see its site. ``factory``: one
    estimator factory for every fold, or one per held-out site (``{site: factory}``; e.g. a foundation
    family whose encoder was pretrained without that site, so no fold's model has seen its test
    images even unlabelled).

    Raises:
        ValueError: fewer than 2 sites; a site without its factory.
    """
    if len(cohort.site_names) < 2:
        raise ValueError(f"leave-one-site-out needs >= 2 sites, got {cohort.site_names}")
    if isinstance(factory, Mapping):
        missing = [s for s in cohort.site_names if s not in factory]
        if missing:
            raise ValueError(f"leave-one-site-out: no estimator factory for the held-out site(s) {missing}")
    folds = []
    for site in cohort.site_names:
        split = make_split(cohort, test_site=site, seed=seed, label_fraction=label_fraction,
                           val_fraction=val_fraction)
        make = factory[site] if isinstance(factory, Mapping) else factory
        result, _, _ = run_split(make(seed), cohort, split, load, family=family, calibration=calibration,
                                 n_bootstrap=n_bootstrap)
        folds.append(result)
        if progress:
            progress(f"{family} held-out {site}: AUC {result.report.metrics['auc'].estimate:.3f}")
    y = np.concatenate([f.y_test for f in folds])
    p = np.concatenate([f.prob for f in folds])
    thr = np.concatenate([np.full(len(f.y_test), f.threshold) for f in folds])
    from ml.classical.metrics import bootstrap_metrics
    from ml.classify.metrics import calibration_stats
    pooled = ClassificationReport(name=f"{family} leave-one-site-out (pooled)",
                                  metrics=bootstrap_metrics(y, p, thr, n_boot=n_bootstrap, seed=seed),
                                  calibration=calibration_stats(y, p), threshold=float("nan"), n=int(y.size),
                                  n_positive=int(y.sum()), n_bootstrap=n_bootstrap, seed=seed)
    config = {"family": family, "seed": seed, "label_fraction": label_fraction, "val_fraction": val_fraction,
              "calibration": calibration, "sites": cohort.site_names, "versions": _versions()}
    return LosoResult(tuple(folds), pooled, config)


def _versions() -> dict[str, str]:
    import sklearn
    import torch
    try:
        import monai
        monai_v = monai.__version__
    except ImportError:  # pragma: no cover
        monai_v = "n/a"
    return {"torch": torch.__version__, "monai": monai_v, "sklearn": sklearn.__version__, "numpy": np.__version__}
