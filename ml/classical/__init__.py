"""Classical AI baseline (no Django): scikit-learn pipelines, nested CV, external validation,
bootstrap CIs, calibration, Youden threshold rules and SHAP explanations.

Entry points: :func:`train_classical`, :func:`leave_one_site_out`,
:func:`predict_with_explanations`, :meth:`TrainedModel.load`.
"""
from ml.classical.evaluation import EvaluationResult, evaluate_predictions
from ml.classical.explain import ShapExplanation, shap_importance, shap_values
from ml.classical.metrics import MetricCI, binary_metrics, bootstrap_metrics
from ml.classical.model import TrainedModel
from ml.classical.pipelines import MODELS
from ml.classical.predict import Contribution, Prediction, predict_with_explanations
from ml.classical.tasks import TASKS, encode_labels, prepare_features
from ml.classical.thresholds import ThresholdRule, youden_threshold
from ml.classical.training import (
    LosoResult,
    TrainingResult,
    leave_one_site_out,
    train_classical,
    train_from_config,
)

__all__ = [
    "MODELS",
    "TASKS",
    "Contribution",
    "EvaluationResult",
    "LosoResult",
    "MetricCI",
    "Prediction",
    "ShapExplanation",
    "ThresholdRule",
    "TrainedModel",
    "TrainingResult",
    "binary_metrics",
    "bootstrap_metrics",
    "encode_labels",
    "evaluate_predictions",
    "leave_one_site_out",
    "predict_with_explanations",
    "prepare_features",
    "shap_importance",
    "shap_values",
    "train_classical",
    "train_from_config",
    "youden_threshold",
]
