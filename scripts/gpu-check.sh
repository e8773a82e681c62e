#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU (never in CI):
#   1. `repro` on this machine's CPU reproduces every training vector's golden checkpoints bit
#      for bit, and the `cuda` profile stays within the state tolerance of `repro` while a
#      skipped step does not (`tolerance --profile cuda`: the calibration, task by task);
#   2. SmolLM2-135M-Instruct in `repro` and `cuda` side by side (`llama_bench --device cuda`):
#      greedy answers to five chat prompts, top-1 agreement, the largest logit difference against
#      LOGIT_TOLERANCE, prefill and decode throughput, and the one-pass verification cost.
# Record what it prints in BENCHMARKS.md ("GPU").
#
# Where Rust and the CUDA compiler are installed:   scripts/gpu-check.sh [MODEL.gguf]
#   (builds with `--features cuda`; nvcc on PATH or CUDA_HOME, e.g. from
#   scripts/install-cuda-toolkit.sh; the GPU's compute capability is detected by nvidia-smi)
# Where they are not (the lent device machine): build the bundle here with scripts/gpu-bundle.sh,
#   then in two calls of the device tool, the second at once (a machine stays warm ~30 s):
#     run carry [".gpu/model.part-aa"]  command "cp .gpu/model.part-aa /tmp/"
#     run carry [".gpu/model.part-ab", ".gpu/gpu-check.tar.xz"]
#         command "GPU_CHECK_BUNDLE=.gpu/gpu-check.tar.xz MODEL_PARTS='/tmp/model.part-aa .gpu/model.part-ab' scripts/gpu-check.sh 2>&1 | tee $OUT/gpu-check.log"
#   (if the first machine went back in between, the model is missing and step 2 says so).
set -uo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
status=0

echo "== the machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || status=1
lscpu | grep -E '^(Model name|CPU\(s\)):' || true

if [ -n "${GPU_CHECK_BUNDLE:-}" ]; then
  bin=$(mktemp -d)
  tar -C "$bin" -xJf "$GPU_CHECK_BUNDLE" || exit 1
  bin="$bin/bin"
  cat "$bin/BUILD"
  # The binaries were linked against stubs; load the real driver and CUDA libraries.
  libs=""
  for name in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcurand.so.10; do
    found=$(find /usr/local/nvidia /usr/lib /usr/local /opt -name "$name" 2>/dev/null | head -1)
    [ -n "$found" ] || { echo "gpu-check: $name not found on this machine" >&2; exit 1; }
    libs="$libs:$(dirname "$found")"
  done
  export LD_LIBRARY_PATH="${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export MARKET_SPEC_DIR="$PWD/spec"
  tolerance="$bin/tolerance"
  bench="$bin/llama_bench"
else
  if [ -n "${CUDA_HOME:-}" ]; then export PATH="$CUDA_HOME/bin:$PATH"; fi
  cargo build --release --locked --features cuda -p market-compute --example tolerance --example llama_bench || exit 1
  tolerance=target/release/examples/tolerance
  bench=target/release/examples/llama_bench
fi

if [ -n "${MODEL_PARTS:-}" ]; then
  joined=$(mktemp)
  # shellcheck disable=SC2086
  if cat $MODEL_PARTS >"$joined" 2>/dev/null; then model=$joined; else echo "gpu-check: a model part is missing"; fi
fi

echo "== 1. training vectors: repro bits on this CPU, cuda against repro"
"$tolerance" --profile cuda || status=1

echo "== 2. SmolLM2-135M-Instruct, repro and cuda"
if [ -s "$model" ]; then
  "$bench" --device cuda "$model" || status=1
else
  echo "no model at $model: scripts/fetch-models.sh installs it (or pass MODEL.gguf)"
  status=1
fi
exit $status
