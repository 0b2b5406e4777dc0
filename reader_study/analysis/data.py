"""The reader-study data container shared by every analysis in this package.

A reader study is a cube of ratings: modality (arm) x reader x case, plus one truth per case.
:class:`ReaderStudyData` holds that cube as a float array with NaN where a reader did not read a
case (split-plot and other incomplete designs), validates it once, and is what the figures of
merit, the MRMC analyses, the agreement statistics and the writers take.

Convention: a higher rating means "more likely diseased" (truth 1). Readers of formats where
small values mean positive (``.lrc`` flag ``S``) flip the sign on input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ReaderStudyData"]

LONG_COLUMNS = ("reader", "case", "modality", "truth", "rating")


@dataclass(frozen=True, eq=False)
class ReaderStudyData:
    """Ratings of a multi-reader multi-case (MRMC) study.

    Attributes:
        ratings: float array (T modalities, R readers, K cases); NaN marks a case the reader did
            not read in that modality.
        truth: int array (K,), 1 = diseased (positive), 0 = non-diseased.
        modalities: T modality (arm) labels, in file order.
        readers: R reader labels, in file order.
        cases: K case labels; non-diseased cases first is not required.
        source: where the data came from (a path or ``"<memory>"``), used in error messages.
    """

    ratings: np.ndarray
    truth: np.ndarray
    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    cases: tuple[str, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        ratings = np.asarray(self.ratings, dtype=float)
        truth = np.asarray(self.truth)
        src = self.source
        if ratings.ndim != 3:
            raise ValueError(f"{src}: ratings must be 3-D (modality, reader, case), got {ratings.shape}")
        t, r, k = ratings.shape
        if truth.shape != (k,):
            raise ValueError(f"{src}: truth has shape {truth.shape}, expected ({k},) for {k} cases")
        if not np.all(np.isin(truth, (0, 1))):
            bad = sorted({str(v) for v in np.unique(truth) if v not in (0, 1)})
            raise ValueError(f"{src}: truth must be binary 0/1, found {', '.join(bad)}")
        for name, labels, n in (("modalities", self.modalities, t), ("readers", self.readers, r),
                                ("cases", self.cases, k)):
            if len(labels) != n:
                raise ValueError(f"{src}: {len(labels)} {name} labels for axis of length {n}")
            if len(set(labels)) != n:
                raise ValueError(f"{src}: duplicate {name} labels")
        if np.isinf(ratings).any():
            raise ValueError(f"{src}: ratings contain infinite values")
        truth = truth.astype(int)
        if truth.sum() == 0 or truth.sum() == k:
            raise ValueError(f"{src}: need both diseased (truth 1) and non-diseased (truth 0) cases")
        object.__setattr__(self, "ratings", ratings)
        object.__setattr__(self, "truth", truth)
        object.__setattr__(self, "modalities", tuple(str(m) for m in self.modalities))
        object.__setattr__(self, "readers", tuple(str(m) for m in self.readers))
        object.__setattr__(self, "cases", tuple(str(m) for m in self.cases))
        read = ~np.isnan(ratings)
        # a reader who reads in a modality must read both diseased and non-diseased cases there
        # (a reader absent from a modality altogether is a design choice, e.g. nested readers)
        pos = read[:, :, truth == 1].sum(axis=2)
        neg = read[:, :, truth == 0].sum(axis=2)
        bad = ((pos == 0) | (neg == 0)) & ((pos + neg) > 0)
        if not read.any(axis=(0, 2)).all():
            ri = int(np.flatnonzero(~read.any(axis=(0, 2)))[0])
            raise ValueError(f"{src}: reader {self.readers[ri]!r} has no readings")
        if bad.any():
            ti, ri = np.argwhere(bad)[0]
            raise ValueError(
                f"{src}: reader {self.readers[ri]!r} in modality {self.modalities[ti]!r} has no "
                "diseased or no non-diseased case; AUC undefined"
            )

    # ------------------------------------------------------------------ shape
    @property
    def n_modalities(self) -> int:
        """Number of modalities (arms) T."""
        return self.ratings.shape[0]

    @property
    def n_readers(self) -> int:
        """Number of readers R."""
        return self.ratings.shape[1]

    @property
    def n_cases(self) -> int:
        """Number of cases K = K0 + K1."""
        return self.ratings.shape[2]

    @property
    def n_negative(self) -> int:
        """Number of non-diseased cases K0."""
        return int((self.truth == 0).sum())

    @property
    def n_positive(self) -> int:
        """Number of diseased cases K1."""
        return int((self.truth == 1).sum())

    @property
    def design(self) -> np.ndarray:
        """Boolean array (T, R, K): True where the reader read the case in the modality."""
        return ~np.isnan(self.ratings)

    @property
    def is_fully_crossed(self) -> bool:
        """True when every reader read every case in every modality."""
        return bool(self.design.all())

    def negatives(self) -> np.ndarray:
        """Ratings of the non-diseased cases, shape (T, R, K0)."""
        return self.ratings[:, :, self.truth == 0]

    def positives(self) -> np.ndarray:
        """Ratings of the diseased cases, shape (T, R, K1)."""
        return self.ratings[:, :, self.truth == 1]

    def require_fully_crossed(self, what: str) -> None:
        """Raise ValueError naming the missing readings when the design is incomplete."""
        if not self.is_fully_crossed:
            t, r, k = np.argwhere(~self.design)[0]
            n = int((~self.design).sum())
            counts = self.design.sum(axis=2)
            cells = [f"{self.readers[ri]}/{self.modalities[ti]}: {counts[ti, ri]}"
                     for ti, ri in np.argwhere(counts < self.n_cases)]
            listing = ", ".join(cells[:6]) + (f" ... ({len(cells)} reader/modality cells)" if len(cells) > 6 else "")
            raise ValueError(
                f"{self.source}: {what} needs a fully crossed design, but {n} readings are missing "
                f"(e.g. reader {self.readers[r]!r}, case {self.cases[k]!r}, modality "
                f"{self.modalities[t]!r}; cases read of {self.n_cases}: {listing}); "
                "use ustat_analysis() for split-plot designs"
            )

    # ------------------------------------------------------------- selection
    def select(
        self,
        *,
        modalities: Sequence[str] | None = None,
        readers: Sequence[str] | None = None,
    ) -> ReaderStudyData:
        """Return the sub-study with the given modalities and/or readers, in the given order."""
        ti = [self._index(self.modalities, m, "modality") for m in (modalities or self.modalities)]
        ri = [self._index(self.readers, r, "reader") for r in (readers or self.readers)]
        return ReaderStudyData(
            ratings=self.ratings[np.ix_(ti, ri, range(self.n_cases))],
            truth=self.truth,
            modalities=tuple(self.modalities[i] for i in ti),
            readers=tuple(self.readers[i] for i in ri),
            cases=self.cases,
            source=self.source,
        )

    def _index(self, labels: tuple[str, ...], value: str, what: str) -> int:
        try:
            return labels.index(str(value))
        except ValueError:
            raise ValueError(f"{self.source}: unknown {what} {value!r}; have {list(labels)}") from None

    # ------------------------------------------------------------ conversion
    @classmethod
    def from_long(cls, frame: pd.DataFrame, *, source: str = "<memory>") -> ReaderStudyData:
        """Build from a long table with columns reader, case, modality, truth, rating.

        Labels keep their order of first appearance. Missing (reader, case, modality) rows make
        an incomplete design (NaN); duplicated rows, conflicting truths, missing truths and NaN
        ratings are errors that name the offending rows.

        Args:
            frame: one row per reading. A column ``treatment`` is accepted for ``modality``.
            source: file name used in error messages.
        """
        df = frame.copy()
        if "modality" not in df.columns and "treatment" in df.columns:
            df = df.rename(columns={"treatment": "modality"})
        missing = [c for c in LONG_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; need {list(LONG_COLUMNS)}")
        for col in ("reader", "case", "modality"):
            if df[col].isna().any():
                raise ValueError(f"{source}: empty {col} in row(s) {_rows(df[col].isna())}")
            df[col] = df[col].astype(str).str.strip()
        if df["truth"].isna().any():
            raise ValueError(f"{source}: missing truth in row(s) {_rows(df['truth'].isna())}")
        truth_num = pd.to_numeric(df["truth"], errors="coerce")
        bad = truth_num.isna() | ~truth_num.isin([0, 1])
        if bad.any():
            vals = sorted({str(v) for v in df.loc[bad, "truth"]})
            raise ValueError(f"{source}: truth must be 0 or 1, found {vals} in row(s) {_rows(bad)}")
        rating = pd.to_numeric(df["rating"], errors="coerce")
        if rating.isna().any():
            raise ValueError(f"{source}: missing or non-numeric rating in row(s) {_rows(rating.isna())}")
        df["truth"] = truth_num.astype(int)
        df["rating"] = rating.astype(float)
        dup = df.duplicated(["reader", "case", "modality"], keep=False)
        if dup.any():
            raise ValueError(f"{source}: reader/case/modality repeated in row(s) {_rows(dup)}")
        per_case = df.groupby("case", sort=False)["truth"].nunique()
        if (per_case > 1).any():
            raise ValueError(f"{source}: conflicting truth for case(s) {list(per_case[per_case > 1].index)}")
        modalities = tuple(pd.unique(df["modality"]))
        readers = tuple(pd.unique(df["reader"]))
        cases = tuple(pd.unique(df["case"]))
        ti = pd.Index(modalities).get_indexer(df["modality"])
        ri = pd.Index(readers).get_indexer(df["reader"])
        ki = pd.Index(cases).get_indexer(df["case"])
        ratings = np.full((len(modalities), len(readers), len(cases)), np.nan)
        ratings[ti, ri, ki] = df["rating"].to_numpy()
        truth = df.groupby("case", sort=False)["truth"].first().reindex(list(cases)).to_numpy()
        return cls(ratings=ratings, truth=truth, modalities=modalities, readers=readers,
                   cases=cases, source=source)

    def to_long(self) -> pd.DataFrame:
        """Long table (reader, case, modality, truth, rating), one row per reading."""
        t, r, k = np.nonzero(self.design)
        return pd.DataFrame({
            "reader": np.asarray(self.readers, dtype=object)[r],
            "case": np.asarray(self.cases, dtype=object)[k],
            "modality": np.asarray(self.modalities, dtype=object)[t],
            "truth": self.truth[k],
            "rating": self.ratings[t, r, k],
        })

    def imbalance(self) -> pd.DataFrame:
        """Readings per reader and modality, to report incomplete designs."""
        counts = self.design.sum(axis=2)
        return pd.DataFrame(counts.T, index=list(self.readers), columns=list(self.modalities))


def _rows(mask: pd.Series, limit: int = 8) -> str:
    """Data-row numbers (1-based, header excluded) of True entries, abbreviated."""
    idx = [int(i) + 1 for i in np.flatnonzero(mask.to_numpy())]
    text = ", ".join(map(str, idx[:limit]))
    return text + (f" ... ({len(idx)} rows)" if len(idx) > limit else "")
