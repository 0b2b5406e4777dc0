"""Reader-study statistics (MRMC ROC analysis, agreement, reading time).

Plain numpy/scipy/statsmodels: no Django import, so it runs in a notebook and from the CLI
(``python manage.py mrmc FILE``). Formulas and sources: ``docs/statistics.md``.

Typical use::

    from reader_study.analysis import read_ratings, or_analysis, dbm_analysis

    data = read_ratings("study.csv")            # long CSV, .imrmc or .lrc
    res = or_analysis(data, cov="jackknife")     # Obuchowski-Rockette, Hillis ddf
    print(res.summary())                          # text tables
    res.rrrc.differences[0].p_value               # numbers as attributes
    json.dumps(res.to_dict())                     # JSON

Modules by subdomain: :mod:`.data` (container), :mod:`.io` (files), :mod:`.fom` (AUC and
binary FOMs, structural components, ROC points), :mod:`.performance` (per-reader table),
:mod:`.covariance` (jackknife, DeLong, unbiased), :mod:`.or_` and :mod:`.dbm` (the MRMC
analyses), :mod:`.design` (split-plot U-statistics, AI standalone), :mod:`.power`,
:mod:`.agreement`, :mod:`.timing`, :mod:`.plots`, :mod:`.results` (shared result types),
:mod:`.report` (``study_report``: every analysis of an aided/unaided study in one object).
"""

from .agreement import (
    AgreementResult,
    DecisionChangeResult,
    agreement,
    cohen_kappa,
    decision_changes,
    fleiss_kappa,
)
from .covariance import (
    COV_METHODS,
    case_covariance,
    delong_covariance,
    jackknife_covariance,
    unbiased_covariance,
)
from .data import ReaderStudyData
from .dbm import DBMResult, dbm_analysis, pseudovalues
from .design import StandaloneResult, UStatResult, standalone_vs_readers, ustat_analysis
from .fom import (
    FOMS,
    auc_components,
    empirical_auc,
    fom_components,
    jackknife_fom,
    roc_curves,
    roc_points,
)
from .io import FORMATS, read_ratings, write_imrmc, write_long_csv, write_lrc
from .or_ import ORResult, ORVarianceComponents, or_analysis
from .performance import PerformanceResult, reader_performance
from .plots import plot_forest, plot_roc
from .power import PowerResult, or_power, sample_size_cases
from .report import StudyReport, study_report
from .results import Difference, Generalization, GlobalTest, ModalityCI
from .timing import ReadingTimeResult, reading_time_model

__all__ = [
    "COV_METHODS",
    "FOMS",
    "FORMATS",
    "AgreementResult",
    "DBMResult",
    "DecisionChangeResult",
    "Difference",
    "Generalization",
    "GlobalTest",
    "ModalityCI",
    "ORResult",
    "ORVarianceComponents",
    "PerformanceResult",
    "PowerResult",
    "ReaderStudyData",
    "ReadingTimeResult",
    "StandaloneResult",
    "StudyReport",
    "UStatResult",
    "agreement",
    "auc_components",
    "case_covariance",
    "cohen_kappa",
    "dbm_analysis",
    "decision_changes",
    "delong_covariance",
    "empirical_auc",
    "fleiss_kappa",
    "fom_components",
    "jackknife_covariance",
    "jackknife_fom",
    "or_analysis",
    "or_power",
    "plot_forest",
    "plot_roc",
    "pseudovalues",
    "read_ratings",
    "reader_performance",
    "reading_time_model",
    "roc_curves",
    "roc_points",
    "sample_size_cases",
    "standalone_vs_readers",
    "study_report",
    "unbiased_covariance",
    "ustat_analysis",
    "write_imrmc",
    "write_long_csv",
    "write_lrc",
]
