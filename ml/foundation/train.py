"""Pretraining loop: :func:`pretrain` (inline, or one process of a ``torchrun`` DDP job).

Data: a MONAI :class:`~monai.data.CacheDataset` over the exam stacks of an index
(ml.foundation.data: ``.npz`` per exam) keeps each exam's image in memory as a MetaTensor with its
affine; per step, :class:`~monai.transforms.RandSpatialCropSamplesd` cuts two crops (views) of
``encoder.img_size`` from each exam, whose tracked affines give the crops' MNI origin for the
position embedding, and per-channel intensity scale/shift and Gaussian noise differ between the
views. Everything random is seeded from ``(seed, epoch, rank)``, so a config and a seed reproduce a
run and a resumed run continues exactly as an uninterrupted one.

Outputs in ``out_dir``: ``config.yaml``, ``metrics.jsonl`` (one line per epoch: per-task losses,
learning rate, seconds, volumes/s), ``model.pt`` (the encoder as :func:`ml.foundation.model.load_encoder`
reads it, with the decoder and projection heads) and ``optimizer.pt`` beside it (optimizer,
scheduler, epoch, history: what ``resume`` needs).

Distributed: ``python -m torch.distributed.run --nproc_per_node N -m ml.foundation.train --config
FILE --index DIR --out DIR`` (gloo on CPU, NCCL on GPU); each rank reads its share of the exams
(DistributedSampler), DDP averages the gradients, rank 0 writes the files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from monai.data import CacheDataset, MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    RandBiasField,
    RandGaussianNoised,
    RandGaussianSmooth,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropSamplesd,
)
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ml.foundation.config import PretrainConfig, load_config, save_config
from ml.foundation.data import CHANNELS, load_index, load_stack
from ml.foundation.model import file_sha256, save_encoder
from ml.foundation.pretext import TASKS, PretrainModel

__all__ = ["InitReport", "PretrainResult", "LoadStackd", "pretrain", "load_matching_weights", "build_model",
           "weights_digest", "main"]

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class InitReport:
    """What :func:`load_matching_weights` did.

    Attributes:
        path: the checkpoint.
        loaded: parameter names initialised from it.
        skipped: ``(name, reason)`` of the checkpoint's tensors not used (no such name, other shape).
        not_initialised: the model's parameters it had nothing for (they keep their random init).
    """

    path: str
    loaded: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    not_initialised: tuple[str, ...]

    def summary(self) -> str:
        return (f"init from {self.path}: {len(self.loaded)} tensors loaded, {len(self.skipped)} skipped, "
                f"{len(self.not_initialised)} left at random init")


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` returns.

    Attributes:
        checkpoint: ``out_dir/model.pt``.
        sha256: its sha256.
        history: one dict per epoch (``epoch``, ``loss``, one key per task, ``lr``, ``seconds``,
            ``volumes_per_s``).
        exams_seen: keys of the exams trained on.
        seconds: wall time of this call.
        config: the run's config as a dict.
        init: the init report when ``init_checkpoint`` was given.
        stopped_early: True when ``max_minutes`` ended the run before ``epochs``.
        weights_digest: sha256 of the final model weights in this process (equal on all DDP ranks).
    """

    checkpoint: Path
    sha256: str
    history: tuple[dict[str, float], ...]
    exams_seen: tuple[str, ...]
    seconds: float
    config: dict[str, Any]
    init: InitReport | None = None
    stopped_early: bool = False
    weights_digest: str = ""


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, shapes and float32 bytes, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.float().numpy().tobytes() if t.is_floating_point() else t.numpy().tobytes())
    return h.hexdigest()


# --- data -----------------------------------------------------------------------------------------

class LoadStackd(MapTransform):
    """``{"path"}`` -> ``{"image": MetaTensor (C, X, Y, Z) with the stack's affine, "key"}``."""

    def __init__(self) -> None:
        super().__init__(keys=["path"])

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        stack = load_stack(data["path"])
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(stack.image, dtype=np.float32)),
                           affine=torch.as_tensor(stack.affine, dtype=torch.float64))
        return {"image": image, "key": data.get("key", stack.key)}


class RandOnChannelsd(RandomizableTransform, MapTransform):
    """Apply a random array transform to some channels of ``image`` only, with probability ``prob``
    (e.g. a bias field to the MRI channels, a blur to the PET channels)."""

    def __init__(self, transform: Any, channels: list[int], prob: float) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys=["image"])
        self.transform, self.channels = transform, list(channels)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(state=self.R)
        return self

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.randomize(None)
        if not self._do_transform:
            return data
        out = dict(data)
        image = out["image"]
        part = self.transform(image[self.channels], randomize=True)
        image = image.clone()
        image[self.channels] = torch.as_tensor(part, dtype=image.dtype)
        out["image"] = image
        return out


