#!/usr/bin/env bash
# Builds, on a machine with no GPU, what scripts/gpu-check.sh runs on a GPU machine that has no
# Rust toolchain (such as the lent device machine): the `cuda` builds of the `tolerance` and
# `llama_bench` examples, stripped, packed in OUT_DIR/gpu-check.tar.xz (about 15 MB; each binary
# holds candle's kernels for one GPU generation), and the SmolLM2 model cut in two,
# OUT_DIR/model.part-aa (52 MB) and model.part-ab (46 MB), so that one transfer of at most
# 64 MiB carries the first part and the next carries the second with the binaries.
#
#   scripts/gpu-bundle.sh [OUT_DIR]      (default .gpu; CUDA_COMPUTE_CAP defaults to 90, Hopper)
#
# The CUDA compiler comes from PyPI (scripts/install-cuda-toolkit.sh). The driver and the CUDA
# libraries are linked against stubs made here from cudarc's own list of the functions it binds
# (each stub returns an error and is never called: at run time the GPU machine's real
# libcuda.so.1, libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13 are
# loaded; gpu-check.sh finds them). The stubs carry only the link names (libcuda.so, ...), never
# the run-time names, so they cannot shadow a real driver.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu}
CUDA_HOME=$(scripts/install-cuda-toolkit.sh)
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

cargo fetch --locked --quiet
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)
stubs="$CUDA_HOME/lib/stubs"
mkdir -p "$stubs"
stub() { # link name, run-time name, cudarc module
  grep -o 'load::<_F>("[A-Za-z0-9_]*")' "$cudarc/src/$3/sys/mod.rs" | sort -u |
    sed 's/.*("\(.*\)")/int \1(void) { return 34; }/' >"$stubs/$1.c"
  cc -shared -fPIC -o "$stubs/lib$1.so" -Wl,-soname,"$2" "$stubs/$1.c"
}
stub cuda libcuda.so.1 driver
stub cublas libcublas.so.13 cublas
stub cublasLt libcublasLt.so.13 cublaslt
stub curand libcurand.so.10 curand
stub nvrtc libnvrtc.so.13 nvrtc

# `cargo rustc` passes the stub folder to the final link only, so nothing else is rebuilt.
build() { # cargo target selection...
  cargo rustc --release --locked --features cuda -p market-compute "$@" \
    --message-format=json-render-diagnostics -- -L "native=$stubs" |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])'
}
rm -rf "$out"
mkdir -p "$out/bin"
for target in "--example tolerance" "--example llama_bench"; do
  # shellcheck disable=SC2086
  exe=$(build $target | tail -1)
  name=${target##* }
  strip -o "$out/bin/$name" "$exe"
done
echo "built for compute capability $CUDA_COMPUTE_CAP with $(nvcc --version | tail -1), commit $(git rev-parse --short HEAD)" >"$out/bin/BUILD"
tar -C "$out" -cf - bin | xz -T0 -6 >"$out/gpu-check.tar.xz"
rm -rf "$out/bin"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$model" ]; then
  split -b 50M "$model" "$out/model.part-"
else
  echo "no $model (scripts/fetch-models.sh installs it): the bundle has no model" >&2
fi
ls -la "$out" >&2
