"""The AI's explanation in a physician's words: what the aided arm of a reading shows.

A :class:`~apps.registry.models.Prediction` stores the model's top SHAP contributions
(``{"feature", "value", "shap"}``, in ``log-odds`` or ``probability`` units; see
``ml.classical.predict``). Readers get instead, per feature: its clinical name, the value with its
unit, whether it is high or low compared with the median of the model's training exams, and the
direction it pushes the prediction ("towards progression" / "towards treatment-related change"),
with a strength in words relative to the other listed features. No log-odds, no column names.

:func:`model_card` gives the model's intended use and warnings from the model version's config and
metrics (number of development and external centres, never their names; AUCs with 95% CIs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: Feature column -> (clinical name, unit shown after the value, number format, definition).
FEATURE_WORDING: dict[str, tuple[str, str, str, str]] = {
    "suv_max": ("Tumour SUVmax", "", "{:.2f}", "highest body-weight SUV in the tumour VOI"),
    "suv_mean": ("Tumour SUVmean", "", "{:.2f}", "mean SUV in the tumour VOI"),
    "tbr_max": ("TBRmax", "", "{:.2f}", "tumour SUVmax / healthy-brain SUVmean"),
    "tbr_mean": ("TBRmean", "", "{:.2f}", "tumour SUVmean / healthy-brain SUVmean"),
    "ts_max": ("T/S max", "", "{:.2f}", "tumour SUVmax / striatum SUVmean"),
    "ts_mean": ("T/S mean", "", "{:.2f}", "tumour SUVmean / striatum SUVmean"),
    "mtv_ml": ("Metabolic tumour volume", "mL", "{:.1f}", "volume above TBR 1.6"),
    "ttp_min": ("Time to peak", "min", "{:.1f}", "of the tumour time-activity curve"),
    "slope_suv_per_h": ("Late slope", "SUV/h", "{:+.2f}", "of the tumour time-activity curve, 10-30 min"),
    "curve_class": ("Curve shape", "", "{}", "of the tumour time-activity curve"),
}
#: ml.classical.tasks.CURVE_CLASS_CODES, inverted.
CURVE_CLASS_NAMES = {0.0: "increasing", 1.0: "plateau", 2.0: "decreasing"}
#: Radiomics image types (``<image_type>__<feature>`` columns).
IMAGE_TYPE_WORDING = {"suv": "PET (SUV)", "tbr": "PET (TBR)", "ttp": "time-to-peak map", "t1c": "T1c MRI",
                      "flair": "FLAIR MRI", "slope": "slope map"}
#: Task -> (positive outcome, negative outcome) in a physician's words.
OUTCOME_WORDING = {
    "progression": ("progression", "treatment-related change"),
    "biopsy_target": ("high-grade tumour", "low-grade tumour"),
    "idh": ("IDH-mutant", "IDH-wildtype"),
    "codeletion": ("1p/19q-codeleted", "1p/19q-intact"),
}


@dataclass(frozen=True)
class ExplainedFeature:
    """One line of the explanation, ready to show (e.g. ``T/S max 2.40 (high) → towards progression``)."""

    name: str
    definition: str  # e.g. "tumour SUVmax / striatum SUVmean"
    value: str
    level: str  # "high", "low", "typical" or "" when no reference
    reference: str  # e.g. "training median 1.85" or ""
    towards: str  # the outcome this feature pushes towards
    strength: str  # "strong", "moderate", "weak"
    share: float  # |contribution| / sum of |contributions| listed, 0-1

    @property
    def text(self) -> str:
        level = f" ({self.level})" if self.level else ""
        return f"{self.name} {self.value}{level} → towards {self.towards}"


def _humanise(column: str) -> tuple[str, str, str, str]:
    if column in FEATURE_WORDING:
        return FEATURE_WORDING[column]
    if "__" in column:
        image_type, feature = column.split("__", 1)
        where = IMAGE_TYPE_WORDING.get(image_type, image_type)
        words = feature.replace("original_", "").replace("_", " ")
        return f"Radiomics ({where}): {words}", "", "{:.3g}", "IBSI feature of the tumour VOI"
    return column.replace("_", " ").capitalize(), "", "{:.3g}", ""


def _format_value(column: str, value: float | None) -> str:
    _, unit, fmt, _ = _humanise(column)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "not measurable"
    if column == "curve_class":
        return CURVE_CLASS_NAMES.get(float(value), "not classifiable")
    text = fmt.format(value)
    return f"{text} {unit}".strip()


def _level(column: str, value: float | None, reference: float | None) -> tuple[str, str]:
    if value is None or reference is None or column == "curve_class":
        return "", ""
    if not (math.isfinite(value) and math.isfinite(reference)):
        return "", ""
    _, unit, fmt, _ = _humanise(column)
    ref_text = f"training median {fmt.format(reference)} {unit}".strip()
    tolerance = 0.05 * abs(reference) if reference else 1e-9
    if value > reference + tolerance:
        return "high", ref_text
    if value < reference - tolerance:
        return "low", ref_text
    return "typical", ref_text


def explain_prediction(
    explanation: dict, *, task: str = "progression", references: dict[str, float] | None = None, top: int = 5,
) -> list[ExplainedFeature]:
    """The top contributions of a stored prediction explanation, in clinical words.

    Args:
        explanation: ``Prediction.explanation`` (``contributions``: feature, value, shap).
        task: the model's task (names the outcomes).
        references: feature -> median of the training exams, for "high"/"low".
        top: at most this many features, by decreasing |contribution|; zero contributions dropped.
    """
    positive, negative = OUTCOME_WORDING.get(task, ("positive", "negative"))
    contributions = [c for c in explanation.get("contributions") or [] if c.get("shap")]
    contributions.sort(key=lambda c: -abs(float(c["shap"])))
    contributions = contributions[:top]
    total = sum(abs(float(c["shap"])) for c in contributions) or 1.0
    refs = references or {}
    out = []
    for c in contributions:
        column, shap = str(c["feature"]), float(c["shap"])
        value = c.get("value")
        value = None if value is None else float(value)
        share = abs(shap) / total
        level, ref_text = _level(column, value, refs.get(column))
        out.append(ExplainedFeature(
            name=_humanise(column)[0], definition=_humanise(column)[3],
            value=_format_value(column, value), level=level, reference=ref_text,
            towards=positive if shap > 0 else negative,
            strength="strong" if share >= 0.4 else "moderate" if share >= 0.15 else "weak", share=share,
        ))
    return out


def _auc_text(block: dict | None) -> str | None:
    if not block:
        return None
    auc = (block.get("metrics") or {}).get("auc") or {}
    if auc.get("estimate") is None:
        return None
    text = f"AUC {auc['estimate']:.2f}"
    if auc.get("lower") is not None and auc.get("upper") is not None:
        text += f" (95% CI {auc['lower']:.2f}–{auc['upper']:.2f})"
    n = block.get("n")
    return f"{text}, {n} exams" if n else text


def model_card(model_version, *, n_development_sites: int | None = None) -> dict:
    """Intended use and warnings of a model version, for the aided arm (no centre names).

    Returns ``{"name", "intended_use", "performance": [str], "warnings": [str], "threshold"}``.
    """
    positive, negative = OUTCOME_WORDING.get(model_version.task, ("positive", "negative"))
    metrics = model_version.metrics or {}
    performance = []
    cv = _auc_text(metrics.get("cv"))
    if cv:
        performance.append(f"Cross-validation on the development centres: {cv}")
    external = _auc_text(metrics.get("external"))
    if external:
        performance.append(f"External validation on a held-out centre: {external}")
    warnings = [
        "Research use only: not for clinical decisions outside this study.",
        f"The model estimates the probability of {positive} versus {negative} from PET parameters of "
        "the tumour VOI; it does not see the MRI, the clinical history or earlier exams.",
    ]
    if not external:
        warnings.append("No external validation on a centre unseen in training.")
    if n_development_sites is not None and n_development_sites < 3:
        warnings.append(f"Developed on exams from only {n_development_sites} centre(s).")
    warnings.append("Synthetic training data (AminoPET phantoms): performance on real patients is unknown.")
    development = f"Developed on exams from {n_development_sites} centre(s). " if n_development_sites else ""
    return {
        "name": f"{model_version.get_family_display()} ({model_version.algorithm})",
        "intended_use": (
            f"Supports the reading of amino-acid PET at suspected recurrence of a glioma: probability of "
            f"{positive} versus {negative}. {development}Decision cut-off at a probability of "
            f"{model_version.threshold:.2f}."
        ),
        "performance": performance,
        "warnings": warnings,
        "threshold": model_version.threshold,
    }


def heatmap_file(prediction) -> str | None:
    """Stored NIfTI (common grid) of the heat map the aided arm shows for ``prediction``, or None.

    ``explanation["heatmap"]`` when the model stored one; otherwise the deep model's explanation map
    (``Prediction.maps``, ``{method: stored file}``) of the method that scored best on faithfulness
    (``ml.explain.METHOD_PREFERENCE``, measured by bench/bench_explain.py).
    """
    if prediction is None:
        return None
    stored = (prediction.explanation or {}).get("heatmap")
    if stored:
        return stored
    maps = getattr(prediction, "maps", None) or {}
    from ml.explain.methods import preferred_method

    method = preferred_method(maps)
    return maps[method] if method else None
