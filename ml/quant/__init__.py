"""PET quantification (no Django): SUV, reference regions, static and dynamic parameters.

Entry point: :func:`ml.quant.exam.quantify_exam`. Submodules: ``suv`` (SUVbw), ``static``,
``regions`` (automatic background), ``kinetics`` (TAC, TTP, slope, maps), ``clustering``
(voxel TAC k-means, dynamic hotspots).
"""
from ml.quant.exam import ROW_COLUMNS, ExamQuantification, QuantConfig, quantify_exam

__all__ = ["ROW_COLUMNS", "ExamQuantification", "QuantConfig", "quantify_exam"]
