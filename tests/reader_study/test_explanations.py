"""The AI explanation in a physician's words (no column names, no log-odds) and the model card."""
from __future__ import annotations

from types import SimpleNamespace

from reader_study.explanations import explain_prediction, model_card

EXPLANATION = {"base_value": -0.2, "output": "log-odds", "contributions": [
    {"feature": "ttp_min", "value": 32.0, "shap": -0.5},
    {"feature": "ts_max", "value": 2.4, "shap": 1.5},
    {"feature": "curve_class", "value": 2.0, "shap": 0.2},
    {"feature": "mtv_ml", "value": None, "shap": 0.0},
    {"feature": "suv__original_glcm_Contrast", "value": 0.31, "shap": 0.05}]}


def test_features_in_clinical_words_with_units_and_direction():
    lines = explain_prediction(EXPLANATION, task="progression", references={"ts_max": 1.9, "ttp_min": 35.0})
    assert [f.text for f in lines] == [
        "T/S max 2.40 (high) → towards progression",
        "Time to peak 32.0 min (low) → towards treatment-related change",
        "Curve shape decreasing → towards progression",
        "Radiomics (PET (SUV)): glcm Contrast 0.31 → towards progression",
    ]  # the zero contribution (MTV) is dropped: it pushes nowhere
    assert lines[0].definition == "tumour SUVmax / striatum SUVmean"
    assert lines[0].reference == "training median 1.90" and lines[0].strength == "strong"
    assert abs(sum(f.share for f in lines) - 1.0) < 1e-9
    assert all("_" not in f.name.split(":")[0] and "log" not in f.text for f in lines)


def test_model_card_states_intended_use_validation_and_warnings():
    mv = SimpleNamespace(task="progression", threshold=0.42, algorithm="logreg",
                         get_family_display=lambda: "Radiomics + classical ML",
                         metrics={"cv": {"n": 30, "metrics": {"auc": {"estimate": 0.81, "lower": 0.7, "upper": 0.9}}},
                                  "external": {"n": 12, "metrics": {"auc": {"estimate": 0.74, "lower": 0.5,
                                                                            "upper": 0.92}}}})
    card = model_card(mv, n_development_sites=2)
    assert "0.42" in card["intended_use"] and "2 centre(s)" in card["intended_use"]
    assert card["performance"][1] == "External validation on a held-out centre: AUC 0.74 (95% CI 0.50–0.92), 12 exams"
    assert any("not for clinical decisions" in w for w in card["warnings"])
    assert any("only 2 centre" in w for w in card["warnings"])