def _channels(prefix_pet: bool) -> list[int]:
    return [i for i, c in enumerate(CHANNELS) if c.startswith("suv") == prefix_pet]


def _transforms(config: PretrainConfig) -> Compose:
    ops: list[Any] = [
        LoadStackd(),
        RandSpatialCropSamplesd(keys=["image"], roi_size=config.encoder.img_size, num_samples=2,
                                random_size=False),
    ]
    if config.intensity_scale > 0:
        ops.append(RandScaleIntensityd(keys=["image"], factors=config.intensity_scale, prob=1.0,
                                       channel_wise=True))
    if config.intensity_shift > 0:
        ops.append(RandShiftIntensityd(keys=["image"], offsets=config.intensity_shift, prob=1.0,
                                       channel_wise=True))
    if config.noise_std > 0:
        ops.append(RandGaussianNoised(keys=["image"], std=config.noise_std, prob=0.5))
    if config.pet_blur_mm > 0:  # scanner resolution: FWHM uniform in [0, pet_blur_mm] mm
        sigma = (1e-3, config.pet_blur_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / config.encoder.voxel_mm)
        blur = RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=1.0)
        ops.append(RandOnChannelsd(blur, _channels(prefix_pet=True), prob=0.5))
    if config.mri_bias_field > 0:
        bias = RandBiasField(degree=3, coeff_range=(-config.mri_bias_field, config.mri_bias_field), prob=1.0)
        ops.append(RandOnChannelsd(bias, _channels(prefix_pet=False), prob=0.5))
    return Compose(ops)


def _collate_pairs(items: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Items of two views -> ``view1, view2`` (B, C, D, H, W), ``origin1, origin2`` (B, 3), ``keys``."""
    out: dict[str, Any] = {"keys": [views[0]["key"] for views in items]}
    for v in (0, 1):
        images = [views[v]["image"] for views in items]
        out[f"view{v + 1}"] = torch.stack([torch.as_tensor(im.as_tensor() if isinstance(im, MetaTensor) else im)
                                           for im in images]).float()
        out[f"origin{v + 1}"] = torch.stack([torch.as_tensor(im.affine, dtype=torch.float64)[:3, 3]
                                             for im in images]).float()
    return out


def _check_index(index: pd.DataFrame, config: PretrainConfig) -> list[dict[str, str]]:
    if not isinstance(index, pd.DataFrame) or "path" not in index.columns:
        raise ValueError("pretrain: index must be a DataFrame with a 'path' column (ml.foundation.data.load_index)")
    if len(index) == 0:
        raise ValueError("pretrain: the index is empty")
    missing = [p for p in index["path"] if not Path(p).is_file()]
    if missing:
        raise ValueError(f"pretrain: {len(missing)} stack files missing, e.g. {missing[0]}")
    return [{"path": str(p), "key": str(k)} for k, p in zip(index.index, index["path"])]


# --- distributed helpers -------------------------------------------------------------------------

def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across runs and processes)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h % (2 ** 31 - 1)


# --- weights from another checkpoint ---------------------------------------------------------------

def load_matching_weights(model: PretrainModel, path: str | Path) -> InitReport:
    """Initialise ``model`` from a local checkpoint of a (more general) model, by name and shape.

    Accepts a checkpoint of this package (``model.pt``: encoder and heads), a bare encoder
    ``state_dict`` or a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper; names match either
    as they are or under ``encoder.`` (a bare encoder's names). Nothing is downloaded.

    Raises:
        ValueError: the file is missing or unreadable, or holds no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"init checkpoint {p} does not exist")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"init checkpoint {p} is not a readable torch checkpoint ({exc})") from exc
    source: dict[str, torch.Tensor] = {}
    if isinstance(payload, dict) and "encoder" in payload and isinstance(payload["encoder"], dict):
        source.update({f"encoder.{k}": v for k, v in payload["encoder"].items()})
        for k, v in (payload.get("heads") or {}).items():
            source[k] = v
    elif isinstance(payload, dict):
        inner = payload.get("state_dict") or payload.get("model") or payload
        source.update({k: v for k, v in inner.items() if isinstance(v, torch.Tensor)})
    tensors = {k: v for k, v in source.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"init checkpoint {p} holds no tensors")
    target = model.state_dict()
    new_state, loaded, skipped = {}, [], []
    for name, tensor in tensors.items():
        for candidate in (name, f"encoder.{name}"):
            if candidate in target:
                if tuple(target[candidate].shape) == tuple(tensor.shape):
                    new_state[candidate] = tensor.to(target[candidate].dtype)
                    loaded.append(candidate)
                else:
                    skipped.append((name, f"shape {tuple(tensor.shape)} != {tuple(target[candidate].shape)}"))
                break
        else:
            skipped.append((name, "no parameter of that name"))
    model.load_state_dict(new_state, strict=False)
    not_init = tuple(sorted(set(target) - set(loaded)))
    return InitReport(path=str(p), loaded=tuple(sorted(loaded)), skipped=tuple(sorted(skipped)),
                      not_initialised=not_init)


