#!/usr/bin/env bash
# On a machine with a CUDA GPU (H100/H200: a few minutes; GPU_CHECK_TIMEOUT=seconds, default 600):
#   1. checks that CUDA-graph replay gives the plain eager step's losses for every built-in model,
#      that an uncapturable model falls back (auto) or fails clearly (on);
#   2. prints per-epoch train times per built-in model with graphs on and off, next to the
#      notebook-style torchvision/DataLoader loop, and a whole `bench run --grid seed` process;
#   3. trains 100 linear and 100 mlp cells (50 seeds x 2 learning rates: each seed's members share their
#      batch) fused (one stacked model, one CUDA graph) and one by one, then the 100 linear cells again with a
#      cosine schedule: each member must match its unfused run; prints training time per cell both ways
#      (targets 10x / 5x).
#      --fused-cells N changes the 100 (0 skips it).
# Installs nothing beyond what `pip install -e .` needs (and only if gridbench's imports are missing).
# Extra arguments go to benchmarks/gpu_check.py (e.g. --compile, --epochs 5, --device cpu to try it here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import torch, torchvision, pluggy, click, pandas, tqdm, safetensors" 2>/dev/null; then
    "$PY" -m pip install -q -e .
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"
exec timeout ${GPU_CHECK_TIMEOUT:-600} "$PY" benchmarks/gpu_check.py "$@"
