"""Training throughput of our pretraining loop against a plain MONAI SSL loop, same hardware, one run.

The plain loop is MONAI's self-supervised tutorial (``ViTAutoEnc``, "self-supervised pretraining"):
a ``monai.data.Dataset`` (no cache) loading each exam per sample, ``RandSpatialCropSamplesd``,
``CopyItemsd`` into two views and a ground truth, ``RandCoarseDropoutd`` / ``RandCoarseShuffled`` per
view, then a ``ViTAutoEnc`` forward on both views, L1 reconstruction of view 1 and a
``ContrastiveLoss`` between the two flattened outputs (``loss = r + c * r``), Adam. Same model size
(hidden size, MLP, layers, heads, patch), channels, crop and batch (``--patch`` and ``--crop``
override the config's for both: ViTAutoEnc needs a square patch edge, 4 or 16, not the CPU config's 8) (training samples per step; a
sample is a pair of views in both loops). Ours: ml.foundation.train.pretrain (cached stacks, MAE:
the encoder sees 25 % of the tokens in pass 1 and 50 % in the cross-modal pass, a light decoder).

Rounds alternate the two loops so that the shared machine's load hits both alike; the median of the
rounds is printed, and the ratio (target: >= 1.5x).

    nice -n 10 .venv/bin/python bench/bench_pretrain_throughput.py --index /work/data/stacks200_4mm --exams 32
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.foundation.config import PretrainConfig, load_config  # noqa: E402
from ml.foundation.train import LoadStackd, pretrain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def plain_monai_loader(index: pd.DataFrame, config: PretrainConfig, *, num_workers: int = 0) -> Any:
    """The tutorial's data pipeline over the stacks (uncached ``Dataset``, per-sample transforms)."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import (
        Compose,
        CopyItemsd,
        OneOf,
        RandCoarseDropoutd,
        RandCoarseShuffled,
        RandSpatialCropSamplesd,
    )

    crop = config.encoder.img_size
    big = tuple(max(2, s * 2 // 3) for s in crop)
    small = tuple(max(1, s // 10) for s in crop)

    def views(key: str) -> list[Any]:
        return [
            OneOf(transforms=[
                RandCoarseDropoutd(keys=[key], prob=1.0, holes=6, spatial_size=small, dropout_holes=True,
                                   max_spatial_size=tuple(s // 3 for s in crop)),
                RandCoarseDropoutd(keys=[key], prob=1.0, holes=6, spatial_size=tuple(s * 2 // 5 for s in crop),
                                   dropout_holes=False, max_spatial_size=big),
            ]),
            RandCoarseShuffled(keys=[key], prob=0.8, holes=10, spatial_size=tuple(max(1, s // 12) for s in crop)),
        ]

    transforms = Compose([
        LoadStackd(),
        RandSpatialCropSamplesd(keys=["image"], roi_size=crop, random_size=False, num_samples=2),
        CopyItemsd(keys=["image"], times=2, names=["gt_image", "image_2"], allow_missing_keys=False),
        *views("image"), *views("image_2"),
    ])
    transforms.set_random_state(seed=config.seed)
    items = [{"path": p, "key": k} for k, p in zip(index.index, index["path"])]
    # num_samples=2 crops per exam: batch_size/2 exams give batch_size samples, as ours
    return DataLoader(Dataset(items, transform=transforms), batch_size=max(1, config.batch_size // 2), shuffle=True,
                      num_workers=num_workers, drop_last=True)


def plain_monai_model(config: PretrainConfig) -> torch.nn.Module:
    from monai.networks.nets import ViTAutoEnc

    e = config.encoder
    return ViTAutoEnc(in_channels=e.in_channels, out_channels=e.in_channels, img_size=e.img_size,
                      patch_size=e.patch_size, proj_type="conv", hidden_size=e.hidden_size, mlp_dim=e.mlp_dim,
                      num_layers=e.num_layers, num_heads=e.num_heads, spatial_dims=3)


def plain_monai_epochs(index: pd.DataFrame, config: PretrainConfig, *, epochs: int, device: torch.device,
                       bf16: bool = False, model: torch.nn.Module | None = None,
                       num_workers: int = 0) -> list[float]:
    """Samples per second of each epoch of the tutorial loop (data loading included, as ours)."""
    from monai.losses import ContrastiveLoss

    model = (model or plain_monai_model(config)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    recon_loss = torch.nn.L1Loss()
    contrastive_loss = ContrastiveLoss(temperature=0.05)
    loader = plain_monai_loader(index, config, num_workers=num_workers)
    rates = []
    for _ in range(epochs):
        t0, n = time.monotonic(), 0
        for batch in loader:
            inputs = batch["image"].to(device).as_tensor()
            inputs_2 = batch["image_2"].to(device).as_tensor()
            gt = batch["gt_image"].to(device).as_tensor()
            optimizer.zero_grad()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                out_v1, _ = model(inputs)
                out_v2, _ = model(inputs_2)
                r_loss = recon_loss(out_v1.float(), gt)
                cl_loss = contrastive_loss(out_v1.flatten(start_dim=1).float(), out_v2.flatten(start_dim=1).float())
                loss = r_loss + cl_loss * r_loss
            loss.backward()
            optimizer.step()
            n += inputs.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.monotonic() - t0))
    return rates


def ours_epochs(index: pd.DataFrame, config: PretrainConfig, *, epochs: int, out: Path) -> list[float]:
    """Exams (= samples: two views each) per second of each epoch of ml.foundation.train.pretrain."""
    result = pretrain(dataclasses.replace(config, epochs=epochs, checkpoint_every=10 ** 6), index, out_dir=out)
    return [h["volumes_per_s"] for h in result.history]


def compare(index: pd.DataFrame, config: PretrainConfig, *, rounds: int, epochs: int, out: Path,
            device: torch.device, bf16_plain: bool = False, plain_workers: int = 0) -> tuple[float, float]:
    """Alternating rounds; returns the medians (ours, plain) of the per-epoch rates after warm-up.

    ``plain_workers``: DataLoader workers of the plain loop (the tutorial uses 4; ours uses the
    config's ``num_workers``)."""
    ours, plain = [], []
    model = plain_monai_model(config)
    for r in range(rounds):
        rates = plain_monai_epochs(index, config, epochs=epochs, device=device, bf16=bf16_plain, model=model,
                                   num_workers=plain_workers)
        plain += rates[1:] if r == 0 and len(rates) > 1 else rates
        rates = ours_epochs(index, config, epochs=epochs, out=out / f"round{r}")
        ours += rates[1:] if len(rates) > 1 else rates
        print(f"  round {r + 1}: plain {statistics.median(plain):.2f} samples/s, ours {statistics.median(ours):.2f}",
              flush=True)
    return statistics.median(ours), statistics.median(plain)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default="/work/data/stacks200_4mm")
    parser.add_argument("--exams", type=int, default=32, help="exams per epoch")
    parser.add_argument("--config", default=str(REPO / "configs/foundation/cpu_small.yaml"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per loop and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/bench_pretrain_throughput")
    parser.add_argument("--patch", type=int, default=4,
                        help="patch edge for both loops (ViTAutoEnc needs a square number: 4 or 16)")
    parser.add_argument("--crop", type=int, default=32, help="crop edge (voxels) for both loops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from bench_pretrain import _index  # the same index helper (a folder still being built works)

    index = _index(Path(args.index)).iloc[: args.exams]
    config = load_config(args.config)
    encoder = dataclasses.replace(config.encoder, patch_size=args.patch, img_size=(args.crop,) * 3)
    config = dataclasses.replace(config, device="cpu", amp="none", encoder=encoder)
    e = config.encoder
    print(f"{len(index)} exams, crop {e.img_size} at {e.voxel_mm:g} mm, patch {e.patch_size}, hidden {e.hidden_size}, "
          f"{e.num_layers} layers, batch {config.batch_size}, {args.threads} threads", flush=True)
    ours, plain = compare(index, config, rounds=args.rounds, epochs=args.epochs, out=Path(args.out),
                          device=torch.device("cpu"))
    print(f"plain MONAI SSL loop (ViTAutoEnc tutorial): {plain:.2f} samples/s")
    print(f"ml.foundation.train:                        {ours:.2f} samples/s")
    print(f"ratio {ours / plain:.2f}x (target >= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
