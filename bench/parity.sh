#!/usr/bin/env bash
# The training-step parity record: N steps (default 30) of every example recipe that trains
# on the built-in corpus, and of tests/train/optimizers.model's recipes, each printed as one
# line per step with every metric except the timing (loss, lr, grad_norm, loss scale, aux
# losses and metrics), then a resume check (N/2 steps, --resume to N: the final weights must
# equal the uninterrupted run's). Two records must be identical, digit for digit, before and
# after any change that claims to change no result.
# Usage: bash bench/parity.sh [BIN] [STEPS] > record.txt
set -euo pipefail
root=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
bin=${1:-$root/target/release/modelc}
steps=${2:-30}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
strip() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    row = json.loads(line)
    row.pop("tokens_per_s", None)
    print(json.dumps(row, sort_keys=True))
' "$1"; }
train() { # file recipe
  local out="$work/$(basename "$1" .model)-$2"
  "$bin" train "$1" --recipe "$2" --steps "$steps" --out "$out" --checkpoint-every 100000 2>/dev/null
  echo "## $(basename "$1") $2"
  strip "$out/metrics.jsonl"
  sha256sum "$out/final.safetensors" | cut -c1-16
}
if [ -z "${RESUME_ONLY:-}" ]; then
train "$root/examples/llama.model" tiny
mkdir -p runs/llama-tiny && cp "$work/llama-tiny/final.safetensors" runs/llama-tiny/
for spec in llama:tiny_f16 gpt2:tiny gpt2:tiny_recompute mistral:tiny gemma2:tiny mixtral:tiny \
    mixtral:tiny_upcycled deepseek_moe:tiny bert:tiny t5:tiny lora:tiny ptuning:tiny; do
  train "$root/examples/${spec%%:*}.model" "${spec#*:}"
done
for r in sgd_nesterov sgd_plain adam_l2 adafactor_decay bf16_accumulate; do
  train "$root/tests/train/optimizers.model" "$r"
done
else
  for spec in examples/llama:tiny examples/llama:tiny_f16 tests/train/optimizers:adafactor_decay tests/train/optimizers:sgd_nesterov; do
    train "$root/${spec%%:*}.model" "${spec#*:}" > /dev/null
  done
fi
# Resume: a run checkpointed halfway, its later checkpoints removed as if killed there, then
# --resume to the end, equals the run straight through (same total steps, so schedules
# that depend on the total agree).
for spec in llama:tiny llama:tiny_f16 optimizers:adafactor_decay optimizers:sgd_nesterov; do
  f="$root/examples/${spec%%:*}.model"; [ -f "$f" ] || f="$root/tests/train/${spec%%:*}.model"
  r=${spec#*:}; half=$((steps / 2)); d="$work/resume-$r"
  "$bin" train "$f" --recipe "$r" --steps "$steps" --out "$d" --checkpoint-every "$half" 2>/dev/null
  rm -f "$d"/step-"$steps".* "$d"/final.safetensors
  "$bin" train "$f" --recipe "$r" --steps "$steps" --out "$d" --resume "$d" 2>/dev/null
  a=$(sha256sum < "$d/final.safetensors"); b=$(sha256sum < "$work/${spec%%:*}-$r/final.safetensors")
  echo "## resume $spec: $([ "$a" = "$b" ] && echo identical || echo DIFFERENT)"
done
