"""Classification tasks, label encoding and the preparation of a feature table.

Tasks and their positive class (coded 1):

* ``progression``: ``progression`` (1) vs ``treatment_related`` (0), suspected recurrence exams;
* ``idh``: ``mutant`` (1) vs ``wildtype`` (0);
* ``codeletion``: 1p/19q ``codeleted`` (1) vs ``intact`` (0).

Labels ``n/a``/missing are excluded from training (counted in the result).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["TASKS", "CURVE_CLASS_CODES", "ID_COLUMNS", "encode_labels", "prepare_features"]

#: task -> (positive label, negative label)
TASKS: dict[str, tuple[str, str]] = {
    "progression": ("progression", "treatment_related"),
    "idh": ("mutant", "wildtype"),
    "codeletion": ("codeleted", "intact"),
}

#: Ordinal code of the TAC curve class (kinetic aggressiveness order, Pöpperl 2006).
CURVE_CLASS_CODES: dict[str, float] = {"increasing": 0.0, "plateau": 1.0, "decreasing": 2.0}

#: Identifier columns of the quantification CSV, never used as features.
ID_COLUMNS: tuple[str, ...] = ("site", "patient", "exam")

_MISSING = {"n/a", "na", "nan", "", "none"}


def encode_labels(labels: pd.Series, task: str) -> tuple[pd.Series, pd.Index]:
    """Map labels to 0/1 for ``task``; missing/``n/a`` rows are returned as excluded.

    Accepts the task's label strings, booleans or 0/1.

    Returns:
        ``(y, excluded_index)``: ``y`` int Series (1 = positive class) without the excluded rows.

    Raises:
        ValueError: unknown task or a label outside the task's two classes.
    """
    if task not in TASKS:
        raise ValueError(f"task: one of {sorted(TASKS)}, got {task!r}")
    pos, neg = TASKS[task]
    mapping = {pos: 1, neg: 0, "1": 1, "0": 0, "true": 1, "false": 0}
    missing = labels.isna() | labels.astype(str).str.strip().str.lower().isin(_MISSING)
    kept = labels[~missing]
    key = kept.astype(str).str.strip()
    key = key.where(key.isin([pos, neg]), key.str.lower())
    key = key.replace({"1.0": "1", "0.0": "0"})
    unknown = sorted(set(key) - set(mapping))
    if unknown:
        raise ValueError(f"labels: values {unknown} are not {pos!r}/{neg!r} for task {task!r}")
    return key.map(mapping).astype(int), labels.index[missing]


def prepare_features(table: pd.DataFrame) -> pd.DataFrame:
    """Numeric feature matrix from a quantification/radiomics table.

    Drops :data:`ID_COLUMNS`, codes ``curve_class`` with :data:`CURVE_CLASS_CODES` (``n/a`` ->
    NaN, imputed later), casts everything to float.

    Raises:
        ValueError: other non-numeric columns, or no column left.
    """
    df = table.drop(columns=[c for c in ID_COLUMNS if c in table.columns])
    if "curve_class" in df.columns:
        df = df.assign(curve_class=df["curve_class"].map(CURVE_CLASS_CODES).astype(float))
    bad = [c for c in df.columns if not (pd.api.types.is_numeric_dtype(df[c]) or
                                         pd.api.types.is_bool_dtype(df[c]))]
    if bad:
        raise ValueError(f"features: non-numeric columns {bad}; encode or drop them")
    if df.shape[1] == 0:
        raise ValueError("features: no feature column")
    out = df.astype(float)
    if np.isinf(out.to_numpy()).any():
        raise ValueError("features: infinite values")
    return out
