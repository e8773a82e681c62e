#!/usr/bin/env bash
# Installs the CUDA compiler and headers that building `--features cuda` needs, from PyPI, with no
# GPU and no driver: nvcc, its front end (nvvm/cicc), the runtime headers and library, and CCCL
# (thrust, which one of candle's kernels includes). Prints the directory to use as CUDA_HOME.
#
# Pinned to 13.4: cudarc 0.19.10 (pinned by candle 0.11.1) knows CUDA up to 13.4 and refuses a
# newer nvcc. CCCL has no 13.4 wheel; 13.3's headers are the newest that exist.
#
#   CUDA_HOME=$(scripts/install-cuda-toolkit.sh)
#
# Installed once per machine into ${MARKET_CUDA_DIR:-$HOME/.cache/market/cuda-13.4}.
set -euo pipefail
dir=${MARKET_CUDA_DIR:-$HOME/.cache/market/cuda-13.4}
home="$dir/nvidia/cu13"
if [ ! -x "$home/bin/nvcc" ] || [ ! -x "$home/nvvm/bin/cicc" ]; then
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
    nvidia-cuda-nvcc==13.4.92 nvidia-cuda-runtime==13.4.92 nvidia-cuda-crt==13.4.92 \
    nvidia-nvvm==13.4.92 nvidia-cuda-cccl==13.3.5.0.6 >&2
fi
# candle-kernels links `-lcudart`; the wheel ships only the versioned name.
ln -sf libcudart.so.13 "$home/lib/libcudart.so"
"$home/bin/nvcc" --version | tail -1 >&2
echo "$home"
