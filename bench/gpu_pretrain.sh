#!/usr/bin/env bash
# GPU pretraining throughput (bench/gpu_pretrain.py), under 5 minutes on one GPU.
# Uses the project's .venv when its torch sees CUDA, else the machine's python3; results land in
# ${OUT:-/tmp}/gpu_pretrain/results.json. Extra arguments go to the script (e.g. --exams 16).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  PY=.venv/bin/python
fi
"$PY" -c "import torch, monai, einops, yaml, sklearn, scipy, nibabel" || {
  echo "missing packages for $PY (needs torch with CUDA, monai, einops, pyyaml, scikit-learn, scipy, nibabel)" >&2; exit 2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 290 "$PY" bench/gpu_pretrain.py --out "${OUT:-/tmp}/gpu_pretrain" "$@"
