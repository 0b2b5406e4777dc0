"""Per-exam radiomic feature rows and the cohort feature table (CSV export/import).

A row holds the features of one exam's tumour mask on each of its images, prefixed by the image
name: ``pet_suv__original_firstorder_Mean``, ``tbr__original_glcm_Contrast``,
``ttp__...``, ``t1c__...``. The table is indexed by the exam identifier the caller chooses
(e.g. ``"sub-S1P001/ses-01"``), one column per feature, sorted.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.radiomics.extract import IMAGE_TYPES, extract_features

__all__ = ["SEPARATOR", "exam_features", "feature_table", "save_feature_table", "load_feature_table"]

SEPARATOR = "__"


def exam_features(
    volumes: Mapping[str, np.ndarray],
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    image_types: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Features of one exam's mask on several images sharing its grid.

    Args:
        volumes: ``{name: array (X, Y, Z)}``, e.g. ``{"pet_suv": suv, "tbr": suv / bg_mean,
            "ttp": ttp_map, "t1c": t1c_on_pet_grid}``.
        mask: tumour mask on the same grid.
        affine: shared voxel-to-world affine.
        image_types: ``{name: image_type}``; by default a name that is an image type
            (``pet_suv``, ``tbr``, ``ttp``, ``slope``) is used as such and any other name is
            ``"mri"``.
        config: overrides of ``params.yaml`` passed to every extraction.

    Returns:
        ``{f"{name}__{feature}": value}``.
    """
    if not volumes:
        raise ValueError("volumes: give at least one image")
    row: dict[str, float] = {}
    for name, image in volumes.items():
        if SEPARATOR in name:
            raise ValueError(f"volumes: image name {name!r} must not contain {SEPARATOR!r}")
        itype = (image_types or {}).get(name, name if name in IMAGE_TYPES else "mri")
        feats = extract_features(image, mask, affine, image_type=itype, config=config)
        row.update({f"{name}{SEPARATOR}{key}": value for key, value in feats.items()})
    return row


def feature_table(rows: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Cohort table from ``{exam_id: exam_features(...)}``: exams as rows, sorted feature columns."""
    df = pd.DataFrame.from_dict({k: dict(v) for k, v in rows.items()}, orient="index")
    df.index.name = "exam"
    return df.reindex(sorted(df.columns), axis=1)


def save_feature_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as CSV (index column ``exam``), full float precision."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, float_format="%.17g")
    return out


def load_feature_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`save_feature_table`."""
    return pd.read_csv(path, index_col=0)
