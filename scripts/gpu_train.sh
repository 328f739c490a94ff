#!/usr/bin/env bash
# Train both models on a lent GPU machine in one call of the device tool (README
# "Training"): run from the repository root there, with the training pack carried
#   run(command="bash scripts/gpu_train.sh", carry=["pack"], timeout_s=600)
# Extra arguments go to scripts/gpu_train.py (e.g. --minutes 4 for a shorter rerun).
# Everything lands in $OUT: summary.json, logs.tar.gz, weights.tar.NN.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
if [ ! -f pack/MANIFEST.json ]; then
    echo "no pack/: build it here with 'python scripts/train_pack.py' and carry it" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv || true
# The machine's python3 holds torch 2.11 with CUDA, onnx and onnxruntime; this repo's
# modules come from the working tree.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 scripts/gpu_train.py --data-root pack --out "$OUT" "$@" 2>&1 | tee "$OUT/driver.log"
