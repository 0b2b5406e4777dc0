"""Quantify an exam straight from its files: BIDS-PET NIfTI + JSON sidecars + masks.

The platform's quantification job has file paths (from the BIDS import); this module reads them
with :func:`ml.io.nifti.load_nifti`, converts Bq/mL to SUVbw from the sidecar
(``InjectedRadioactivity`` [MBq], ``BodyWeight`` [kg], ``ImageDecayCorrectionTime`` relative to
``InjectionStart``; :mod:`ml.quant.suv`), checks every mask is on the PET grid, and calls
:func:`ml.quant.exam.quantify_exam`. The sidecar is the image path with ``.json`` instead of
``.nii``/``.nii.gz``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ml.io.errors import ImageFormatError
from ml.io.nifti import NiftiVolume, load_nifti
from ml.quant.exam import ExamQuantification, QuantConfig, quantify_exam
from ml.quant.suv import F18_HALF_LIFE_S, to_suv

__all__ = ["HALF_LIVES_S", "sidecar_path", "read_sidecar", "load_suv", "quantify_files"]

#: Half-lives (s) of the radionuclides of amino-acid PET (NIST / DICOM CID 4020).
HALF_LIVES_S: dict[str, float] = {"F18": F18_HALF_LIFE_S, "C11": 1221.66, "GA68": 4062.6}
_MBQ_PER_UNIT = {"MBQ": 1.0, "KBQ": 1e-3, "BQ": 1e-6, "MCI": 37.0}


def sidecar_path(image: str | Path) -> Path:
    """``x.nii.gz`` / ``x.nii`` -> ``x.json``."""
    p = Path(image)
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    raise ImageFormatError(p, "not a .nii or .nii.gz file name")


def read_sidecar(image: str | Path) -> dict[str, Any]:
    """The JSON sidecar of an image (ImageFormatError when missing or invalid)."""
    side = sidecar_path(image)
    if not side.is_file():
        raise ImageFormatError(side, "JSON sidecar not found")
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ImageFormatError(side, f"invalid JSON ({exc})") from exc


def _number(side: Mapping[str, Any], key: str, path: Path) -> float:
    value = side.get(key)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ImageFormatError(path, f"sidecar field {key} must be a number, got {value!r}") from None
    if not np.isfinite(out):
        raise ImageFormatError(path, f"sidecar field {key} is not finite")
    return out


def load_suv(image: str | Path) -> tuple[NiftiVolume, np.ndarray, dict[str, Any]]:
    """Load a PET image and convert it to SUVbw with its sidecar.

    Returns:
        ``(volume, suv_array, sidecar)``.

    Raises:
        ImageFormatError: unreadable image/sidecar, missing or invalid dose, weight or units.
    """
    path = Path(image)
    vol = load_nifti(path)
    side = read_sidecar(path)
    units = str(side.get("Units", ""))
    side_path = sidecar_path(path)
    if units.upper() in ("SUV", "G/ML"):
        return vol, to_suv(vol.array, units), side
    dose_units = str(side.get("InjectedRadioactivityUnits", "MBq")).upper()
    if dose_units not in _MBQ_PER_UNIT:
        raise ImageFormatError(side_path, f"InjectedRadioactivityUnits {dose_units!r} not supported")
    dose_bq = _number(side, "InjectedRadioactivity", side_path) * _MBQ_PER_UNIT[dose_units] * 1e6
    weight = _number(side, "BodyWeight", side_path)
    nuclide = str(side.get("TracerRadionuclide", "F18")).upper().replace("-", "").replace("^", "")
    half_life = HALF_LIVES_S.get(nuclide)
    if half_life is None:
        raise ImageFormatError(side_path, f"TracerRadionuclide {nuclide!r} has no known half-life")
    delay = 0.0
    if side.get("ImageDecayCorrected", True):
        delay = float(side.get("ImageDecayCorrectionTime", 0) or 0) - float(
            side.get("InjectionStart", 0) or 0)
    try:
        suv = to_suv(vol.array, units, injected_dose_bq=dose_bq, weight_kg=weight,
                     half_life_s=half_life, delay_s=delay)
    except ValueError as exc:
        raise ImageFormatError(side_path, str(exc)) from exc
    return vol, suv, side


def _mask(path: str | Path | None, pet: NiftiVolume, name: str) -> np.ndarray | None:
    if path is None:
        return None
    vol = load_nifti(path, ndim=(3,))
    if vol.shape != pet.shape[:3] or not np.allclose(vol.affine, pet.affine, atol=1e-3):
        raise ImageFormatError(path, f"{name} mask is not on the PET grid (shape {vol.shape} "
                                     f"vs {pet.shape[:3]}, or a different affine)")
    return vol.array > 0.5


def quantify_files(
    *,
    pet_static: str | Path,
    tumor_mask: str | Path,
    pet_dynamic: str | Path | None = None,
    striatum_mask: str | Path | None = None,
    background_mask: str | Path | None = None,
    brain_mask: str | Path | None = None,
    config: QuantConfig | None = None,
) -> ExamQuantification:
    """Quantify one exam from its files (module docstring).

    Raises:
        ImageFormatError: a file that cannot be used (named, with the reason).
        ValueError: inconsistent content (empty tumour mask, ...), from :func:`quantify_exam`.
    """
    vol, suv, _ = load_suv(pet_static)
    if vol.array.ndim != 3:
        raise ImageFormatError(pet_static, f"static PET must be 3-D, got shape {vol.shape}")
    dyn = start = dur = None
    if pet_dynamic is not None:
        dvol, dyn, dside = load_suv(pet_dynamic)
        if dvol.array.ndim != 4 or dvol.shape[:3] != vol.shape or not np.allclose(
                dvol.affine, vol.affine, atol=1e-3):
            raise ImageFormatError(pet_dynamic, "dynamic PET must be 4-D on the static PET grid")
        start, dur = dside.get("FrameTimesStart"), dside.get("FrameDuration")
        if not isinstance(start, list) or not isinstance(dur, list) or len(start) != dvol.n_frames \
                or len(dur) != dvol.n_frames:
            raise ImageFormatError(sidecar_path(pet_dynamic),
                                   f"FrameTimesStart/FrameDuration must list {dvol.n_frames} frames")
    return quantify_exam(
        pet_static=suv, affine=vol.affine, tumor_mask=_mask(tumor_mask, vol, "tumor"),
        pet_dynamic=dyn, frame_start_s=start, frame_duration_s=dur,
        striatum_mask=_mask(striatum_mask, vol, "striatum"),
        background_mask=_mask(background_mask, vol, "background"),
        brain_mask=_mask(brain_mask, vol, "brain"), config=config,
    )
