"""Added value beyond AUC: inter-reader agreement and decision changes between arms.

* Fleiss' kappa (Fleiss 1971) per modality over all readers:
  ``P_i = (sum_j n_ij^2 - n) / (n (n-1))``, ``Pbar = mean_i P_i``, ``p_j = sum_i n_ij / (N n)``,
  ``Pe = sum_j p_j^2``, ``kappa = (Pbar - Pe)/(1 - Pe)``; large-sample SE under H0 from Fleiss,
  Nee & Landis (1979).
* Cohen's kappa (Cohen 1960) for every pair of readers: ``(po - pe)/(1 - pe)``.
* Decision changes from the unaided to the aided read, per reader and overall: correct ->
  incorrect and incorrect -> correct counts with an exact McNemar test on the discordant pairs.

Ratings are turned into categories: binary decisions at ``threshold`` (``rating >= threshold``),
or the rating values themselves when ``threshold`` is None.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .data import ReaderStudyData
from .fom import decisions
from .results import format_table, jsonable

__all__ = [
    "AgreementResult",
    "DecisionChange",
    "DecisionChangeResult",
    "agreement",
    "cohen_kappa",
    "decision_changes",
    "fleiss_kappa",
]


def fleiss_kappa(categories: np.ndarray) -> tuple[float, float]:
    """Fleiss' kappa and its standard error under H0 for a (cases, raters) array of labels.

    Returns:
        ``(kappa, se0)``; se0 per Fleiss, Nee & Landis (1979), used for the z test of kappa = 0.
    """
    x = np.asarray(categories)
    n_cases, n = x.shape
    labels = np.unique(x)
    counts = (x[:, :, None] == labels[None, None, :]).sum(axis=1)  # (N, k)
    p_j = counts.sum(axis=0) / (n_cases * n)
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    pbar = p_i.mean()
    pe = (p_j**2).sum()
    if pe == 1:
        return float("nan"), float("nan")
    kappa = (pbar - pe) / (1 - pe)
    q = 1 - p_j
    s = (p_j * q).sum()
    se0 = np.sqrt(2 / (n_cases * n * (n - 1))) * np.sqrt(s**2 - (p_j * q * (q - p_j)).sum()) / s
    return float(kappa), float(se0)


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two raters' labels on the same cases."""
    a = np.asarray(a)
    b = np.asarray(b)
    labels = np.union1d(a, b)
    po = float((a == b).mean())
    pe = float(sum((a == lab).mean() * (b == lab).mean() for lab in labels))
    return (po - pe) / (1 - pe) if pe < 1 else float("nan")


