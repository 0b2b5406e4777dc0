"""Power and sample size of a future MRMC study from the OR variance components of a pilot.

Hillis, Obuchowski & Berbaum (2011), "Power estimation for multireader ROC methods: an updated
and unified approach" (Acad Radiol 18:129-142), with the pilot's error (co)variances scaled by
``K*/K`` (pilot cases over planned cases). For two modalities differing by ``effect``:

* RRRC: ``D = max(Var(TR), 0) + K*/K [Var - Cov1 + (J-1) max(Cov2 - Cov3, 0)]``,
  noncentrality ``lambda = J effect^2 / (2 D)``,
  ``ddf = D^2 / {(max(Var(TR), 0) + K*/K [Var - Cov1 - max(Cov2 - Cov3, 0)])^2 / (J-1)}``;
  power ``= P(F'(1, ddf; lambda) > F_{1-alpha}(1, ddf))``.
* FRRC: ``D = K*/K [Var - Cov1 + (J-1) max(Cov2 - Cov3, 0)]``, chi-square test on 1 df
  (``ddf = inf``), power ``P(X2'(1; lambda) > X2_{1-alpha}(1))``.
* RRFC: ``D = max(Var(TR), 0) + K*/K [Var - Cov1 - max(Cov2 - Cov3, 0)]``, ddf = J - 1.

These are the formulas of RJafroc's ``SsPowerGivenJKOrVarComp``; the tests check them against
RJafroc's published powers for the Van Dyke pilot.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy import stats

from .or_ import ORVarianceComponents
from .results import jsonable

__all__ = ["PowerResult", "or_power", "sample_size_cases"]


@dataclass(frozen=True)
class PowerResult:
    """Predicted power of a future two-modality study.

    Attributes:
        analysis: RRRC, FRRC or RRFC.
        n_readers: J of the planned study.
        n_cases: K of the planned study.
        effect: FOM difference assumed.
        alpha: test level.
        noncentrality: lambda = J effect^2 / (2 D).
        df_den: denominator degrees of freedom.
        f_critical: F_{1-alpha}(1, df_den) (the chi-square quantile for FRRC).
        power: P(reject H0).
    """

    analysis: str
    n_readers: int
    n_cases: int
    effect: float
    alpha: float
    noncentrality: float
    df_den: float
    f_critical: float
    power: float

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary."""
        return jsonable(self)


def or_power(
    components: ORVarianceComponents,
    *,
    effect: float,
    n_readers: int,
    n_cases: int,
    analysis: str = "RRRC",
    alpha: float = 0.05,
) -> PowerResult:
    """Power of a two-modality OR analysis with J readers and K cases (Hillis et al. 2011).

    Args:
        components: pilot OR variance components (``ORResult.components``); their
            ``n_cases`` is the pilot K*.
        effect: assumed difference of reader-averaged FOMs.
        n_readers: J, at least 2.
        n_cases: K, at least 2.
        analysis: ``"RRRC"``, ``"FRRC"`` or ``"RRFC"``.
        alpha: test level.
    """
    if n_readers < 2 or n_cases < 2:
        raise ValueError("n_readers and n_cases must be at least 2")
    c = components
    s = c.n_cases / n_cases
    var_tr = max(c.var_tr, 0.0)
    pos = max(c.cov2 - c.cov3, 0.0)
    j = n_readers
    if analysis == "RRRC":
        den = var_tr + s * (c.var_error - c.cov1 + (j - 1) * pos)
        ddf = den**2 / ((var_tr + s * (c.var_error - c.cov1 - pos)) ** 2 / (j - 1))
    elif analysis == "FRRC":
        den = s * (c.var_error - c.cov1 + (j - 1) * pos)
        ddf = float("inf")
    elif analysis == "RRFC":
        den = var_tr + s * (c.var_error - c.cov1 - pos)
        ddf = float(j - 1)
    else:
        raise ValueError(f"analysis must be RRRC, FRRC or RRFC, got {analysis!r}")
    lam = effect**2 * j / 2 / den
    if analysis == "FRRC":  # chi-square test: F(1, inf) = X2(1)
        fcrit = float(stats.chi2.ppf(1 - alpha, 1))
        power = float(stats.ncx2.sf(fcrit, 1, lam))
    else:
        fcrit = float(stats.f.ppf(1 - alpha, 1, ddf))
        # scipy's ncf.sf is wrong at nc = 0 (returns sf - 1); the central F is exact there
        power = float(stats.ncf.sf(fcrit, 1, ddf, lam)) if lam > 0 else float(stats.f.sf(fcrit, 1, ddf))
    return PowerResult(analysis, j, n_cases, float(effect), alpha, float(lam), float(ddf), fcrit, power)


def sample_size_cases(
    components: ORVarianceComponents,
    *,
    effect: float,
    n_readers: int,
    power: float = 0.8,
    analysis: str = "RRRC",
    alpha: float = 0.05,
    max_cases: int = 100_000,
) -> PowerResult:
    """Smallest number of cases K giving at least ``power`` with ``n_readers`` readers.

    Power increases with K, so a doubling search followed by bisection finds K exactly.

    Raises:
        ValueError: when even ``max_cases`` cases do not reach the power (e.g. RRFC, or a reader
            variance too large for the number of readers).
    """
    def pw(k: int) -> PowerResult:
        return or_power(components, effect=effect, n_readers=n_readers, n_cases=k,
                        analysis=analysis, alpha=alpha)

    lo, hi = 2, 4
    while pw(hi).power < power:
        lo, hi = hi, hi * 2
        if hi > max_cases:
            raise ValueError(f"{n_readers} readers do not reach power {power} with up to "
                             f"{max_cases} cases ({analysis})")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pw(mid).power >= power:
            hi = mid
        else:
            lo = mid
    return pw(hi)
