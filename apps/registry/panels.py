"""The predictions panel of the exam page."""


def predictions_panel(exam, user) -> dict | None:
    predictions = list(exam.predictions.select_related("model_version"))
    if not predictions:
        return None
    return {"template": "registry/_exam_panel.html", "predictions": predictions}
