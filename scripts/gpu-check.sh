#!/usr/bin/env bash
# The GPU check of training (issue 17), never part of `make test`: on a machine where torch sees a GPU, after
# `make setup`. It writes its results to $GPU_CHECK_OUT (default docs/bench):
#   1. 1 and 2 training processes on the GPU(s) against the CPU run (tests/test_distributed_training.py);
#   2. `pinrec bench train --device cuda`: tokens/s and seconds per epoch on the GPU, 1 and 2 processes, as a
#      ratio to 1 process on the CPU in the same run, at d=64 and at d=256;
#   3. `pinrec bench model --device cuda --dim 256` on Amazon Beauty: the quality at the width the GPU allows,
#      in the same time budget as the CPU figure (20 minutes per model; GPU_CHECK_MINUTES shortens it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${GPU_CHECK_OUT:-docs/bench}
BEAUTY=${BEAUTY:-../shared/data/amazon-beauty/Beauty.txt}
MINUTES=${GPU_CHECK_MINUTES:-20}
mkdir -p "$OUT"
"$BIN/python" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu-check: torch sees no GPU here (torch.cuda.is_available() is False); run it on a GPU machine")
print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
PY
"$BIN/python" -m pytest -q -s tests/test_distributed_training.py -k on_gpus
for dim in 64 256; do
    "$BIN/pinrec" bench train --device cuda --dim "$dim" --out "${TMPDIR:-/tmp}/pinrec-gpu-check" \
        --json "$OUT/train-gpu-d$dim.json"
done
"$BIN/pinrec" bench model --dataset "$BEAUTY" --device cuda --dim 256 --seeds 1 \
    --time-budget-min "$MINUTES" --out "${TMPDIR:-/tmp}/pinrec-gpu-check" --json "$OUT/beauty-loo-gpu-d256.json"
echo "gpu-check passed; results in $OUT"
