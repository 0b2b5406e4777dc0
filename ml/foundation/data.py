"""Channel stacks: one prepared exam on the common grid as the deep models' input.

An :class:`ExamStack` holds what WP1 (pretraining), WP3 (classification) and WP2 (habitats) read
from one exam, on ``common_grid(voxel_mm)`` (MNI152 world; 2 mm: 96 x 112 x 96, 4 mm: 48 x 56 x 48):

* ``image`` (C, X, Y, Z): the model input, channels :data:`CHANNELS`. MRI is z-scored inside the
  template brain (sites scale MRI arbitrarily); PET channels are SUV divided by the median SUV of
  the healthy brain (template brain minus the tumour and striatum masks when known), i.e. a TBR, so a
  site's calibration offset cancels as it does for the clinical TBR; ``suv_early`` and ``suv_late``
  are the dynamic PET's mean over 0-10 min and 20-40 min after injection (the static image when there
  is no dynamic PET).
* ``suv``, ``ttp_min``, ``slope_suv_per_h``: the unnormalised static SUV and the voxel kinetics of
  :mod:`ml.quant.kinetics` (inside the brain, NaN elsewhere) for the habitat work.
* ``masks``: ``brain`` (template) always; ``tumor``, ``aggressive``, ``striatum`` where known.

:func:`stack_from_arrays` builds a stack from arrays already on a common grid (the platform's
prepared volumes). :func:`build_stacks` prepares a BIDS dataset the way the platform does (register
to the template with :mod:`ml.registration`, resample once) and caches one ``.npz`` per exam with
an ``index.csv`` for the benches and notebooks.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.io.grid import Grid, common_grid

__all__ = [
    "CHANNELS",
    "EARLY_WINDOW_MIN",
    "LATE_WINDOW_MIN",
    "INDEX_COLUMNS",
    "ExamStack",
    "stack_from_arrays",
    "save_stack",
    "load_stack",
    "build_stacks",
    "load_index",
    "brain_mask",
]

#: Model input channels, in this order.
CHANNELS: tuple[str, ...] = ("t1c", "flair", "suv", "suv_early", "suv_late")
#: Frame windows (min after injection) of the early and late PET channels.
EARLY_WINDOW_MIN: tuple[float, float] = (0.0, 10.0)
LATE_WINDOW_MIN: tuple[float, float] = (20.0, 40.0)
#: Columns of ``index.csv`` (besides the ``key`` index).
INDEX_COLUMNS: tuple[str, ...] = ("site", "patient", "exam", "timepoint", "diagnosis", "idh",
                                  "codeletion_1p19q", "who_grade", "path")
_META_KEYS = INDEX_COLUMNS[:-1]
_MASKS = ("tumor", "aggressive", "striatum", "background")


@dataclass(frozen=True)
class ExamStack:
    """One exam on a common grid (module docstring).

    Attributes:
        key: ``"sub-X/ses-Y"`` (or the platform's exam id).
        image: (C, X, Y, Z) float32 model input, channels :data:`CHANNELS`.
        affine: (4, 4) voxel -> MNI mm.
        suv: (X, Y, Z) static SUV.
        ttp_min: (X, Y, Z) voxel time to peak (min), NaN outside the brain; ``None`` without dynamic PET.
        slope_suv_per_h: (X, Y, Z) late slope (SUV/h), NaN outside the brain; ``None`` without dynamic PET.
        masks: uint8 (X, Y, Z) masks by name (``brain`` always).
        meta: labels and identifiers (``site, patient, exam, timepoint, diagnosis, idh,
            codeletion_1p19q, who_grade``; ``"n/a"`` when unknown).
    """

    key: str
    image: np.ndarray
    affine: np.ndarray
    suv: np.ndarray
    ttp_min: np.ndarray | None
    slope_suv_per_h: np.ndarray | None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def voxel_mm(self) -> float:
        """Voxel edge (mm)."""
        return float(abs(self.affine[0, 0]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (X, Y, Z)."""
        return tuple(self.image.shape[1:])  # type: ignore[return-value]


def _grid_for(shape: tuple[int, ...], affine: np.ndarray) -> float:
    """The common grid's voxel size that ``shape``/``affine`` match (ValueError otherwise)."""
    voxel = float(abs(affine[0, 0]))
    grid = common_grid(voxel)
    if tuple(shape) != grid.shape or not np.allclose(affine, grid.affine, atol=1e-3):
        raise ValueError(f"arrays are not on the common grid at {voxel:g} mm: shape {tuple(shape)} "
                         f"(expected {grid.shape}) or a different affine")
    return voxel


@lru_cache(maxsize=4)
def brain_mask(voxel_mm: float = 2.0) -> np.ndarray:
    """The MNI152 brain mask on ``common_grid(voxel_mm)`` (bool, read-only)."""
    from ml.registration import resample
    from ml.registration.template import mni_brain_mask
    from ml.registration.transform import Transform

    mask = resample(mni_brain_mask(2), Transform.identity(), common_grid(voxel_mm), kind="fraction") >= 0.5
    mask.setflags(write=False)
    return mask


def _check(name: str, array: Any, shape: tuple[int, ...], ndim: int) -> np.ndarray:
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim != ndim or arr.shape[:3] != shape:
        raise ValueError(f"{name}: expected shape {shape}{' + (T,)' if ndim == 4 else ''}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _zscore(array: np.ndarray, brain: np.ndarray) -> np.ndarray:
    values = array[brain]
    sd = float(values.std())
    if sd <= 0:
        raise ValueError("an MRI volume is constant inside the brain")
    return ((array - float(values.mean())) / sd * brain).astype(np.float32)


def _window_mean(dynamic: np.ndarray, start_s: np.ndarray, duration_s: np.ndarray,
                 window_min: tuple[float, float]) -> np.ndarray | None:
    """Duration-weighted mean of the frames whose mid-time lies in ``window_min``."""
    mid_min = (start_s + duration_s / 2.0) / 60.0
    sel = (mid_min >= window_min[0]) & (mid_min <= window_min[1])
    if not sel.any():
        return None
    w = duration_s[sel] / duration_s[sel].sum()
    return np.tensordot(dynamic[..., sel], w.astype(np.float32), axes=([3], [0])).astype(np.float32)


def stack_from_arrays(
    *,
    t1c: np.ndarray,
    flair: np.ndarray,
    suv: np.ndarray,
    affine: np.ndarray,
    suv_dynamic: np.ndarray | None = None,
    frame_start_s: Any = None,
    frame_duration_s: Any = None,
    masks: dict[str, np.ndarray] | None = None,
    key: str = "",
    meta: dict[str, Any] | None = None,
) -> ExamStack:
    """Build a stack from volumes already on a common grid.

    Args:
        t1c, flair: (X, Y, Z) MRI (arbitrary units).
        suv: (X, Y, Z) static PET in SUV.
        affine: (4, 4) voxel -> MNI mm; must be ``common_grid(v).affine`` for some voxel size ``v``.
        suv_dynamic: (X, Y, Z, T) dynamic PET in SUV, with ``frame_start_s`` and ``frame_duration_s`` (s).
        masks: uint8/bool (X, Y, Z) masks by name (``tumor``, ``aggressive``, ``striatum``...).
        key: the exam's key.
        meta: labels (missing ones become ``"n/a"``).

    Raises:
        ValueError: a shape off the grid, NaNs, a constant MRI, frames that do not match the 4D PET.
    """
    from ml.quant.kinetics import frame_mid_times_s, slope_map_suv_per_h, ttp_map_min

    affine = np.asarray(affine, dtype=np.float64)
    shape = tuple(np.asarray(suv).shape)
    voxel = _grid_for(shape[:3], affine)
    brain = brain_mask(voxel)
    t1c, flair, suv = (_check(n, a, shape, 3) for n, a in (("t1c", t1c), ("flair", flair), ("suv", suv)))
    masks_u8: dict[str, np.ndarray] = {"brain": brain.astype(np.uint8)}
    for name, mask in (masks or {}).items():
        m = np.asarray(mask)
        if m.shape != shape:
            raise ValueError(f"mask {name}: expected shape {shape}, got {m.shape}")
        masks_u8[name] = (m > 0).astype(np.uint8)
    healthy = brain.copy()
    for name in ("tumor", "aggressive", "striatum"):
        if name in masks_u8:
            healthy &= masks_u8[name] == 0
    reference = float(np.median(suv[healthy])) if healthy.any() else 0.0
    if not reference > 0:
        raise ValueError("the healthy-brain SUV is not positive: is the PET in SUV and on the grid?")
    early = late = suv
    ttp = slope = None
    if suv_dynamic is not None:
        dyn = _check("suv_dynamic", suv_dynamic, shape, 4)
        start = np.asarray(frame_start_s, dtype=np.float64)
        duration = np.asarray(frame_duration_s, dtype=np.float64)
        mid = frame_mid_times_s(start, duration, n_frames=dyn.shape[3])
        early = _window_mean(dyn, start, duration, EARLY_WINDOW_MIN)
        late = _window_mean(dyn, start, duration, LATE_WINDOW_MIN)
        early = suv if early is None else early
        late = suv if late is None else late
        ttp = ttp_map_min(dyn, mid, mask=brain).astype(np.float32)
        slope = slope_map_suv_per_h(dyn, mid, mask=brain).astype(np.float32)
    image = np.stack([
        _zscore(t1c, brain), _zscore(flair, brain),
        suv / reference, early / reference, late / reference,
    ]).astype(np.float32)
    meta_out = {k: "n/a" for k in _META_KEYS}
    meta_out.update({k: str(v) for k, v in (meta or {}).items() if v is not None})
    return ExamStack(key=key, image=image, affine=affine, suv=suv, ttp_min=ttp, slope_suv_per_h=slope,
                     masks=masks_u8, meta=meta_out)


def save_stack(stack: ExamStack, path: str | Path) -> Path:
    """Write ``stack`` as one compressed ``.npz`` (atomically: a temporary file, then a rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "image": stack.image, "affine": stack.affine, "suv": stack.suv,
        "key": np.array(stack.key), "meta_keys": np.array(list(stack.meta)),
        "meta_values": np.array([stack.meta[k] for k in stack.meta]),
    }
    if stack.ttp_min is not None:
        arrays["ttp_min"] = stack.ttp_min
    if stack.slope_suv_per_h is not None:
        arrays["slope_suv_per_h"] = stack.slope_suv_per_h
    for name, mask in stack.masks.items():
        arrays[f"mask_{name}"] = mask
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return out


def load_stack(path: str | Path) -> ExamStack:
    """Read a stack written by :func:`save_stack` (ValueError when the file is not one)."""
    p = Path(path)
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, EOFError, ValueError) as exc:
        raise ValueError(f"{p}: unreadable exam stack ({exc})") from exc
    with z:
        files = set(z.files)
        missing = {"image", "affine", "suv", "key"} - files
        if missing:
            raise ValueError(f"{p}: not an exam stack (missing {sorted(missing)})")
        masks = {f[5:]: z[f] for f in files if f.startswith("mask_")}
        meta = dict(zip(z["meta_keys"].tolist(), z["meta_values"].tolist()))
        return ExamStack(
            key=str(z["key"]), image=z["image"], affine=z["affine"], suv=z["suv"],
            ttp_min=z["ttp_min"] if "ttp_min" in files else None,
            slope_suv_per_h=z["slope_suv_per_h"] if "slope_suv_per_h" in files else None,
            masks=masks, meta=meta,
        )


# --- a BIDS dataset prepared like the platform does ------------------------------------------------

@dataclass(frozen=True)
class _ExamFiles:
    key: str
    images: dict[str, str]
    masks: dict[str, str]
    meta: dict[str, str]


def _exam_files(root: Path) -> list[_ExamFiles]:
    from ml.io.bids import scan_bids

    dataset = scan_bids(root)
    out = []
    for sub in dataset.subjects.values():
        for ses in sub.sessions.values():
            images = {img.kind: str(img.path) for img in ses.images}
            masks = {m.kind: str(m.path) for m in ses.masks if m.datatype == "pet" and m.pipeline == "groundtruth"}
            labels = sub.labels or {}
            meta = {"site": sub.site or "n/a", "patient": f"sub-{sub.label}", "exam": f"ses-{ses.label}",
                    "timepoint": ses.timepoint or "n/a", "diagnosis": ses.diagnosis or "n/a",
                    "idh": labels.get("idh") or "n/a",
                    "codeletion_1p19q": labels.get("codeletion_1p19q") or "n/a",
                    "who_grade": labels.get("who_grade") or "n/a"}
            out.append(_ExamFiles(key=f"sub-{sub.label}/ses-{ses.label}", images=images, masks=masks, meta=meta))
    return sorted(out, key=lambda e: e.key)


def _prepare_one(args: tuple[_ExamFiles, float, str]) -> tuple[str, str | None, str | None]:
    """Register and resample one exam, write its stack; ``(key, path, error)``."""
    files, voxel_mm, out_path = args
    try:
        stack = _stack_from_files(files, common_grid(voxel_mm))
        save_stack(stack, out_path)
        return files.key, out_path, None
    except Exception as exc:  # noqa: BLE001 - one bad exam is reported, the cohort goes on
        return files.key, None, f"{type(exc).__name__}: {exc}"


def _stack_from_files(files: _ExamFiles, grid: Grid) -> ExamStack:
    from ml.io.nifti import load_nifti
    from ml.quant.files import load_suv
    from ml.registration import register_exam, resample

    for kind in ("t1c", "flair", "pet_static"):
        if kind not in files.images:
            raise ValueError(f"{files.key}: no {kind} image")
    t1c = load_nifti(files.images["t1c"])
    flair = load_nifti(files.images["flair"])
    pet_vol, pet_suv, _ = load_suv(files.images["pet_static"])
    from ml.registration.transform import Image

    pet = Image(pet_suv, pet_vol.affine)
    reg = register_exam(mri=t1c, pet=pet)
    mri_t, pet_t = reg.for_volume(False), reg.for_volume(True)
    arrays: dict[str, Any] = {
        "t1c": resample(t1c, mri_t, grid), "flair": resample(flair, mri_t, grid),
        "suv": resample(pet, pet_t, grid),
    }
    if "pet_dynamic" in files.images:
        dyn_vol, dyn_suv, side = load_suv(files.images["pet_dynamic"])
        arrays["suv_dynamic"] = resample(Image(dyn_suv, dyn_vol.affine), pet_t, grid)
        arrays["frame_start_s"] = side.get("FrameTimesStart")
        arrays["frame_duration_s"] = side.get("FrameDuration")
    masks = {}
    for name in _MASKS:
        if name in files.masks:
            fraction = resample(load_nifti(files.masks[name], ndim=(3,)), pet_t, grid, kind="fraction")
            masks[name] = fraction >= 0.5
    return stack_from_arrays(affine=grid.affine, masks=masks, key=files.key, meta=files.meta, **arrays)


def build_stacks(
    bids_root: str | Path,
    out_dir: str | Path,
    *,
    voxel_mm: float = 4.0,
    workers: int = 2,
    limit: int | None = None,
    timepoints: Sequence[str] | None = None,
    progress: Any = None,
) -> pd.DataFrame:
    """Prepare every exam of a BIDS dataset (generator layout) into ``out_dir``.

    Each exam is registered to the template (PET to T1c rigid, T1c to MNI152 affine), resampled
    once onto ``common_grid(voxel_mm)`` and written as ``<sub>_<ses>.npz``; existing files are kept
    (the cache). Masks come from ``derivatives/groundtruth`` (PET grid). ``out_dir/index.csv`` lists
    the stacks; ``out_dir/errors.csv`` the exams that could not be prepared, with the reason.

    Args:
        bids_root: the dataset.
        out_dir: the cache folder.
        voxel_mm: common-grid voxel size (2 mm for GPU work, 4 mm for CPU).
        workers: processes.
        limit: only the first ``limit`` patients (sorted), for quick runs.
        timepoints: only exams at these timepoints (``initial_diagnosis``, ``suspected_recurrence``);
            the index then lists those only.
        progress: ``callable(done, total)`` or ``None``.

    Returns:
        The index (:data:`INDEX_COLUMNS`, indexed by ``key``).
    """
    root, out = Path(bids_root), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exams = _exam_files(root)
    if limit is not None:
        keep = sorted({e.meta["patient"] for e in exams})[:limit]
        exams = [e for e in exams if e.meta["patient"] in keep]
    if timepoints is not None:
        unknown = set(timepoints) - {"initial_diagnosis", "suspected_recurrence"}
        if unknown:
            raise ValueError(f"unknown timepoints: {sorted(unknown)}")
        exams = [e for e in exams if e.meta["timepoint"] in set(timepoints)]
    todo, rows, errors = [], [], []
    for e in exams:
        path = out / f"{e.key.replace('/', '_')}.npz"
        rows.append({"key": e.key, **e.meta, "path": str(path)})
        if not path.exists():
            todo.append((e, float(voxel_mm), str(path)))
    done = len(exams) - len(todo)
    failed: set[str] = set()
    if todo:
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            for key, _, error in pool.map(_prepare_one, todo, chunksize=1):
                done += 1
                if error:
                    failed.add(key)
                    errors.append({"key": key, "error": error})
                if progress:
                    progress(done, len(exams))
    index = pd.DataFrame([r for r in rows if r["key"] not in failed], columns=["key", *INDEX_COLUMNS])
    index = index.set_index("key")
    index.to_csv(out / "index.csv")
    if errors:
        pd.DataFrame(errors).to_csv(out / "errors.csv", index=False)
    return index


def load_index(out_dir: str | Path) -> pd.DataFrame:
    """``out_dir/index.csv`` written by :func:`build_stacks` (paths made absolute)."""
    path = Path(out_dir) / "index.csv"
    if not path.is_file():
        raise ValueError(f"{path}: no stack index (run build_stacks first)")
    index = pd.read_csv(path, index_col="key", dtype=str, keep_default_na=False)
    index["path"] = [str((Path(out_dir) / p).resolve()) if not Path(p).is_absolute() else p
                     for p in index["path"]]
    return index
