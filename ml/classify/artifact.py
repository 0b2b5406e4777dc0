"""A trained WP3 classifier as one file: estimator, post-hoc calibrator, threshold and config.

:class:`TrainedClassifier` is what the platform registers for the families trained by
:mod:`ml.classify.protocol` (scratch CNN, fine-tuned / probed foundation encoder, and the stack-based
radiomics model and T/S max rule). ``predict_proba`` returns CALIBRATED probabilities (the
calibrator was fitted on the validation split only), ``decide`` applies the threshold chosen there.
For the deep families :meth:`TrainedClassifier.explain` gives a voxel attribution map on the exam's
grid (:func:`ml.explain.attributions.attribution_map` on the lesion-centred crop, pasted back at
its place, zero elsewhere).

File format: a ``torch.save`` dict (``format = "aminopet-classifier/1"``) holding the deep
estimator's state (:meth:`ml.classify.training.DeepClassifier.state_bytes`) or the pickled sklearn
estimator, the pickled calibrator, the threshold and the config. Only load files this platform
wrote (pickle).
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ml.classify.metrics import PostHocCalibrator

if TYPE_CHECKING:
    from ml.foundation.data import ExamStack

__all__ = ["ARTIFACT_FORMAT", "DEEP_FAMILIES", "TrainedClassifier"]

ARTIFACT_FORMAT = "aminopet-classifier/1"
DEEP_FAMILIES: tuple[str, ...] = ("cnn", "foundation", "probe")


@dataclass(frozen=True)
class TrainedClassifier:
    """A fitted family with its calibration and decision threshold.

    Attributes:
        family: ``cnn``, ``foundation``, ``probe``, ``radiomics`` or ``ts_rule``.
        estimator: the fitted estimator over stacks.
        calibrator: fitted on validation predictions, or None (validation lacked a class).
        threshold: decision cut-off on the calibrated probability (Youden on validation).
        config: the run's configuration (seed, split, hyper-parameters, versions).
    """

    family: str
    estimator: Any
    calibrator: PostHocCalibrator | None
    threshold: float
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_deep(self) -> bool:
        """True for the torch families (explanation maps available)."""
        return self.family in DEEP_FAMILIES

    def predict_proba(self, stacks: Sequence[ExamStack]) -> np.ndarray:
        """Calibrated probability of the positive class (N,)."""
        raw = self.estimator.predict_proba(list(stacks))[:, 1]
        return self.calibrator.transform(raw) if self.calibrator is not None else raw

    def decide(self, prob: np.ndarray) -> np.ndarray:
        """``prob >= threshold`` (bool, N)."""
        return np.asarray(prob) >= self.threshold

    def explain(self, stack: ExamStack, *, method: str = "integrated_gradients", **kw: Any) -> np.ndarray:
        """Attribution map (X, Y, Z) on the stack's grid, in [0, 1], zero outside the model's crop.

        Raises:
            ValueError: not a deep family, or an unknown method.
        """
        from ml.explain.attributions import attribution_map

        if not self.is_deep:
            raise ValueError(f"explain: voxel maps exist for the deep families {DEEP_FAMILIES}, not {self.family}")
        x, origin, start = self.estimator.crop_input(stack)
        crop_map = attribution_map(self.estimator.network_, x, method=method,
                                   additional_forward_args=origin, **kw)
        out = np.zeros(stack.image.shape[1:], dtype=np.float32)
        size = crop_map.shape[0]
        src, dst = [], []
        for s, n in zip(start, out.shape, strict=True):
            lo, hi = max(0, s), min(n, s + size)
            dst.append(slice(lo, hi))
            src.append(slice(lo - s, hi - s))
        if all(d.stop > d.start for d in dst):
            out[tuple(dst)] = crop_map[tuple(src)]
        return out

    def save(self, path: str | Path) -> Path:
        """Write the artifact (module docstring)."""
        payload: dict[str, Any] = {"format": ARTIFACT_FORMAT, "family": self.family, "threshold": float(self.threshold),
                                   "config": self.config,
                                   "calibrator": pickle.dumps(self.calibrator) if self.calibrator else None}
        if self.is_deep:
            payload["deep_class"] = type(self.estimator).__name__
            payload["deep_state"] = self.estimator.state_bytes()
        else:
            payload["estimator"] = pickle.dumps(self.estimator)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, out)
        return out

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> TrainedClassifier:
        """Read an artifact written by :meth:`save` (ValueError when the file is not one)."""
        from ml.classify.cnn import CnnClassifier
        from ml.classify.finetune import FoundationClassifier

        p = Path(path)
        try:
            payload = torch.load(p, map_location=device, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise ValueError(f"{p}: not a readable classifier artifact ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"{p}: not an AminoPET classifier artifact")
        if "deep_state" in payload:
            classes = {c.__name__: c for c in (CnnClassifier, FoundationClassifier)}
            state = torch.load(io.BytesIO(payload["deep_state"]), map_location=device, weights_only=False)
            estimator = classes[payload["deep_class"]].from_state(state, device=device)
        else:
            estimator = pickle.loads(payload["estimator"])  # noqa: S301 - our own artifact
        calibrator = pickle.loads(payload["calibrator"]) if payload.get("calibrator") else None  # noqa: S301
        return cls(family=payload["family"], estimator=estimator, calibrator=calibrator,
                   threshold=float(payload["threshold"]), config=dict(payload.get("config") or {}))
