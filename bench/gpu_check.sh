#!/usr/bin/env bash
# The first thing to run on a CUDA machine: stage 1 and 2 at the paper configuration in bf16 for a
# few hundred steps on synthetic shards, then a 2-process NCCL run; prints samples/s, TFLOP/s, MFU,
# peak GPU memory and the data-wait fraction of each, and writes OUT/gpu_check.json.
#   bench/gpu_check.sh                      # defaults: --out gpu_check_out --steps 300 --steps2 200
#   bench/gpu_check.sh --out /tmp/gc --bert-dir checkpoints/bert-large-uncased
# All options: python bench/gpu_check.py --help. PYTHON selects the interpreter (default: python).
# Without a CUDA device it measures nothing and exits 1 with one line saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "bench/gpu_check.sh: no CUDA device is visible to torch ($PY): nothing was measured; run it on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
  exit 1
fi
exec "$PY" bench/gpu_check.py "$@"
