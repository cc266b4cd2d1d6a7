#!/usr/bin/env bash
# Every GPU measurement and test of the project in one short run, for a lent GPU machine with little time.
#
#   scripts/gpu-check.sh [OUT_DIR]        (default: ./gpu-check-out; each step's JSON/log lands there)
#
# Needs a Python with the project's packages and a CUDA build of torch: $XR0_PYTHON, else ./.venv/bin/python
# (a venv built by ./xr0w has the CPU build: on the GPU box install a CUDA torch into it, or point
# XR0_PYTHON at an environment that has one). Each step has its own time limit and a failure does not stop
# the others; the summary at the end says which passed. About 5-8 minutes on an H200.
set -u
OUT=${1:-gpu-check-out}
PY=${XR0_PYTHON:-./.venv/bin/python}
mkdir -p "$OUT"
export MUJOCO_GL=egl PYTHONUNBUFFERED=1
status=()

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then status+=("ok    $name"); else status+=("FAIL  $name (rc $?)"); fi
    tail -n 1 "$OUT/$name.log"
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: $PY has no CUDA-enabled torch (torch.cuda.is_available() is False); nothing measured" >&2
    exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >>"$OUT/device.txt" 2>&1

# 1. The GPU tests of the suite (parity of the fused sampler on CUDA, bf16 paths).
step tests-gpu 240 "$PY" -m pytest -q -m gpu tests
# 2. Full XR0 latency, bf16, 3 views 320x256, T = 30, 5 steps, each stage against its reference path.
step inference-full 240 "$PY" -m app bench inference --variant full --device cuda --iters 30 --warmup 5
step inference-full-prefix 180 "$PY" -m app bench inference --variant full --device cuda --iters 30 --prefix 6 --no-compare
# 3. Several robots on one GPU: 1 client, 4 batched, 4 one by one.
step serve-full 300 "$PY" -m app bench serve --variant full --device cuda --clients 4 --seconds 15
# 4. Training step time and peak memory per mode on the mid-size model.
step train-small 300 "$PY" -m app bench train --variant small --device cuda --modes frozen-vlm lora full --steps 5 --warmup 1

printf '%s\n' "${status[@]}" | tee "$OUT/summary.txt"
