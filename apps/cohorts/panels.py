"""Exam-page panels contributed by the apps built on the cohort (quantification, predictions...).

The cohort app does not import them: each registers a function ``panel(exam, user) -> dict | None``
returning ``{"template": ..., **context}``; the exam page includes every panel that answers.
"""
from __future__ import annotations

from collections.abc import Callable

_PANELS: list[Callable] = []
_ORDER: dict[Callable, int] = {}


def register_exam_panel(func: Callable, *, order: int = 0) -> Callable:
    """Add a panel; panels show by ``order``, then in the order they were registered."""
    if func not in _PANELS:
        _PANELS.append(func)
    _ORDER[func] = order
    return func


def exam_panels(exam, user) -> list[dict]:
    ordered = sorted(_PANELS, key=lambda f: (_ORDER.get(f, 0), _PANELS.index(f)))
    return [p for p in (func(exam, user) for func in ordered) if p]
