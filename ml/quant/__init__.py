"""PET quantification (no Django): SUV, reference regions, static and dynamic parameters.

Entry points: :func:`quantify_exam` (arrays), :func:`quantify_files` (one exam's NIfTI files),
:func:`quantify_dataset` (a BIDS cohort -> CSV rows). Submodules: ``suv`` (SUVbw), ``static``,
``regions`` (automatic background), ``kinetics`` (TAC, TTP, slope, maps), ``clustering``
(voxel TAC k-means, dynamic hotspots), ``phantom`` (analytic test phantoms).
"""
from ml.quant.dataset import CSV_COLUMNS, DatasetQuantification, quantify_dataset
from ml.quant.exam import ROW_COLUMNS, ExamQuantification, QuantConfig, quantify_exam
from ml.quant.files import quantify_files

__all__ = [
    "CSV_COLUMNS",
    "ROW_COLUMNS",
    "DatasetQuantification",
    "ExamQuantification",
    "QuantConfig",
    "quantify_dataset",
    "quantify_exam",
    "quantify_files",
]
