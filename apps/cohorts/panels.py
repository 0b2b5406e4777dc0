"""Exam-page panels contributed by the apps built on the cohort (quantification, predictions...).

The cohort app does not import them: each registers a function ``panel(exam, user) -> dict | None``
returning ``{"template": ..., **context}``; the exam page includes every panel that answers.
"""
from __future__ import annotations

from collections.abc import Callable

_PANELS: list[Callable] = []


def register_exam_panel(func: Callable) -> Callable:
    if func not in _PANELS:
        _PANELS.append(func)
    return func


def exam_panels(exam, user) -> list[dict]:
    return [p for p in (func(exam, user) for func in _PANELS) if p]
