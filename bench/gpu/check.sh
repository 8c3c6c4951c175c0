#!/usr/bin/env bash
# The standing GPU check: run first whenever a task is lent the GPU machine (see
# DEVELOPERS.md). Records the machine (driver, nvcc, the CUDA libraries a cudarc build
# will load), checks that a modelc binary built on the developers' machine runs there, and
# times the GPU peer (GPT-2 124M, bf16, PyTorch eager and torch.compile) so that modelc's
# CUDA backend, once built, is compared with it in the same run.
#
# Usage, through the device tool, with the release binary carried:
#   run(command: "bash bench/gpu/check.sh", carry: ["target/release/modelc"])
# Everything goes to stdout and to $OUT/gpu-check.txt and $OUT/gpu-peer.jsonl; commit them
# under bench/results/ as gpu-check-DATE.txt and gpu-peer-DATE.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu-check.txt") 2>&1
export PYTHONUNBUFFERED=1
section() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

section "machine"
date -u +%FT%TZ
uname -srm
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
nvcc --version | tail -2
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'

section "CUDA libraries a dynamically loading build (cudarc) would find"
# cudarc searches the loader path, not site-packages: record where NVRTC and cuBLASLt are.
ldconfig -p | grep -E 'libcuda\.so|libnvrtc|libcublasLt|libcublas\.so' | sed 's/^\s*//' || true
python3 - <<'PY'
import glob, os, site
roots = site.getsitepackages()
for pat in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/*/lib/libnvrtc.so*", "nvidia/*/lib/libcublasLt.so*",
            "nvidia/cu*/lib/libcublasLt.so*", "nvidia/*/include/cuda_bf16.h", "nvidia/cu*/include/cuda_bf16.h"):
    for r in roots:
        for p in sorted(glob.glob(os.path.join(r, pat))):
            print(p)
PY

section "modelc built on the developers' machine runs here"
bin=target/release/modelc
if [ -x "$bin" ]; then
  "$bin" --version
  "$bin" check examples/llama.model && echo "check: ok"
  # The CPU path end to end (a few steps; the interpreter is slow: this checks it runs).
  "$bin" train examples/llama.model --recipe tiny --steps 3 --out /tmp/modelc-cpu-run 2>&1 | tail -3
  # Once the CUDA backend exists this runs the same recipe on the GPU; until then it must
  # fail with a clear message naming the missing feature or flag, never a panic.
  "$bin" train examples/llama.model --recipe tiny --steps 3 --device cuda --out /tmp/modelc-gpu-run 2>&1 | tail -5
  echo "modelc --device cuda exit: $?"
else
  echo "no $bin carried: build it with 'cargo build --release' and carry it"
fi

section "GPU peer: GPT-2 124M, bf16, B=16 T=1024 (torch_gpu_bench.py)"
timeout 420 python3 bench/gpu/torch_gpu_bench.py --batch 16 --seq 1024 --steps 30 --out "$out/gpu-peer.jsonl"
echo "peer exit: $?"
section "done"
