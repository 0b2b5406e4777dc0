"""Foundation models on the platform (issue 11): channel stacks from prepared exams, pretraining,
registration of the encoder, and stored embeddings per exam.

The library (:mod:`ml.foundation`) works on :class:`~ml.foundation.data.ExamStack` files; this module
builds them from the exams' prepared volumes on the common grid (``Volume.space == "common"``: T1c,
FLAIR, static and dynamic PET in SUV, masks), at the voxel size the encoder works on (the platform
prepares at 2 mm; a 4 mm encoder reads 2 x 2 x 2 block means, which is exactly
``common_grid(4)``). Stacks are cached under ``MEDIA_ROOT/cache/stacks/`` named by the SHA-256 of
their source files, so a re-prepared exam gets a new stack and an unchanged one is read back; the
labels (``meta``) are read from the database at every use (labels imported later count).

Keys: an exam's key in the stack index is its primary key as a string; ``exams_seen``,
embeddings and the probe's cases are exam primary keys, so the registry's site scoping applies.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from django.conf import settings
from django.db import transaction
from django.db.models import Max

from apps.audit.services import audit_record
from apps.cohorts.models import Cohort, Exam
from apps.cohorts.services.store import StoreTransaction, media_path
from apps.registry.models import ExamEmbedding, ModelVersion
from apps.registry.selectors import PROBE_METRICS

#: Bump when the way stacks are built from volumes changes (invalidates the cache).
STACK_FORMAT = 1
#: Prepared volumes a stack needs (``pet_dynamic`` is optional: early/late fall back to the static PET).
REQUIRED_KINDS = ("t1c", "flair", "pet_static")
#: Masks carried into the stack when the exam has them on the common grid.
STACK_MASKS = ("tumor", "aggressive", "striatum", "background")
PREPARED_VOXEL_MM = 2.0

Progress = Callable[[float, str], None]


class FoundationError(ValueError):
    """A foundation-model run cannot start or finish (unknown cohort, unprepared exams, bad config)."""


def _noop(pct: float, msg: str = "") -> None:
    return None


# --- channel stacks from prepared exams ------------------------------------------------------------

def exam_meta(exam: Exam) -> dict[str, str]:
    """The stack's labels of ``exam`` (``"n/a"`` where unknown), as :data:`ml.foundation.data.INDEX_COLUMNS`."""
    patient = exam.patient
    return {
        "site": patient.site.name,
        "patient": str(patient.pk),
        "exam": str(exam.pk),
        "timepoint": exam.timepoint,
        "diagnosis": exam.diagnosis if exam.diagnosis != "unknown" else "n/a",
        "idh": patient.idh or "n/a",
        "codeletion_1p19q": patient.codeletion_1p19q or "n/a",
        "who_grade": str(patient.who_grade) if patient.who_grade else "n/a",
    }


def _sources(exam: Exam) -> tuple[dict[str, Any], dict[str, Any]]:
    volumes = {v.kind: v for v in exam.volumes.filter(space="common")}
    missing = [k for k in REQUIRED_KINDS if k not in volumes]
    if missing:
        raise FoundationError(f"exam {exam} (id {exam.pk}) has no prepared {', '.join(missing)} on the common "
                              "grid (run prepare_exams first)")
    masks: dict[str, Any] = {}
    for mask in exam.masks.filter(space="common", kind__in=STACK_MASKS).order_by("kind", "pk"):
        masks.setdefault(mask.kind, mask)
    return volumes, masks