def build_model(config: PretrainConfig) -> PretrainModel:
    """The pretraining model with its weights seeded from ``config.seed``."""
    torch.manual_seed(_seed(config.seed, 7))
    return PretrainModel(config.encoder, config.pretext)


# --- checkpoints -------------------------------------------------------------------------------------

def _heads_state(model: PretrainModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("encoder.")}


def _write_checkpoint(model: PretrainModel, optimizer: torch.optim.Optimizer, scheduler: Any, out: Path, *,
                      config: PretrainConfig, epoch: int, history: list[dict[str, float]],
                      exams_seen: list[str]) -> Path:
    path = save_encoder(model.encoder, out / "model.pt", config=config.to_dict(),
                        extra={"heads": _heads_state(model), "epoch": epoch, "exams_seen": list(exams_seen)})
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
             "history": history, "exams_seen": list(exams_seen)}
    tmp = out / ".optimizer.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(out / "optimizer.pt")
    return path


def _restore(model: PretrainModel, optimizer: torch.optim.Optimizer, scheduler: Any, out: Path,
             config: PretrainConfig) -> tuple[int, list[dict[str, float]]]:
    saved = out / "config.yaml"
    if saved.is_file() and load_config(saved).to_dict() != config.to_dict():
        raise ValueError(f"resume: {saved} differs from the given config (a resumed run keeps its config)")
    model_path, opt_path = out / "model.pt", out / "optimizer.pt"
    if not (model_path.is_file() and opt_path.is_file()):
        raise ValueError(f"resume: {out} has no model.pt and optimizer.pt to resume from")
    payload = torch.load(model_path, map_location="cpu", weights_only=True)
    model.load_state_dict({**{f"encoder.{k}": v for k, v in payload["encoder"].items()}, **payload["heads"]})
    state = torch.load(opt_path, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), list(state["history"])


# --- the loop -----------------------------------------------------------------------------------------

