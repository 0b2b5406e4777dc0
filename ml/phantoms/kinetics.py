"""Time-activity curves (TACs) of 18F-FDOPA in brain tissues and gliomas.

Every compartment follows the same three-parameter curve (time ``t`` in minutes)::

    C(t) = A * (1 - exp(-t / tau)) * exp(-lam * t)

uptake with time constant ``tau`` and late washout rate ``lam``. For ``lam > 0`` the curve peaks at
``TTP = tau * ln(1 + 1 / (lam * tau))`` and then decreases (negative late slope: the pattern of
IDH-wildtype / aggressive tissue, Ginet et al. 2020, EJNMMI 47:1381; hot spots with early peak
in malignant parts, Kunz et al. 2011, Neuro-Oncol 13:307); for ``lam <= 0`` it rises until the end
of the acquisition (IDH-mutant tissue, treatment-related change, striatum, which traps FDOPA).
``A`` is set so that the mean over the static window equals the requested SUV.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

__all__ = ["Tac", "tac_for_ttp", "frame_means"]


@dataclass(frozen=True)
class Tac:
    """One compartment's time-activity curve, in SUV units.

    Attributes:
        amplitude: ``A`` (SUV).
        tau_min: uptake time constant (min).
        lam_per_min: late washout rate (1/min); negative means rising.
    """

    amplitude: float
    tau_min: float
    lam_per_min: float

    def __call__(self, t_min: np.ndarray) -> np.ndarray:
        """Evaluate the curve at times ``t_min`` (minutes)."""
        t = np.asarray(t_min, dtype=float)
        return self.amplitude * (1.0 - np.exp(-t / self.tau_min)) * np.exp(-self.lam_per_min * t)

    def ttp_min(self, end_min: float) -> float:
        """Time to peak within ``[0, end_min]`` (minutes): analytic peak or the end."""
        if self.lam_per_min <= 0:
            return end_min
        return min(end_min, self.tau_min * np.log1p(1.0 / (self.lam_per_min * self.tau_min)))

    def mean(self, t0_min: float, t1_min: float) -> float:
        """Time-average of the curve over ``[t0, t1]`` (Simpson's rule, 201 points)."""
        t = np.linspace(t0_min, t1_min, 201)
        y = self(t)
        h = (t1_min - t0_min) / 200
        return float(h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()) / (t1_min - t0_min))

    def scaled_to(self, suv: float, window_min: tuple[float, float]) -> Tac:
        """The same shape with the amplitude set so the window mean equals ``suv``."""
        m = Tac(1.0, self.tau_min, self.lam_per_min).mean(*window_min)
        return Tac(suv / m, self.tau_min, self.lam_per_min)

    def slope_per_h(self, window_min: tuple[float, float]) -> float:
        """Least-squares late slope over the window, in % of the window mean per hour."""
        t = np.linspace(*window_min, 41)
        y = self(t)
        b = np.polyfit(t, y, 1)[0]
        return float(b * 60.0 / y.mean() * 100.0)


def tac_for_ttp(ttp_min: float, lam_per_min: float) -> Tac:
    """A unit-amplitude curve with the given washout rate that peaks at ``ttp_min``.

    Solves ``tau * ln(1 + 1/(lam*tau)) = TTP`` for ``tau`` (monotonic in ``tau``).

    Args:
        ttp_min: desired time to peak (min), > 0.
        lam_per_min: washout rate (1/min), > 0.

    Raises:
        ValueError: non-positive arguments.
    """
    if ttp_min <= 0 or lam_per_min <= 0:
        raise ValueError(f"ttp_min and lam_per_min must be > 0, got {ttp_min}, {lam_per_min}")

    def f(tau: float) -> float:
        return tau * np.log1p(1.0 / (lam_per_min * tau)) - ttp_min

    tau = brentq(f, 1e-4, 1e4)
    return Tac(1.0, float(tau), float(lam_per_min))


def frame_means(tacs: list[Tac], starts_s: np.ndarray, durations_s: np.ndarray) -> np.ndarray:
    """Mean of each curve over each frame, shape ``(n_tacs, n_frames)`` (SUV).

    Args:
        tacs: compartment curves.
        starts_s: frame starts (s).
        durations_s: frame durations (s).
    """
    u = np.linspace(0.0, 1.0, 9)
    t = (starts_s[:, None] + durations_s[:, None] * u[None, :]) / 60.0  # (F, 9) minutes
    w = np.array([1, 4, 2, 4, 2, 4, 2, 4, 1], dtype=float) / 24.0  # Simpson weights, sum 1
    return np.stack([(tac(t) * w).sum(axis=1) for tac in tacs])
