"""Body-weight SUV (SUVbw): the factor that turns PET activity concentration into SUV.

Two entry points:

* :func:`suv_bw_factor` / :func:`to_suv` take plain numbers (dose, weight, half-life, delay), for
  BIDS sidecars and the synthetic cohort.
* :func:`suv_factor_from_dicom` reads a PET DICOM header (or a whole series) and follows the QIBA
  vendor-neutral SUV computation flow chart (QIBA FDG-PET/CT UPICT profile, "Vendor-neutral
  pseudo-code for SUV calculation", 2013; the same logic as cornerstonejs/calculate-suv), including
  the Philips CNTS private scale factors and the GE / Siemens rules for acquisitions that start
  before the series time.

SUVbw = C(t) [Bq/mL] * W [g] / D(t_ref) [Bq]  (Kinahan & Fletcher, Semin Ultrasound CT MR 2010,
eq. 1), with D(t_ref) = D_inj * 2^(-delay / T_half) the injected dose decayed to the time the image
is decay-corrected to (1 mL of tissue taken as 1 g). Plain Python: no Django here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

__all__ = [
    "F18_HALF_LIFE_S",
    "SUV_UNITS",
    "ACTIVITY_UNITS",
    "SuvHeaderError",
    "suv_bw_factor",
    "to_suv",
    "suv_factor_from_dicom",
    "suv_factors_from_dicom",
    "scan_datetime",
    "injection_datetime",
    "parse_dicom_datetime",
]

#: Half-life of fluorine-18 in seconds (109.77 min; DICOM CID 4020 / NIST).
F18_HALF_LIFE_S = 6586.2

#: Units strings that mean "already SUV" (pass-through).
SUV_UNITS = ("SUV", "g/ml")

#: Units strings that mean activity concentration in Bq/mL.
ACTIVITY_UNITS = ("BQML", "Bq/mL", "Bq/ml", "bq/ml")

PHILIPS_PET_PRIVATE_CREATOR = "Philips PET Private Group"
GE_PET_PRIVATE_CREATOR = "GEMS_PETD_01"


class SuvHeaderError(ValueError):
    """A PET header that does not allow a body-weight SUV; the message says which field and why."""


def suv_bw_factor(
    *,
    injected_dose_bq: float,
    weight_kg: float,
    half_life_s: float,
    delay_s: float,
    decay_corrected_to_injection: bool = False,
) -> float:
    """Body-weight SUV per Bq/mL: ``SUV = activity_concentration * factor``.

    Formula (Kinahan & Fletcher 2010, eq. 1; QIBA flow chart):
    ``factor = 1000 * weight_kg / (injected_dose_bq * 2 ** (-delay_s / half_life_s))``, in g/Bq
    (1 mL of tissue = 1 g). When the image is decay-corrected to the injection time
    (DICOM DecayCorrection ADMIN) the dose is not decayed.

    Args:
        injected_dose_bq: injected activity at injection time, Bq (> 0).
        weight_kg: patient weight, kg (> 0).
        half_life_s: radionuclide half-life, s (> 0); F-18 is 6586.2 s.
        delay_s: time from injection to the time the image is decay-corrected to (scan start), s.
        decay_corrected_to_injection: image decay-corrected to injection (ADMIN): ignore delay.

    Returns:
        The SUVbw factor in g/Bq (mL per Bq x g/mL).

    Raises:
        ValueError: a non-positive or non-finite dose, weight or half-life, a non-finite delay,
            or one longer than 64 half-lives. (A negative delay, reference time before
            injection, is allowed here; :func:`suv_factor_from_dicom` refuses it.)
    """
    for name, value in (
        ("injected_dose_bq", injected_dose_bq),
        ("weight_kg", weight_kg),
        ("half_life_s", half_life_s),
    ):
        if value is None or not math.isfinite(float(value)) or float(value) <= 0:
            raise ValueError(f"suv_bw_factor: {name} must be a positive number, got {value!r}")
    if delay_s is None or not math.isfinite(float(delay_s)):
        raise ValueError(f"suv_bw_factor: delay_s must be a finite number, got {delay_s!r}")
    dose = float(injected_dose_bq)
    if not decay_corrected_to_injection and abs(float(delay_s)) > 64.0 * float(half_life_s):
        raise ValueError(
            f"suv_bw_factor: delay_s {delay_s!r} is longer than 64 half-lives (wrong date?)"
        )
    if not decay_corrected_to_injection:
        dose *= 2.0 ** (-float(delay_s) / float(half_life_s))
    return 1000.0 * float(weight_kg) / dose


def to_suv(
    array: np.ndarray,
    units: str,
    *,
    injected_dose_bq: float | None = None,
    weight_kg: float | None = None,
    half_life_s: float = F18_HALF_LIFE_S,
    delay_s: float | None = None,
    decay_corrected_to_injection: bool = False,
) -> np.ndarray:
    """Convert a PET array to body-weight SUV; pass-through when it is already SUV.

    Args:
        array: PET values, any shape.
        units: ``"SUV"`` or ``"g/ml"`` (returned unchanged, as float32), or Bq/mL
            (``"BQML"``, ``"Bq/mL"``).
        injected_dose_bq: injected activity, Bq (needed for Bq/mL).
        weight_kg: patient weight, kg (needed for Bq/mL).
        half_life_s: radionuclide half-life, s (default F-18).
        delay_s: injection to decay-correction reference time, s (needed unless
            ``decay_corrected_to_injection``).
        decay_corrected_to_injection: image decay-corrected to injection time.

    Returns:
        A new float32 array in SUV.

    Raises:
        ValueError: unknown units, or Bq/mL without the dose, weight or delay.
    """
    values = np.asarray(array, dtype=np.float32)
    if units in SUV_UNITS:
        return values.copy()
    if units not in ACTIVITY_UNITS:
        raise ValueError(
            f"to_suv: units {units!r} are neither SUV {SUV_UNITS} nor Bq/mL {ACTIVITY_UNITS}"
        )
    if injected_dose_bq is None or weight_kg is None:
        raise ValueError("to_suv: Bq/mL needs injected_dose_bq and weight_kg")
    if delay_s is None and not decay_corrected_to_injection:
        raise ValueError("to_suv: Bq/mL needs delay_s (or decay_corrected_to_injection=True)")
    factor = suv_bw_factor(
        injected_dose_bq=injected_dose_bq,
        weight_kg=weight_kg,
        half_life_s=half_life_s,
        delay_s=0.0 if delay_s is None else delay_s,
        decay_corrected_to_injection=decay_corrected_to_injection,
    )
    return (values.astype(np.float64) * factor).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# DICOM dates and times
# ---------------------------------------------------------------------------------------------


def _parse_time(tm: str) -> tuple[int, int, int, int]:
    """DICOM TM (``HHMMSS.FFFFFF``, later parts optional, old ``HH:MM:SS``) to h, m, s, µs."""
    text = str(tm).strip().replace(":", "")
    if not text:
        raise ValueError("empty time")
    main, _, frac = text.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6):
        raise ValueError(f"not a DICOM time: {tm!r}")
    hours = int(main[0:2])
    minutes = int(main[2:4]) if len(main) >= 4 else 0
    seconds = int(main[4:6]) if len(main) >= 6 else 0
    micro = int((frac + "000000")[:6]) if frac else 0
    return hours, minutes, seconds, micro


def parse_dicom_datetime(date: str | None = None, time: str | None = None, *, dt: str | None = None) -> datetime:
    """Parse a DICOM DA + TM pair, or a DT string, into a naive :class:`datetime`.

    Time zone offsets in DT (``+hhmm``) are ignored: every time in one PET header is local to
    the scanner, and only differences are used.

    Args:
        date: DICOM DA ``YYYYMMDD``.
        time: DICOM TM ``HHMMSS.FFFFFF``.
        dt: DICOM DT ``YYYYMMDDHHMMSS.FFFFFF[+hhmm]`` (takes precedence).

    Raises:
        ValueError: malformed or missing values.
    """
    if dt is not None:
        text = str(dt).strip()
        for sign in ("+", "-"):
            idx = text.find(sign, 8)
            if idx > 0:
                text = text[:idx]
        if len(text) < 8 or not text[:8].isdigit():
            raise ValueError(f"not a DICOM date-time: {dt!r}")
        date, time = text[:8], (text[8:] or "000000")
    if not date or not time:
        raise ValueError("date and time are both needed")
    d = str(date).strip().replace(".", "").replace("-", "")
    if len(d) != 8 or not d.isdigit():
        raise ValueError(f"not a DICOM date: {date!r}")
    h, m, s, us = _parse_time(str(time))
    return datetime(int(d[0:4]), int(d[4:6]), int(d[6:8]), h, m, s, us)


def _get(ds: Any, keyword: str) -> Any:
    """A DICOM attribute by keyword, or None when absent or empty."""
    value = getattr(ds, keyword, None) if not isinstance(ds, dict) else ds.get(keyword)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _radiopharm(ds: Any) -> Any:
    """The first item of RadiopharmaceuticalInformationSequence (or the dataset itself)."""
    seq = _get(ds, "RadiopharmaceuticalInformationSequence")
    if seq:
        return seq[0]
    return ds


def _private_value(ds: Any, group: int, element_offset: int, creator: str) -> Any:
    """A private element by creator, falling back to the conventional block 0x10."""
    try:
        return ds.get_private_item(group, element_offset, creator).value
    except (KeyError, AttributeError, ValueError):
        pass
    try:
        elem = ds[(group, 0x1000 + element_offset)]
    except (KeyError, TypeError):
        return None
    return elem.value


def _philips_scale(ds: Any, element_offset: int) -> float | None:
    """Philips (7053,10xx) scale factor as a float, None when absent, empty or zero."""
    value = _private_value(ds, 0x7053, element_offset, PHILIPS_PET_PRIVATE_CREATOR)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    try:
        number = float(str(value).strip().strip("\x00"))
    except ValueError:
        return None
    return number if number != 0 and math.isfinite(number) else None


def _ge_scan_datetime(ds: Any) -> datetime | None:
    """GE private post-injection scan date-time (0009,100D), when present."""
    value = _private_value(ds, 0x0009, 0x0D, GE_PET_PRIVATE_CREATOR)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    try:
        return parse_dicom_datetime(dt=str(value).strip("\x00 "))
    except ValueError:
        return None


def _acquisition_datetime(ds: Any) -> datetime:
    date = _get(ds, "AcquisitionDate") or _get(ds, "SeriesDate")
    return parse_dicom_datetime(date, _get(ds, "AcquisitionTime"))


def scan_datetime(ds: Any, series: Sequence[Any] | None = None) -> datetime:
    """The time the PET image is decay-corrected to (QIBA "scan date and time").

    QIBA flow chart: use SeriesDate/SeriesTime, unless an acquisition of the series started
    earlier (a re-started or re-processed series), in which case GE's private scan date-time
    (0009,100D) if present, else (Siemens) back-compute from the frame: AcquisitionDateTime minus
    FrameReferenceTime plus the average-count-rate time within the frame; if the frame times are
    unusable, the earliest AcquisitionDateTime of the series.

    Args:
        ds: the instance whose reference time is wanted.
        series: all instances of the series (for the earliest acquisition time); default ``[ds]``.

    Raises:
        SuvHeaderError: missing or malformed series/acquisition date or time.
    """
    instances = list(series) if series else [ds]
    try:
        series_dt = parse_dicom_datetime(_get(ds, "SeriesDate"), _get(ds, "SeriesTime"))
    except ValueError as exc:
        raise SuvHeaderError(f"SeriesDate/SeriesTime unusable ({exc})") from exc
    try:
        earliest = min(_acquisition_datetime(inst) for inst in instances)
    except ValueError as exc:
        raise SuvHeaderError(f"AcquisitionDate/AcquisitionTime unusable ({exc})") from exc
    if series_dt <= earliest:
        return series_dt
    ge_dt = _ge_scan_datetime(ds)
    if ge_dt is not None:
        return ge_dt
    frame_ref_ms = _get(ds, "FrameReferenceTime")
    frame_dur_ms = _get(ds, "ActualFrameDuration")
    valid = all(
        (_get(inst, "FrameReferenceTime") or 0) > 0 and (_get(inst, "ActualFrameDuration") or 0) > 0
        for inst in instances
    )
    if not valid or frame_ref_ms is None or frame_dur_ms is None:
        return earliest
    # Siemens: FrameReferenceTime is the offset (ms) from the decay-correction reference time to
    # the time of average count rate within the frame; for a decaying source that time lies
    # (1/λ) ln(λΔ / (1 - e^{-λΔ})) after the frame start (QIBA pseudo-code).
    half_life = float(_get(_radiopharm(ds), "RadionuclideHalfLife") or F18_HALF_LIFE_S)
    lam = math.log(2.0) / half_life
    decay_during_frame = lam * float(frame_dur_ms) / 1000.0
    avg_count_time_s = (1.0 / lam) * math.log(
        decay_during_frame / (1.0 - math.exp(-decay_during_frame))
    )
    acq = _acquisition_datetime(ds)
    return acq - timedelta(seconds=float(frame_ref_ms) / 1000.0) + timedelta(seconds=avg_count_time_s)


def injection_datetime(ds: Any, *, scan: datetime | None = None) -> datetime:
    """Radiopharmaceutical start date-time.

    RadiopharmaceuticalStartDateTime when present, else RadiopharmaceuticalStartTime on the
    SeriesDate (QIBA). If that would put the injection after the scan (the scan crossed midnight)
    the previous day is taken.

    Raises:
        SuvHeaderError: neither start date-time nor start time usable.
    """
    rp = _radiopharm(ds)
    start_dt = _get(rp, "RadiopharmaceuticalStartDateTime")
    if start_dt is not None:
        try:
            return parse_dicom_datetime(dt=str(start_dt))
        except ValueError:
            pass  # fall back on the start time, as QIBA does for an undefined date-time
    start_time = _get(rp, "RadiopharmaceuticalStartTime")
    if start_time is None:
        raise SuvHeaderError("RadiopharmaceuticalStartDateTime and RadiopharmaceuticalStartTime are missing")
    try:
        injected = parse_dicom_datetime(_get(ds, "SeriesDate"), str(start_time))
    except ValueError as exc:
        raise SuvHeaderError(f"RadiopharmaceuticalStartTime/SeriesDate unusable ({exc})") from exc
    if scan is not None and injected > scan:
        injected -= timedelta(days=1)
    return injected


def suv_factor_from_dicom(ds: Any, *, series: Sequence[Any] | None = None) -> float:
    """SUVbw factor of one PET DICOM instance (SUV = rescaled pixel value x factor).

    QIBA vendor-neutral flow chart:

    1. CorrectedImage (when present) must contain ATTN and DECY.
    2. Units GML: already SUV, factor 1. Units CNTS (Philips): the private SUVScaleFactor
       (7053,1000) when non-zero; else the private ActivityConcentrationScaleFactor (7053,1009)
       turns counts into Bq/mL and the BQML rule follows. Units BQML: the BQML rule.
    3. BQML rule: DecayCorrection START: the dose decays from the injection time
       (:func:`injection_datetime`) to the scan time (:func:`scan_datetime`); ADMIN: no decay.
       ``factor = weight_g / decayed_dose``.

    Args:
        ds: a pydicom Dataset (or a dict of DICOM keywords) of a PET image.
        series: every instance of the series, so the earliest acquisition time can be found
            (the GE/Siemens special cases); default ``[ds]``.

    Returns:
        The factor in g/Bq (or 1.0 for GML, or the Philips factor for CNTS).

    Raises:
        SuvHeaderError: a header field needed for SUV is missing or unusable (the message names it).
    """
    corrected = _get(ds, "CorrectedImage")
    if corrected is not None:
        flags = {str(c).strip().upper() for c in ([corrected] if isinstance(corrected, str) else corrected)}
        missing = {"ATTN", "DECY"} - flags
        if missing:
            raise SuvHeaderError(
                f"CorrectedImage lacks {', '.join(sorted(missing))}: not quantitative for SUV"
            )
    units = str(_get(ds, "Units") or "").strip().upper()
    if not units:
        raise SuvHeaderError("Units (0054,1001) is missing")
    if units == "GML":
        return 1.0
    activity_scale = 1.0
    if units == "CNTS":
        suv_scale = _philips_scale(ds, 0x00)
        if suv_scale is not None:
            return suv_scale
        acs = _philips_scale(ds, 0x09)
        if acs is None:
            raise SuvHeaderError(
                "Units CNTS without Philips SUVScaleFactor (7053,1000) or "
                "ActivityConcentrationScaleFactor (7053,1009)"
            )
        activity_scale = acs
    elif units != "BQML":
        raise SuvHeaderError(f"Units {units!r} cannot be converted to SUV (need BQML, CNTS or GML)")

    weight = _get(ds, "PatientWeight")
    if weight is None or float(weight) <= 0:
        raise SuvHeaderError("PatientWeight (0010,1030) is missing or zero")
    rp = _radiopharm(ds)
    dose = _get(rp, "RadionuclideTotalDose")
    if dose is None or float(dose) <= 0:
        raise SuvHeaderError("RadionuclideTotalDose (0018,1074) is missing or zero")
    half_life = _get(rp, "RadionuclideHalfLife")
    if half_life is None or float(half_life) <= 0:
        raise SuvHeaderError("RadionuclideHalfLife (0018,1075) is missing or zero")
    decay_correction = str(_get(ds, "DecayCorrection") or "").strip().upper()
    if decay_correction == "ADMIN":
        factor = suv_bw_factor(
            injected_dose_bq=float(dose),
            weight_kg=float(weight),
            half_life_s=float(half_life),
            delay_s=0.0,
            decay_corrected_to_injection=True,
        )
    elif decay_correction == "START":
        scan = scan_datetime(ds, series)
        start = injection_datetime(ds, scan=scan)
        delay = (scan - start).total_seconds()
        if delay < 0:
            raise SuvHeaderError(
                f"injection at {start.isoformat()} is after the scan reference time "
                f"{scan.isoformat()}: the delay of {delay:.0f} s is impossible"
            )
        try:
            factor = suv_bw_factor(
                injected_dose_bq=float(dose),
                weight_kg=float(weight),
                half_life_s=float(half_life),
                delay_s=delay,
            )
        except ValueError as exc:
            raise SuvHeaderError(
                f"injection at {start.isoformat()} and scan reference time at {scan.isoformat()} "
                f"give a delay of {delay:.0f} s, which is impossible"
            ) from exc
    else:
        raise SuvHeaderError(
            f"DecayCorrection {decay_correction or 'missing'!r}: need START or ADMIN for SUV"
        )
    return factor * activity_scale


def suv_factors_from_dicom(series: Sequence[Any]) -> list[float]:
    """SUVbw factor of every instance of one PET series (see :func:`suv_factor_from_dicom`)."""
    return [suv_factor_from_dicom(ds, series=series) for ds in series]