def _block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``^3 blocks of the first three axes (2 mm -> 4 mm common grid)."""
    if factor == 1:
        return array
    x, y, z = (n // factor for n in array.shape[:3])
    rest = array.shape[3:]
    a = array[:x * factor, :y * factor, :z * factor].reshape(x, factor, y, factor, z, factor, *rest)
    return a.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def _factor(voxel_mm: float) -> int:
    ratio = voxel_mm / PREPARED_VOXEL_MM
    if ratio < 1 or not math.isclose(ratio, round(ratio)):
        raise FoundationError(f"voxel size {voxel_mm:g} mm: the encoder must work on a multiple of the prepared "
                              f"{PREPARED_VOXEL_MM:g} mm grid")
    return int(round(ratio))


def _cache_path(exam: Exam, digest: str, voxel_mm: float) -> Path:
    return Path(settings.MEDIA_ROOT) / "cache" / "stacks" / f"{voxel_mm:g}mm" / f"exam{exam.pk}-{digest[:16]}.npz"


def exam_stack_path(*, exam: Exam, voxel_mm: float = 4.0) -> Path:
    """The cached stack file of ``exam`` at ``voxel_mm`` (built from its prepared volumes if needed).

    Raises:
        FoundationError: the exam is not prepared (no common T1c, FLAIR or static PET) or its
            volumes cannot make a stack (named).
    """
    from ml.foundation.data import save_stack, stack_from_arrays
    from ml.io.grid import common_grid
    from ml.io.nifti import load_nifti

    factor = _factor(voxel_mm)
    volumes, masks = _sources(exam)
    parts = [f"format={STACK_FORMAT}", f"voxel={voxel_mm:g}"]
    parts += [f"{k}={v.sha256}" for k, v in sorted(volumes.items())]
    parts += [f"mask:{k}={m.sha256}" for k, m in sorted(masks.items())]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    path = _cache_path(exam, digest, voxel_mm)
    if path.is_file():
        return path
    grid = common_grid(voxel_mm)

    def read(field) -> np.ndarray:
        return _block_mean(load_nifti(media_path(field.name)).array, factor)

    arrays: dict[str, Any] = {"t1c": read(volumes["t1c"].file), "flair": read(volumes["flair"].file),
                              "suv": read(volumes["pet_static"].file)}
    dyn = volumes.get("pet_dynamic")
    if dyn is not None:
        arrays.update(suv_dynamic=read(dyn.file), frame_start_s=dyn.frame_start_s,
                      frame_duration_s=dyn.frame_duration_s)
    mask_arrays = {k: read(m.file) >= 0.5 for k, m in masks.items()}
    try:
        stack = stack_from_arrays(affine=grid.affine, masks=mask_arrays, key=str(exam.pk), meta=exam_meta(exam),
                                  **arrays)
    except ValueError as exc:
        raise FoundationError(f"exam {exam} (id {exam.pk}): {exc}") from exc
    for old in path.parent.glob(f"exam{exam.pk}-*.npz"):  # stacks of an earlier preparation
        old.unlink(missing_ok=True)
    return save_stack(stack, path)


def exam_stack(*, exam: Exam, voxel_mm: float = 4.0):
    """The :class:`~ml.foundation.data.ExamStack` of ``exam`` with its current labels (see module doc)."""
    from ml.foundation.data import load_stack

    stack = load_stack(exam_stack_path(exam=exam, voxel_mm=voxel_mm))
    return dataclasses.replace(stack, key=str(exam.pk), meta=exam_meta(exam))


def stack_index(*, exams: Iterable[Exam], voxel_mm: float = 4.0,
                progress: Progress | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """The stack index (:func:`ml.foundation.data.load_index` layout, key = exam id) of prepared ``exams``.

    Exams without prepared volumes are left out and returned as ``[{exam, reason}]``.
    """
    from ml.foundation.data import INDEX_COLUMNS

    report = progress or _noop
    exams = list(exams)
    rows, skipped = [], []
    for i, exam in enumerate(exams):
        report(100.0 * i / max(1, len(exams)), f"Channel stack of exam {exam.pk} ({i + 1}/{len(exams)})")
        try:
            path = exam_stack_path(exam=exam, voxel_mm=voxel_mm)
        except FoundationError as exc:
            skipped.append({"exam": exam.pk, "reason": str(exc)})
            continue
        rows.append({"key": str(exam.pk), **exam_meta(exam), "path": str(path)})
    index = pd.DataFrame(rows, columns=["key", *INDEX_COLUMNS]).set_index("key")
    return index, skipped


# --- embeddings per exam -----------------------------------------------------------------------------

def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (uncompressed zip of ``.npy``) with fixed member dates: equal arrays, equal bytes,
    so the content-addressed store keeps one file per distinct embedding."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.save(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _foundation_checkpoint(model_version: ModelVersion) -> Path:
    if model_version.family != "foundation":
        raise FoundationError(f"{model_version} is a {model_version.family} model, not a foundation encoder")
    path = media_path(model_version.artifact.name) if model_version.artifact else None
    if path is None or not path.is_file():
        raise FoundationError(f"{model_version}: its checkpoint {model_version.artifact.name!r} is missing")
    return path


def _select_exams(cohort: str | None, exams: Iterable[Exam] | None) -> tuple[list[Exam], str]:
    if (cohort is None) == (exams is None):
        raise FoundationError("give a cohort or a list of exams")
    if cohort is not None:
        cohort_obj = Cohort.objects.filter(name=cohort).first()
        if cohort_obj is None:
            raise FoundationError(f"no cohort named {cohort!r}")
        return list(cohort_obj.exams.select_related("patient__site").order_by("pk")), f"cohort {cohort}"
    chosen = list(exams)
    return chosen, f"{len(chosen)} exams"


@dataclasses.dataclass(frozen=True)
class EmbeddingsReport:
    """What :func:`embeddings_compute` did.

    Attributes:
        created: exams embedded for the first time.
        updated: exams whose stored embedding changed (their preparation changed).
        unchanged: exams whose embedding came out identical.
        skipped: ``[{exam, reason}]`` for exams that could not be encoded (not prepared...).
    """

    created: int
    updated: int
    unchanged: int
    skipped: list[dict]

    @property
    def n(self) -> int:
        return self.created + self.updated + self.unchanged


def embeddings_compute(*, model_version: ModelVersion, cohort: str | None = None,
                       exams: Iterable[Exam] | None = None, user=None,
                       progress: Progress | None = None) -> EmbeddingsReport:
    """Encode every prepared exam of ``cohort`` (or ``exams``) with a foundation version; store
    one :class:`~apps.registry.models.ExamEmbedding` per exam (idempotent: a re-run stores nothing
    new unless an exam's preparation changed).

    Raises:
        FoundationError: not a foundation version, checkpoint missing or unreadable, no cohort,
            or no exam could be encoded.
    """
    from ml.foundation.model import encode, load_encoder

    report = progress or _noop
    checkpoint = _foundation_checkpoint(model_version)
    chosen, where = _select_exams(cohort, exams)
    if not chosen:
        raise FoundationError(f"{where} has no exams")
    try:
        encoder, _ = load_encoder(checkpoint)
    except ValueError as exc:
        raise FoundationError(f"{model_version}: {exc}") from exc
    voxel_mm = float(encoder.config.voxel_mm)
    existing = {e.exam_id: e for e in ExamEmbedding.objects.filter(model_version=model_version,
                                                                      exam__in=chosen)}
    created = updated = unchanged = 0
    skipped: list[dict] = []
    store = StoreTransaction()
    try:
        for i, exam in enumerate(chosen):
            report(5 + 90.0 * i / len(chosen), f"Encoding exam {exam.pk} ({i + 1}/{len(chosen)})")
            try:
                stack = exam_stack(exam=exam, voxel_mm=voxel_mm)
            except FoundationError as exc:
                skipped.append({"exam": exam.pk, "reason": str(exc)})
                continue
            emb = encode(encoder, stack)
            name, sha = store.put_bytes(_npz_bytes({"patches": emb.patches, "patch_affine": emb.patch_affine,
                                                     "pooled": emb.pooled}),
                                        category="embeddings", suffix=".npz")
            fields = {"dim": int(emb.pooled.shape[0]), "pooled": [float(v) for v in emb.pooled],
                      "patches": name, "patches_sha256": sha, "grid_shape": list(emb.grid_shape),
                      "patch_affine": np.asarray(emb.patch_affine, dtype=float).tolist(), "voxel_mm": voxel_mm}
            old = existing.get(exam.pk)
            if old is not None and old.patches_sha256 == sha:
                unchanged += 1
                continue
            with transaction.atomic():
                ExamEmbedding.objects.update_or_create(model_version=model_version, exam=exam, defaults=fields)
            if old is None:
                created += 1
            else:
                updated += 1
        if created + updated + unchanged == 0:
            raise FoundationError(f"{where}: no exam could be encoded: "
                                  + "; ".join(s["reason"] for s in skipped[:3]))
        audit_record(action="embeddings.compute", actor=user, target=model_version,
                     details={"where": where, "created": created, "updated": updated, "unchanged": unchanged,
                              "skipped": [s["exam"] for s in skipped]})
    except BaseException:
        store.rollback()
        raise
    report(100, f"{created + updated + unchanged} exams embedded")
    return EmbeddingsReport(created=created, updated=updated, unchanged=unchanged, skipped=skipped)


# --- pretraining -------------------------------------------------------------------------------------

#: Randomly initialised encoders (seeds run seed, +1, ...) whose mean probe AUC the encoder's is compared with.
RANDOM_ENCODERS = 3

#: The linear probes the model page shows (ml.foundation.probe.PROBE_TASKS: time point, label, classes).
PROBE_TASKS = ("progression", "idh")


def _config_dict(config: dict | str | Path) -> dict:
    """The run's configuration as a plain dict, validated by :class:`ml.foundation.config.PretrainConfig`."""
    from ml.foundation.config import PretrainConfig, load_config

    try:
        if isinstance(config, dict):
            return PretrainConfig.from_dict(json.loads(json.dumps(config))).to_dict()
        return load_config(config).to_dict()
    except (TypeError, ValueError) as exc:
        raise FoundationError(f"pretraining config: {exc}") from exc


def _split_patients(index: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """Patients held out of pretraining (``fraction`` of them, at least one when there are 3+), seeded."""
    patients = sorted(set(index["patient"]))
    n = int(round(fraction * len(patients)))
    if fraction > 0 and n == 0 and len(patients) >= 3:
        n = 1
    rng = np.random.default_rng(seed)
    return set(rng.permutation(patients)[:n].tolist())


def _resolve_init(init: str | int | None) -> tuple[Path | None, ModelVersion | None]:
    """``--init``: a model version id (its checkpoint, parent = that version) or a local checkpoint
    file (parent = the registered version with the same SHA-256, if any)."""
    if init in (None, ""):
        return None, None
    text = str(init)
    if text.isdigit():
        parent = ModelVersion.objects.filter(pk=int(text)).first()
        if parent is None:
            raise FoundationError(f"--init {text}: no model version with that id")
        return _foundation_checkpoint(parent), parent
    path = Path(text).expanduser()
    if not path.is_file():
        raise FoundationError(f"--init {text}: no such checkpoint file (nothing is downloaded: give a local file "
                              "or a model version id)")
    from ml.foundation.model import file_sha256

    sha = file_sha256(path)
    return path, ModelVersion.objects.filter(artifact_sha256=sha).order_by("pk").first()


def _run_dir(key: str) -> Path:
    return Path(settings.MEDIA_ROOT) / "runs" / "foundation" / key


def _next_version(name: str) -> int:
    return (ModelVersion.objects.select_for_update().filter(name=name).aggregate(v=Max("version"))["v"] or 0) + 1


def _log_new_epochs(metrics_file: Path, logged: dict, epochs: int, write_log: Callable[[str], None]) -> None:
    """Write the epochs that appeared in the run's ``metrics.jsonl`` as job log lines (per-task losses)."""
    if not metrics_file.is_file():
        return
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    for row in rows[logged["epochs"]:]:
        tasks = "  ".join(f"{k} {row[k]:.4f}" for k in ("inpainting", "crossmodal", "contrastive") if k in row)
        write_log(f"epoch {int(row['epoch'])}/{epochs}: loss {row['loss']:.4f}  {tasks}  "
                  f"({row.get('volumes_per_s', 0):.1f} volumes/s)")
        logged["summary"] = tasks.replace("  ", ", ")
    logged["epochs"] = len(rows)


@dataclasses.dataclass(frozen=True)
class _Run:
    """A pretraining run prepared from a cohort: its stacks, split and run folder."""

    cohort: Cohort
    cfg: dict
    config: Any  # ml.foundation.config.PretrainConfig
    index: pd.DataFrame  # every prepared exam of the cohort
    train_index: pd.DataFrame  # without the held-out patients
    held: set[str]
    held_out: float
    init: str | None
    init_path: Path | None
    parent: ModelVersion | None
    key: str

    @property
    def run_dir(self) -> Path:
        return _run_dir(self.key)


def _prepare_run(*, cohort: str, config: dict | str | Path, init: str | int | None, held_out: float,
                 report: Progress, write_log: Callable[[str], None]) -> _Run:
    from ml.foundation.config import PretrainConfig

    if not 0 <= held_out < 1:
        raise FoundationError(f"held_out must be in [0, 1), got {held_out}")
    cohort_obj = Cohort.objects.filter(name=cohort).first()
    if cohort_obj is None:
        raise FoundationError(f"no cohort named {cohort!r}")
    cfg = _config_dict(config)
    run_config = PretrainConfig.from_dict(cfg)
    voxel_mm = float(run_config.encoder.voxel_mm)
    init_path, parent = _resolve_init(init)
    exams = list(cohort_obj.exams.select_related("patient__site").order_by("pk"))
    if not exams:
        raise FoundationError(f"cohort {cohort!r} has no exams")
    report(1, f"Channel stacks of {len(exams)} exams at {voxel_mm:g} mm")
    index, skipped = stack_index(exams=exams, voxel_mm=voxel_mm,
                                 progress=lambda pct, msg="": report(1 + 0.09 * pct, msg))
    for s in skipped:
        write_log(f"exam {s['exam']} left out: {s['reason']}")
    if index.empty:
        raise FoundationError(f"cohort {cohort!r}: no prepared exam (run prepare_exams first)"
                              + (f"; {skipped[0]['reason']}" if skipped else ""))
    held = _split_patients(index, held_out, run_config.seed)
    train_index = index[~index["patient"].isin(held)]
    if train_index.empty:
        raise FoundationError(f"cohort {cohort!r}: no patient left to pretrain on (held_out={held_out})")
    key_src = json.dumps({"config": cfg, "cohort": cohort, "exams": list(train_index.index),
                          "init": str(init_path and init_path.resolve()), "held_out": held_out}, sort_keys=True)
    return _Run(cohort=cohort_obj, cfg=cfg, config=run_config, index=index, train_index=train_index, held=held,
                held_out=held_out, init=str(init) if init not in (None, "") else None, init_path=init_path,
                parent=parent, key=hashlib.sha256(key_src.encode()).hexdigest()[:16])


def foundation_pretrain(*, cohort: str, config: dict | str | Path, init: str | int | None = None,
                        resume: bool | str = False, held_out: float = 0.2, name: str = "foundation-vit",
                        k: int = 5, user=None, progress: Progress | None = None,
                        log: Callable[[str], None] | None = None) -> ModelVersion:
    """Pretrain a foundation encoder on a cohort's prepared exams and register it.

    Steps: the channel stacks of the cohort's prepared exams at the encoder's voxel size; a
    seeded ``held_out`` fraction of the patients kept out of pretraining; :func:`ml.foundation.pretrain`
    on the rest (its run folder under ``MEDIA_ROOT/runs/foundation/<key>``, where ``key`` follows
    from the config, cohort, exams and initialisation, so ``resume=True`` continues the same run);
    then the representation's quality (:func:`_evaluate`: linear probe vs a random encoder,
    retrieval, reconstructions of held-out exams, training curves). The version stores the
    checkpoint with its SHA-256, the config, the exams seen, the parent (``init``), metrics and plots.

    Args:
        cohort: cohort name.
        config: a :class:`~ml.foundation.config.PretrainConfig` as a dict, or a YAML file.
        init: a model version id or a local checkpoint file to start from (matching weights are
            loaded, the rest reported; nothing is downloaded).
        resume: continue the run of the same key from its last checkpoint; ``"auto"``: when the run
            folder holds one (a job retried after its worker was lost), else start afresh.
        held_out: fraction of the patients kept out of pretraining (probe test set, reconstructions,
            retrieval queries).
        name: the registered model's name (versions count up per name).
        k: neighbours shown per retrieval query.
        progress: ``callable(percent, message)``; ``log``: ``callable(line)`` for per-epoch losses.

    Raises:
        FoundationError: unknown cohort, bad config, no prepared exam, bad ``init``.
    """
    from ml.foundation import train as ml_train

    report = progress or _noop
    write_log = log or (lambda line: None)
    run = _prepare_run(cohort=cohort, config=config, init=init, held_out=held_out, report=report,
                       write_log=write_log)
    if resume == "auto":  # a retried job: continue where the lost attempt's last checkpoint left off
        resume = (run.run_dir / "model.pt").is_file() and (run.run_dir / "optimizer.pt").is_file()
        if resume:
            write_log(f"resuming run {run.key} from its last checkpoint (a previous attempt was interrupted)")
    if not resume and run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    write_log(f"pretraining on {len(run.train_index)} exams of {run.train_index['patient'].nunique()} patients; "
              f"{len(run.index) - len(run.train_index)} exams of {len(run.held)} patients held out; "
              f"run folder {run.key}")
    logged = {"epochs": 0}
    metrics_file = run.run_dir / "metrics.jsonl"

    def train_progress(fraction: float, msg: str = "") -> None:
        # The live status line (jobs page, progress bar) carries the last epoch's per-task losses.
        _log_new_epochs(metrics_file, logged, run.config.epochs, write_log)
        if msg.startswith("init from"):
            write_log(msg)
        elif logged.get("summary"):
            msg = f"{msg} · epoch {logged['epochs']}: {logged['summary']}"
        report(10 + 75 * fraction, msg)

    try:
        result = ml_train.pretrain(run.config, run.train_index, out_dir=run.run_dir, progress=train_progress,
                                   resume=resume, init_checkpoint=run.init_path)
    except ValueError as exc:
        raise FoundationError(f"pretraining: {exc}") from exc
    _log_new_epochs(metrics_file, logged, run.config.epochs, write_log)
    if result.init is not None:
        for tensor, reason in result.init.skipped:
            write_log(f"init: skipped {tensor} ({reason})")
        if result.init.not_initialised:
            write_log(f"init: {len(result.init.not_initialised)} tensors left at random init: "
                      + ", ".join(result.init.not_initialised[:10]))
    if result.stopped_early:
        write_log(f"stopped by max_minutes after epoch {len(result.history)} of {run.config.epochs}")
    return _register(run, result, name=name, k=k, user=user, report=report, write_log=write_log)


def foundation_export_index(*, cohort: str, config: dict | str | Path, out_dir: str | Path,
                            held_out: float = 0.2, progress: Progress | None = None,
                            log: Callable[[str], None] | None = None) -> Path:
    """Write the pretraining exams' stack index (``out_dir/index.csv``, held-out patients left out)
    for a run under ``torchrun`` (``python -m ml.foundation.train --index out_dir``); register the
    finished run with :func:`foundation_register_run` and the same cohort, config and ``held_out``.
    """
    run = _prepare_run(cohort=cohort, config=config, init=None, held_out=held_out, report=progress or _noop,
                       write_log=log or (lambda line: None))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run.train_index.to_csv(out / "index.csv")
    return out / "index.csv"


class _RunFolderResult:
    """A finished run folder of ``ml.foundation.train`` read back as a PretrainResult."""

    def __init__(self, run_dir: Path) -> None:
        import torch

        from ml.foundation.model import file_sha256

        self.checkpoint = run_dir / "model.pt"
        metrics_file = run_dir / "metrics.jsonl"
        if not self.checkpoint.is_file() or not metrics_file.is_file():
            raise FoundationError(f"{run_dir}: no model.pt and metrics.jsonl (not a finished pretraining run)")
        payload = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        self.exams_seen = tuple(str(k) for k in payload.get("exams_seen", ()))
        self.history = tuple(json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip())
        self.sha256 = file_sha256(self.checkpoint)
        self.seconds = float(sum(row.get("seconds", 0.0) for row in self.history))
        self.stopped_early = False
        self.init = None
        self.config = payload.get("config", {})


def foundation_register_run(*, cohort: str, config: dict | str | Path, run_dir: str | Path,
                            held_out: float = 0.2, init: str | int | None = None, name: str = "foundation-vit",
                            k: int = 5, user=None, progress: Progress | None = None,
                            log: Callable[[str], None] | None = None) -> ModelVersion:
    """Register a run trained outside the platform (torchrun on several GPUs or nodes) on the index
    :func:`foundation_export_index` wrote: probe, retrieval, plots and provenance as for
    :func:`foundation_pretrain`.

    Raises:
        FoundationError: the run folder is not a finished run, its config or its exams differ from
            the cohort's split.
    """
    report = progress or _noop
    write_log = log or (lambda line: None)
    run = _prepare_run(cohort=cohort, config=config, init=init, held_out=held_out, report=report,
                       write_log=write_log)
    result = _RunFolderResult(Path(run_dir))
    from ml.foundation.config import PretrainConfig

    if PretrainConfig.from_dict({k_: v for k_, v in result.config.items()}).to_dict() != run.cfg:
        raise FoundationError(f"{run_dir}: the run's config differs from the given one")
    unknown = set(result.exams_seen) - set(run.train_index.index)
    if unknown:
        raise FoundationError(f"{run_dir}: trained on exams that are not this cohort's pretraining exams "
                              f"({len(unknown)}, e.g. {sorted(unknown)[:3]}): export the index again")
    _log_new_epochs(Path(run_dir) / "metrics.jsonl", {"epochs": 0}, run.config.epochs, write_log)
    return _register(run, result, name=name, k=k, user=user, report=report, write_log=write_log)


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None (PostgreSQL's jsonb refuses them), numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _register(run: _Run, result, *, name: str, k: int, user, report: Progress,
              write_log: Callable[[str], None]) -> ModelVersion:
    """Evaluate a finished run and register it (checkpoint, plots, metrics, provenance)."""
    report(86, "Probing the representation")
    with tempfile.TemporaryDirectory() as tmp:
        metrics, plot_files, captions = _evaluate(result=result, index=run.index, held=run.held,
                                                  run_config=run.config, out=Path(tmp), k=k, report=report,
                                                  write_log=write_log)
        report(97, "Registering the encoder")
        store = StoreTransaction()
        try:
            checkpoint, sha = store.put_file(result.checkpoint, category="models")
            plots = {key: store.put_file(path, category="plots")[0] for key, path in plot_files.items()}
            with transaction.atomic():
                mv = ModelVersion.objects.create(
                    name=name, version=_next_version(name), task="pretraining", family="foundation",
                    algorithm="vit-ssl", threshold=None, features=[],
                    config=run.cfg | {"plot_captions": captions, "platform": {
                        "cohort": run.cohort.name, "held_out_fraction": run.held_out,
                        "held_out_patients": sorted(run.held), "init": run.init, "run_key": run.key,
                        "voxel_mm": float(run.config.encoder.voxel_mm)}},
                    metrics=_json_safe(metrics), training_cohort=run.cohort, artifact=checkpoint, artifact_sha256=sha,
                    parent=run.parent, exams_seen=[int(k_) for k_ in result.exams_seen], plots=plots,
                    created_by=user,
                )
                audit_record(action="model.register", actor=user, target=mv,
                             details={"cohort": run.cohort.name, "algorithm": "vit-ssl", "artifact_sha256": sha,
                                      "parent": run.parent.pk if run.parent else None,
                                      "exams_seen": len(mv.exams_seen)})
        except BaseException:
            store.rollback()
            raise
    report(100, f"Registered {mv}")
    return mv


# --- the representation's quality ------------------------------------------------------------------

def _exam_label(row: pd.Series) -> str:
    """What retrieval shows of an exam: the diagnosis at recurrence, the IDH status at diagnosis."""
    if row["timepoint"] == "suspected_recurrence":
        return row["diagnosis"]
    return f"IDH {row['idh']}"


def _probe_task(task: str, tables: dict[str, pd.DataFrame], held: set[str], seed: int) -> dict:
    """:func:`ml.foundation.probe.linear_probe` (logistic regression on frozen pooled embeddings,
    patient-grouped cross-validation, AUC with a patient-bootstrap CI) for the trained and the
    random encoder, on the held-out patients' exams when they hold two exams of each class (never
    seen in pretraining), otherwise on all the cohort's exams (pretraining saw their images, never
    their labels); ``scope`` says which."""
    from ml.foundation.probe import linear_probe, probe_labels

    table = tables["encoder"]
    rows, y, groups = probe_labels(table, task)
    in_held = np.isin(groups, list(held))
    scope = "held-out patients"
    if min(np.bincount(y[in_held], minlength=2)) < 2:
        in_held[:] = True
        scope = "all patients (patient-grouped cross-validation)"
    out: dict[str, Any] = {"scope": scope, "n_exams": int(in_held.sum()), "n_positive": int(y[in_held].sum()),
                           "n_patients": int(len(set(groups[in_held])))}

    def probe(t: pd.DataFrame):
        features = t[[c for c in t.columns if c.startswith("e") and c[1:].isdigit()]].to_numpy()[rows]
        return linear_probe(features[in_held], y[in_held], groups[in_held], task=task, random_state=seed)

    try:
        result = probe(tables["encoder"])
        randoms = [probe(t) for t in tables["random"]]
    except ValueError as exc:
        return {"error": str(exc).split(": ", 1)[-1]}
    out["encoder"] = {"estimate": result.auc, "lower": result.ci_low, "upper": result.ci_high}
    out["n_folds"] = result.n_folds
    aucs = [r.auc for r in randoms]
    # the mean over differently initialised random encoders, with their range (not a CI)
    out["random"] = {"estimate": float(np.mean(aucs)), "runs": len(aucs), "min": float(min(aucs)),
                     "max": float(max(aucs)), "aucs": aucs}
    out["difference"] = out["encoder"]["estimate"] - out["random"]["estimate"]
    return out


def _retrieval(table: pd.DataFrame, held: set[str], k: int, max_queries: int = 10) -> dict:
    """For held-out exams (or the first exams when none is held out), the ``k`` most cosine-similar
    exams of other patients (:func:`ml.foundation.probe.nearest_neighbours`) with their labels."""
    from ml.foundation.probe import nearest_neighbours

    keys = list(table.index)
    held_keys = [key for key in keys if table.loc[key, "patient"] in held]
    queries = held_keys[:max_queries] or keys[:max_queries]
    note = "" if held_keys else "No patient was held out: the queries are exams seen in pretraining."
    out = []
    for q in queries:
        patient = table.loc[q, "patient"]
        same = int((table["patient"] == patient).sum()) - 1
        neighbours = [n for n in nearest_neighbours(table, q, k=k + same) if n.labels["patient"] != patient][:k]
        out.append({"exam": int(q), "label": _exam_label(table.loc[q]), "neighbours": [
            {"exam": int(n.key), "label": _exam_label(table.loc[n.key]), "similarity": n.similarity}
            for n in neighbours]})
    return {"k": k, "labels": "diagnosis at recurrence, IDH status at initial diagnosis", "queries": out,
            "note": note}


def _evaluate(*, result, index: pd.DataFrame, held: set[str], run_config, out: Path, k: int,
              report: Progress, write_log: Callable[[str], None]) -> tuple[dict, dict[str, Path], dict[str, str]]:
    """Metrics, plot files and their captions of a finished pretraining run (see foundation_pretrain)."""
    import torch

    from ml.foundation.data import load_stack
    from ml.foundation.model import load_encoder
    from ml.foundation.pretext import contrastive_at_chance, contrastive_chance
    from ml.foundation.probe import embed_stacks_pooled, random_encoder, training_curve_png

    history = [dict(row) for row in result.history]
    keys = ("loss", "inpainting", "crossmodal", "contrastive")
    final = {key: float(history[-1][key]) for key in keys if history and key in history[-1]}
    first = {key: float(history[0][key]) for key in keys if history and key in history[0]}
    metrics: dict[str, Any] = {
        "final_losses": final,
        "first_losses": first,
        # the contrastive loss of an embedding that tells the exams of a batch apart no better than chance
        "loss_chance": {"contrastive": contrastive_chance(run_config.batch_size)} if "contrastive" in final else {},
        "at_chance": ["contrastive"] if "contrastive" in final
        and contrastive_at_chance(final["contrastive"], run_config.batch_size) else [],
        "history": history,
        "training": {"epochs": len(history), "seconds": float(result.seconds),
                     "stopped_early": bool(result.stopped_early),
                     "held_out": int(index["patient"].isin(held).sum()),
                     "volumes_per_s": float(history[-1].get("volumes_per_s", 0.0)) if history else 0.0,
                     "device": "cuda" if torch.cuda.is_available() and run_config.device != "cpu" else "cpu"},
    }
    report(87, f"Embeddings of {len(index)} exams for the probe")
    meta_columns = [c for c in index.columns if c != "path"]
    stacks = {key: dataclasses.replace(load_stack(row["path"]), key=key,
                                       meta={c: str(row[c]) for c in meta_columns})
              for key, row in index.iterrows()}  # labels as they are now, not as cached
    encoder, _ = load_encoder(result.checkpoint)
    trained = embed_stacks_pooled(encoder, stacks.values())
    # several random draws: one draw's probe varies by several AUC points, as much as pretraining adds
    baselines = [embed_stacks_pooled(random_encoder(run_config.encoder, run_config.seed + i), stacks.values())
                 for i in range(RANDOM_ENCODERS)]
    report(93, "Linear probes")
    # the global embedding (mean over the brain), the global max one (each feature's maximum over the
    # brain's patches) and the lesion one (mean over the tumour's patches)
    for key, pooling in PROBE_METRICS:
        tables = {"encoder": trained[pooling], "random": [b[pooling] for b in baselines]}
        metrics[key] = {task: _probe_task(task, tables, held, run_config.seed) for task in PROBE_TASKS}
        for task, row in metrics[key].items():
            if "error" in row:
                write_log(f"probe {task} ({pooling} embedding): not computed ({row['error']})")
            else:
                write_log(f"probe {task} ({pooling} embedding): AUC {row['encoder']['estimate']:.3f} vs random "
                          f"encoders {row['random']['estimate']:.3f} (mean of {row['random']['runs']}, "
                          f"{row['random']['min']:.3f}-{row['random']['max']:.3f}; {row['n_exams']} exams, "
                          f"{row['scope']})")
    metrics["retrieval"] = _retrieval(trained["global"], held, k)
    plots: dict[str, Path] = {}
    if history:
        plots["curves"] = training_curve_png(history, out / "curves.png")
    report(95, "Reconstructions of held-out exams")
    recon, captions = _reconstructions(result.checkpoint, index, stacks, held, out, run_config.seed)
    return metrics, plots | recon, captions


def _reconstructions(checkpoint: Path, index: pd.DataFrame, stacks: dict, held: set[str], out: Path, seed: int,
                     n_exams: int = 2) -> tuple[dict[str, Path], dict[str, str]]:
    """Input / masked / output figures of the pretext decoders on up to ``n_exams`` held-out exams."""
    from ml.foundation.probe import reconstruction_png

    keys = [key for key in index.index if index.loc[key, "patient"] in held][:n_exams]
    seen = not keys
    keys = keys or list(index.index[:1])
    plots, captions = {}, {}
    for key in keys:
        for task, title in (("inpainting", "Masked inpainting"), ("crossmodal", "Cross-modal prediction")):
            name = f"recon_{task}_{key}"
            plots[name] = reconstruction_png(checkpoint, stacks[key], out / f"{name}.png", task=task, seed=seed)
            captions[name] = (f"{title}, exam {key} ({index.loc[key, 'timepoint'].replace('_', ' ')}"
                              f"{', seen in pretraining' if seen else ', held-out patient'})")
    return plots, captions
