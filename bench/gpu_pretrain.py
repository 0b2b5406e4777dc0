"""GPU throughput of pretraining at 96^3 (2 mm) in bf16, beside the plain MONAI SSL loop; under 5 minutes.

Makes its own exams with the generator (``--exams``, resampled to the 2 mm common grid, no
registration: throughput does not depend on it) or reads ``--index``, then alternates rounds of
ml.foundation.train.pretrain (configs/foundation/gpu_base.yaml: ViT-B width, 16^3 patches, bf16
autocast, MAE) and of the MONAI ViTAutoEnc tutorial loop with the same model size, channels, crop
and batch, in float32 as the tutorial and with bf16 autocast. Prints samples/s and the ratios.

    bash bench/gpu_pretrain.sh                 # on a GPU machine
    .venv/bin/python bench/gpu_pretrain.py --dry-run   # tiny sizes on CPU: checks that it runs
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pretrain_throughput import compare  # noqa: E402

from ml.foundation.config import load_config  # noqa: E402
from ml.foundation.data import INDEX_COLUMNS, load_index, save_stack, stack_from_arrays  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _make_exam(args: tuple[int, str, float, str]) -> dict[str, str]:
    """One generated exam on the common grid, saved as a stack; its index row."""
    patient, timepoint, voxel_mm, out = args
    from ml.io.grid import common_grid, resample_to_grid
    from ml.phantoms import draw_patient, render_exam

    grid = common_grid(voxel_mm)
    exam = render_exam(draw_patient(seed=5, patient_index=patient, site=patient % 4, resolution=2), timepoint,
                       psf=False)

    def on_grid(v):
        return resample_to_grid(v.data, v.affine, grid)

    lab = exam.labels
    meta = {"site": lab.site, "patient": lab.participant_id, "exam": exam.session_id, "timepoint": exam.timepoint,
            "diagnosis": lab.diagnosis if exam.timepoint == "suspected_recurrence" else "n/a", "idh": lab.idh,
            "codeletion_1p19q": lab.codeletion_1p19q, "who_grade": str(lab.who_grade)}
    key = f"{lab.participant_id}/{exam.session_id}"
    stack = stack_from_arrays(
        t1c=on_grid(exam.t1c), flair=on_grid(exam.flair), suv=on_grid(exam.pet_static) * exam.suv_factor,
        suv_dynamic=on_grid(exam.pet_dynamic) * exam.suv_factor, frame_start_s=exam.frame_start_s,
        frame_duration_s=exam.frame_duration_s, affine=grid.affine, key=key, meta=meta)
    path = save_stack(stack, Path(out) / f"{key.replace('/', '_')}.npz")
    return {"key": key, **{k: meta[k] for k in INDEX_COLUMNS[:-1]}, "path": str(path)}


def make_index(n_exams: int, voxel_mm: float, out: Path, workers: int) -> pd.DataFrame:
    jobs = [(i // 2, ("initial_diagnosis", "suspected_recurrence")[i % 2], voxel_mm, str(out)) for i in range(n_exams)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(_make_exam, jobs))
    return pd.DataFrame(rows).set_index("key")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/foundation/gpu_base.yaml"))
    parser.add_argument("--index", default=None, help="stacks on the config's grid (default: generate --exams)")
    parser.add_argument("--exams", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loop and round (the first is warm-up)")
    parser.add_argument("--workers", type=int, default=8, help="processes generating exams")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (4 mm, tiny config)")
    parser.add_argument("--out", default=None, help="folder for runs and results.json (default: a temp dir)")
    args = parser.parse_args()
    t0 = time.monotonic()
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_pretrain_"))
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config)
    if args.dry_run:
        config = load_config(REPO / "configs/foundation/tiny.yaml")
        config = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, patch_size=4,
                                                                         img_size=(16, 16, 16)))
        args.exams, args.rounds, args.epochs = min(args.exams, 8), 1, 2
        torch.set_num_threads(1)
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    voxel = config.encoder.voxel_mm
    index = load_index(args.index) if args.index else make_index(args.exams, voxel, out / "stacks", args.workers)
    print(f"{len(index)} exams on the {voxel:g} mm grid ready after {time.monotonic() - t0:.0f} s; device {device}"
          f"{' ' + torch.cuda.get_device_name(0) if device.type == 'cuda' else ''}", flush=True)
    e = config.encoder
    print(f"crop {e.img_size}, patch {e.patch_size}, hidden {e.hidden_size}, {e.num_layers} layers, "
          f"batch {config.batch_size}", flush=True)
    workers = 0 if args.dry_run else config.num_workers  # the tutorial's 4 on a GPU machine
    ours, plain32 = compare(index, config, rounds=args.rounds, epochs=args.epochs, out=out / "fp32",
                            device=device, bf16_plain=False, plain_workers=workers)
    results = {"ours_bf16": ours, "plain_fp32": plain32}
    if device.type == "cuda":
        ours2, plain16 = compare(index, config, rounds=1, epochs=args.epochs, out=out / "bf16", device=device,
                                 bf16_plain=True, plain_workers=workers)
        results.update(ours_bf16_2=ours2, plain_bf16=plain16,
                       peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30)
    print(f"ours (bf16 on CUDA, float32 on CPU)   {ours:8.2f} samples/s")
    print(f"plain MONAI SSL loop, float32         {plain32:8.2f} samples/s   ratio {ours / plain32:.2f}x")
    if "plain_bf16" in results:
        print(f"plain MONAI SSL loop, bf16 autocast   {results['plain_bf16']:8.2f} samples/s   ratio "
              f"{results['ours_bf16_2'] / results['plain_bf16']:.2f}x")
        print(f"peak GPU memory {results['peak_gib']:.1f} GiB")
    results["seconds"] = time.monotonic() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"total {results['seconds']:.0f} s; results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