@dataclass(frozen=True, eq=False)
class AgreementResult:
    """Inter-reader agreement per modality.

    Attributes:
        modalities: labels.
        readers: labels.
        fleiss: Fleiss' kappa per modality.
        fleiss_se: its SE under H0 per modality.
        fleiss_p: p-value of the z test of kappa = 0.
        cohen: pairwise Cohen's kappa per modality, arrays (R, R) with 1 on the diagonal.
        threshold: decision threshold used (None: rating categories).
    """

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    fleiss: tuple[float, ...]
    fleiss_se: tuple[float, ...]
    fleiss_p: tuple[float, ...]
    cohen: tuple[np.ndarray, ...]
    threshold: float | None

    def mean_cohen(self, modality: str) -> float:
        """Mean pairwise Cohen's kappa in one modality."""
        k = self.cohen[self.modalities.index(modality)]
        return float(k[~np.eye(len(self.readers), dtype=bool)].mean())

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary."""
        return jsonable(self)

    def summary(self) -> str:
        """Text tables."""
        rows = [[m, k, se, p, self.mean_cohen(m)] for m, k, se, p in
                zip(self.modalities, self.fleiss, self.fleiss_se, self.fleiss_p)]
        out = [format_table(["modality", "Fleiss kappa", "se (H0)", "p", "mean Cohen"], rows,
                            title="Inter-reader agreement")]
        for m, k in zip(self.modalities, self.cohen):
            out.append(format_table(["", *self.readers], [[r, *k[i]] for i, r in enumerate(self.readers)],
                                    title=f"Cohen's kappa, {m}"))
        return "\n".join(out)


def _categories(data: ReaderStudyData, threshold: float | None) -> np.ndarray:
    return data.ratings if threshold is None else decisions(data.ratings, threshold)


def agreement(data: ReaderStudyData, *, threshold: float | None = None) -> AgreementResult:
    """Fleiss' kappa per modality and pairwise Cohen's kappa (fully crossed designs).

    Args:
        data: ratings.
        threshold: if given, agreement on the binary decisions ``rating >= threshold``;
            otherwise on the rating categories.
    """
    data.require_fully_crossed("agreement")
    cat = _categories(data, threshold)
    fl, se, p, co = [], [], [], []
    r = data.n_readers
    for ti in range(data.n_modalities):
        k, s = fleiss_kappa(cat[ti].T)
        fl.append(k)
        se.append(s)
        p.append(float(2 * stats.norm.sf(abs(k / s))) if s > 0 else float("nan"))
        mat = np.eye(r)
        for a, b in itertools.combinations(range(r), 2):
            mat[a, b] = mat[b, a] = cohen_kappa(cat[ti, a], cat[ti, b])
        co.append(mat)
    return AgreementResult(data.modalities, data.readers, tuple(fl), tuple(se), tuple(p), tuple(co), threshold)


@dataclass(frozen=True)
class DecisionChange:
    """Changes of one reader's (or all readers') decisions between two arms.

    Attributes:
        reader: reader label, or ``"all"``.
        n_cases: cases read in both arms.
        correct_to_incorrect: correct unaided, incorrect aided.
        incorrect_to_correct: incorrect unaided, correct aided.
        stayed_correct: correct in both.
        stayed_incorrect: incorrect in both.
        changed: decisions that changed (any direction).
        net_gain: incorrect_to_correct - correct_to_incorrect.
        p_value: exact McNemar test (two-sided binomial on the discordant pairs).
    """

    reader: str
    n_cases: int
    correct_to_incorrect: int
    incorrect_to_correct: int
    stayed_correct: int
    stayed_incorrect: int
    changed: int
    net_gain: int
    p_value: float


@dataclass(frozen=True)
class DecisionChangeResult:
    """Decision changes from ``unaided`` to ``aided``, per reader and pooled.

    Attributes:
        unaided: first arm.
        aided: second arm.
        threshold: decision threshold.
        per_reader: one row per reader.
        overall: pooled over readers (the McNemar p-value treats readings as independent).
    """

    unaided: str
    aided: str
    threshold: float | None
    per_reader: tuple[DecisionChange, ...]
    overall: DecisionChange

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary."""
        return jsonable(self)

    def summary(self) -> str:
        """Text table."""
        rows = [[c.reader, c.n_cases, c.correct_to_incorrect, c.incorrect_to_correct, c.stayed_correct,
                 c.stayed_incorrect, c.net_gain, c.p_value] for c in (*self.per_reader, self.overall)]
        return format_table(["reader", "cases", "correct->wrong", "wrong->correct", "stayed correct",
                             "stayed wrong", "net gain", "p (McNemar)"], rows,
                            title=f"Decision changes {self.unaided} -> {self.aided}")


def _change(reader: str, c0: np.ndarray, c1: np.ndarray) -> DecisionChange:
    ci = int((c0 & ~c1).sum())
    ic = int((~c0 & c1).sum())
    n_disc = ci + ic
    p = float(stats.binomtest(ic, n_disc, 0.5).pvalue) if n_disc > 0 else 1.0
    return DecisionChange(reader, int(c0.size), ci, ic, int((c0 & c1).sum()), int((~c0 & ~c1).sum()),
                          n_disc, ic - ci, p)


def decision_changes(
    data: ReaderStudyData,
    *,
    unaided: str,
    aided: str,
    threshold: float | None = None,
) -> DecisionChangeResult:
    """Count correct->incorrect and incorrect->correct decision changes between two arms.

    Args:
        data: ratings with both arms.
        unaided: label of the first arm.
        aided: label of the second arm.
        threshold: ``rating >= threshold`` is a positive decision; binary ratings need none.
    """
    sub = data.select(modalities=[unaided, aided])
    dec = decisions(sub.ratings, threshold)
    rows = []
    all0, all1 = [], []
    for j, reader in enumerate(sub.readers):
        both = ~np.isnan(dec[0, j]) & ~np.isnan(dec[1, j])
        c0 = dec[0, j][both] == sub.truth[both]
        c1 = dec[1, j][both] == sub.truth[both]
        rows.append(_change(reader, c0, c1))
        all0.append(c0)
        all1.append(c1)
    overall = _change("all", np.concatenate(all0), np.concatenate(all1))
    return DecisionChangeResult(unaided, aided, threshold, tuple(rows), overall)