def _device(config: PretrainConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("PretrainConfig.device is cuda but no CUDA device is available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local)
    return torch.device("cpu")


def pretrain(
    config: PretrainConfig,
    index: pd.DataFrame,
    *,
    out_dir: Path,
    progress: Progress | None = None,
    resume: bool = False,
    init_checkpoint: Path | None = None,
) -> PretrainResult:
    """Pretrain the foundation encoder on the exams of ``index``.

    Args:
        config: the run's configuration.
        index: exam stacks (:func:`ml.foundation.data.load_index`: ``path`` column, keys as index).
        out_dir: where config, metrics and checkpoints go.
        progress: ``callable(fraction in [0, 1], message)``, called on rank 0 after each step.
        resume: continue from ``out_dir``'s checkpoint (same config).
        init_checkpoint: a local checkpoint to initialise matching weights from (ignored on resume).

    Returns:
        :class:`PretrainResult` (on every rank; only rank 0 writes files).

    Raises:
        ValueError: a bad index, a config that differs from the resumed run's, a missing checkpoint.
    """
    t0 = time.monotonic()
    rank, world = _dist()
    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    items = _check_index(index, config)
    device = _device(config)
    amp = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    model = build_model(config)
    init_report = None
    if init_checkpoint is not None and not resume:
        init_report = load_matching_weights(model, init_checkpoint)
        if progress and rank == 0:
            progress(0.0, init_report.summary())
    model.to(device)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and "missing_channel" not in n]
    no_decay = [p for n, p in trainable if p.ndim < 2 or "missing_channel" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    transforms = _transforms(config)
    # one caching thread: np.load parses .npy headers with ast.literal_eval, which CPython 3.11 does not
    # make thread-safe ("SystemError: AST constructor recursion depth mismatch", seen in CI)
    dataset = CacheDataset(items, transform=transforms, cache_rate=config.cache_rate, num_workers=1,
                           progress=False, copy_cache=False)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed,
                                 drop_last=len(dataset) >= world * config.batch_size)
    drop_last = len(sampler) >= config.batch_size
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                        collate_fn=_collate_pairs, drop_last=drop_last)
    steps_per_epoch = max(1, len(loader))
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(round(config.warmup_epochs * steps_per_epoch))) if config.warmup_epochs > 0 else 0

    def lr_factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    start_epoch, history = 0, []
    if resume:
        start_epoch, history = _restore(model, optimizer, scheduler, out, config)
        model.to(device)
    if rank == 0:
        save_config(config, out / "config.yaml")
    train_model: Any = model
    if world > 1:
        needs_all = all(w > 0 for w in config.pretext.weights().values())
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not needs_all)
    if config.compile:
        train_model = torch.compile(train_model)
    exams_seen = [it["key"] for it in items]
    stopped_early = False
    budget_s = config.max_minutes * 60.0 if config.max_minutes else None
    epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        transforms.set_random_state(seed=_seed(config.seed, epoch, rank, 1))
        generator = torch.Generator().manual_seed(_seed(config.seed, epoch, rank, 2))
        model.train()
        sums = dict.fromkeys(("loss", *TASKS), 0.0)
        n_steps, n_volumes, t_epoch = 0, 0, time.monotonic()
        for batch in loader:
            v1 = batch["view1"].to(device, non_blocking=True)
            v2 = batch["view2"].to(device, non_blocking=True)
            o1, o2 = batch["origin1"].to(device), batch["origin2"].to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                losses = train_model(v1, o1, v2, o2, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            for k, v in losses.items():
                sums[k] += float(v.detach())
            n_steps += 1
            n_volumes += v1.shape[0]
            step = epoch * steps_per_epoch + n_steps
            if progress and rank == 0:
                progress(min(1.0, step / total_steps),
                         f"epoch {epoch + 1}/{config.epochs} step {n_steps}/{steps_per_epoch} "
                         f"loss {float(losses['loss'].detach()):.4f}")
            if budget_s is not None and time.monotonic() - t0 > budget_s:
                stopped_early = True
                break
        seconds = time.monotonic() - t_epoch
        row: dict[str, float] = {"epoch": epoch + 1, "steps": n_steps}
        for k in ("loss", *TASKS):
            if k == "loss" or config.pretext.weights()[k] > 0:
                value = sums[k] / max(1, n_steps)
                if world > 1:
                    t = torch.tensor([value], dtype=torch.float64, device=device)
                    dist.all_reduce(t)
                    value = float(t) / world
                row[k] = value
        row.update(lr=float(scheduler.get_last_lr()[0]), seconds=seconds,
                   volumes_per_s=n_volumes * world / max(seconds, 1e-9))
        history.append(row)
        last = epoch + 1 == config.epochs or stopped_early
        if rank == 0:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if last or (epoch + 1) % config.checkpoint_every == 0:
                _write_checkpoint(model, optimizer, scheduler, out, config=config, epoch=epoch + 1,
                                  history=history, exams_seen=exams_seen)
        if stopped_early:
            break
    if start_epoch >= config.epochs and rank == 0 and not (out / "model.pt").is_file():
        raise ValueError(f"resume: {out} is already complete but has no model.pt")
    if world > 1:
        dist.barrier()
    ckpt = out / "model.pt"
    return PretrainResult(checkpoint=ckpt, sha256=file_sha256(ckpt), history=tuple(history),
                          exams_seen=tuple(exams_seen), seconds=time.monotonic() - t0,
                          config=config.to_dict(), init=init_report, stopped_early=stopped_early,
                          weights_digest=weights_digest(model))


# --- command line (torchrun entry point) -----------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m ml.foundation.train --config FILE --index DIR --out DIR [--resume] [--init CKPT]``."""
    parser = argparse.ArgumentParser(prog="python -m ml.foundation.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (ml.foundation.config)")
    parser.add_argument("--index", required=True, help="folder with the stacks' index.csv (build_stacks)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--init", default=None, help="local checkpoint to initialise matching weights from")
    parser.add_argument("--limit", type=int, default=None, help="only the first N exams of the index")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    index = load_index(args.index)
    if args.limit:
        index = index.iloc[: args.limit]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    rank, _ = _dist()

    def report(fraction: float, message: str) -> None:
        print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)

    try:
        result = pretrain(config, index, out_dir=Path(args.out), progress=report if rank == 0 else None,
                          resume=args.resume, init_checkpoint=Path(args.init) if args.init else None)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    line: dict[str, Any] = {"rank": rank, "weights_digest": result.weights_digest}
    if rank == 0:
        line.update(checkpoint=str(result.checkpoint), sha256=result.sha256, epochs=len(result.history),
                    seconds=round(result.seconds, 1), last=result.history[-1] if result.history else None)
    # one write per rank (ranks share the pipe: a separate newline could land after the other's line)
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

