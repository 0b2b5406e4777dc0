"""Fine-tuning throughput of the WP3 deep families on a GPU (prepared script, under 5 minutes).

Usage::

    python bench/gpu_finetune.py [--encoder CKPT.pt] [--voxel-mm 2] [--crop 96] [--batch 16]
        [--steps 50] [--budget-s 240] [--json OUT.json]
    python bench/gpu_finetune.py --dry-run          # on CPU, tiny sizes, 2 steps: checks the script

For each model, the WP1 foundation encoder + linear head (fine-tuning: every weight trained,
encoder at 0.1 x the head's learning rate, as :class:`ml.classify.finetune.FoundationClassifier`)
and the scratch CNNs of :mod:`ml.classify.cnn` (MONAI DenseNet121, the small ResNet and DenseNet),
it times full training steps (forward, BCE loss, backward, AdamW) on random crops of the channel
stack shape ``(B, 5, crop, crop, crop)`` under bf16 autocast, after warm-up steps, and prints
crops/s, ms/step and the peak GPU memory. Data loading is not timed (the crops of a 200-patient
4 mm cohort fit in GPU memory). Each model stops early when the time budget runs out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(name: str, args, device):
    import torch

    from ml.classify.cnn import build_cnn
    from ml.classify.finetune import EncoderClassifierNet
    from ml.foundation.model import EncoderConfig, FoundationEncoder, load_encoder

    if name == "foundation":
        if args.encoder:
            encoder, _ = load_encoder(args.encoder)
        else:
            cfg = EncoderConfig(img_size=(args.crop,) * 3, voxel_mm=args.voxel_mm)
            if args.dry_run:
                cfg = EncoderConfig(img_size=(args.crop,) * 3, voxel_mm=args.voxel_mm, hidden_size=32, mlp_dim=64,
                                    num_layers=1, num_heads=2)
            encoder = FoundationEncoder(cfg)
        net = EncoderClassifierNet(encoder, encoder.config.hidden_size, dropout=0.1).to(device)
        groups = [{"params": net.encoder.parameters(), "lr": 1e-4}, {"params": net.head.parameters(), "lr": 1e-3}]
    else:
        net = build_cnn(name.removeprefix("cnn-"), 5).to(device)
        groups = [{"params": net.parameters(), "lr": 1e-3}]
    return net, torch.optim.AdamW(groups, weight_decay=1e-4)


def time_model(name: str, args, device) -> dict:
    import torch

    net, opt = build(name, args, device)
    n_params = sum(p.numel() for p in net.parameters())
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(args.batch, 5, args.crop, args.crop, args.crop, device=device)
    origin = torch.zeros(args.batch, 3, device=device)
    y = (torch.rand(args.batch, device=device) < 0.5).float()
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = loss_fn(net(x, origin).float(), y)
        loss.backward()
        opt.step()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = 0
    for _ in range(args.steps):
        step()
        done += 1
        if time.perf_counter() - t0 > args.budget_s / 4:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    row = {"model": name, "params_M": n_params / 1e6, "batch": args.batch, "crop": args.crop, "steps": done,
           "ms_per_step": 1000 * dt / done, "crops_per_s": args.batch * done / dt, "peak_gib": peak}
    print(f"{name:<16} {row['params_M']:6.2f} M params  {row['ms_per_step']:8.1f} ms/step  "
          f"{row['crops_per_s']:8.1f} crops/s  peak {peak:.1f} GiB  ({done} steps)", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="WP1 checkpoint (default: random encoder, same shape)")
    parser.add_argument("--voxel-mm", type=float, default=2.0)
    parser.add_argument("--crop", type=int, default=96, help="crop edge (voxels); 96 at 2 mm = 192 mm")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=240.0, help="whole-script time budget (s)")
    parser.add_argument("--models", default="foundation,cnn-densenet121,cnn-resnet,cnn-densenet")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="CPU, crop 32, batch 2, 2 steps")
    args = parser.parse_args(argv)

    import torch

    if args.dry_run:
        args.crop, args.batch, args.steps, args.warmup, args.voxel_mm = 32, 2, 2, 1, 4.0
        device = torch.device("cpu")
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run on CPU", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        if time.perf_counter() - t0 > args.budget_s:
            print(f"{name}: skipped (time budget spent)")
            continue
        rows.append(time_model(name, args, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
