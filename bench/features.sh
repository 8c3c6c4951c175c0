#!/usr/bin/env bash
# Step time of each recipe feature on the tiny recipes, through the reference interpreter
# (release build), all in one run so the ratios share a machine. Prints one line per
# configuration: median tokens/s over the steps after the first, and the measured
# activation peak. Usage: bash bench/features.sh [STEPS] > bench/results/features-DATE.txt
set -euo pipefail
steps=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml"
bin="$root/target/release/modelc"
work=$(mktemp -d)
cd "$work"
median() { python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
tps = statistics.median(r["tokens_per_s"] for r in rows)
peak = max(r["activations_peak_bytes"] for r in rows) / 1e6
print("%10.0f tokens/s  peak %7.2f MB" % (tps, peak))
PY
}
run() { # name file recipe
  "$bin" train "$root/examples/$2" --recipe "$3" --steps "$steps" --out "$work/$1" --checkpoint-every 100000 2>/dev/null
  printf '%-28s %s\n' "$1" "$(median "$work/$1/metrics.jsonl")"
}
echo "# $(date -u +%F) $(uname -m), $(nproc) cores, $steps steps, release build, reference interpreter"
run llama-tiny-f32 llama.model tiny
run llama-tiny-f16-mixed llama.model tiny_f16
run gpt2-tiny gpt2.model tiny
run gpt2-tiny-recompute gpt2.model tiny_recompute
# The fine-tunes start from the llama run's final weights.
mkdir -p runs/llama-tiny && cp "$work/llama-tiny-f32/final.safetensors" runs/llama-tiny/
run lora-tiny lora.model tiny
run ptuning-tiny ptuning.model tiny
run mixtral-tiny mixtral.model tiny
for cache in "" "--no-cache"; do
  start=$(date +%s.%N)
  "$bin" generate "$root/examples/llama.model" --checkpoint runs/llama-tiny/final.safetensors \
    --prompt "The model" --max-tokens 200 --temperature 0 $cache > /dev/null
  end=$(date +%s.%N)
  printf '%-28s %10.0f tokens/s\n' "generate-200${cache:+-no-cache}" "$(python3 -c "print(200/($end-$start))")"
done
rm -rf "$work"
