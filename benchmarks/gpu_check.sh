#!/usr/bin/env bash
# Every GPU check and benchmark in one call, for a lent device machine (the `device` tool's `run`):
#   bash benchmarks/gpu_check.sh        # writes logs and JSON under $OUT (or ./gpu-results)
# The device image brings its own CUDA torch; this installs only the project itself and what
# the image lacks (no peers: the device machine has no network), then runs, each bounded in time:
#   1. what the machine has: GPU, torch CUDA, ONNX Runtime providers (as a created session sees them)
#   2. the training tests on CUDA-capable code paths and a bf16+compile training run
#   3. benchmarks/train_bench.py: fp32, TF32, bf16, bf16+compile vs the DataLoader loop
#   4. benchmarks/export_bench.py: folded vs unfolded, CPU and the CUDA provider if it loads
set -uo pipefail
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps -e . >"$out/install.log" 2>&1

step() { echo "== $1"; shift; timeout "$@"; echo "   exit $?"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 - <<'PY'
import torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("ort", ort.__version__, "listed providers", ort.get_available_providers())
PY
} >"$out/machine.txt" 2>&1

step "trainer on CUDA (bf16 + compile)" 240 python3 -m bnmodel train --device cuda \
  --precision bf16 --compile --epochs 5 --out "$out/run" --quiet >"$out/train_cuda.log" 2>&1
step "train_bench" 420 python3 benchmarks/train_bench.py --device cuda --steps 50 --repeats 3 \
  --json "$out/train_bench.json" >"$out/train_bench.txt" 2>&1
step "export_bench" 240 python3 benchmarks/export_bench.py --min-time 0.5 \
  >"$out/export_bench.txt" 2>&1
cat "$out"/machine.txt "$out"/*.txt 2>/dev/null | tail -n 120
