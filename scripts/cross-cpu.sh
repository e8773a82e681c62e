#!/usr/bin/env bash
# The repro profile on other CPUs: runs the golden-vector tests (compute/tests/determinism.rs:
# every training vector's checkpoints, gpt, mlp, cases, pooled and llama, the inference outputs
# and the text dataset's tokens) under qemu-user, emulating older x86-64 CPUs (SSE only, AVX2
# without AVX-512) and, with --arm, a 64-bit ARM build. Not in CI (minutes of emulation); the
# figures go in BENCHMARKS.md.
#
#   scripts/cross-cpu.sh [--arm]
#
# Needs Debian's qemu-user (apt-get install qemu-user); --arm also needs
# `rustup target add aarch64-unknown-linux-gnu` and Debian's gcc-aarch64-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."
arm=false
[ "${1:-}" = "--arm" ] && arm=true

# The thread-count test starts copies of its own binary, which qemu-user does not follow; it
# runs natively in CI.
skip=(--skip same_hash_for_one_and_two_threads_in_separate_processes)

test_binary() { # extra cargo args...
  cargo test --release --locked -p market-compute --test determinism --no-run \
    --message-format=json "$@" |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])' | tail -1
}

status=0
exe=$(test_binary)
echo "== natively: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
"$exe" "${skip[@]}" -q || status=1
for cpu in Nehalem Haswell; do
  echo "== qemu-x86_64 -cpu $cpu"
  qemu-x86_64 -cpu "$cpu" "$exe" "${skip[@]}" -q || status=1
done

if $arm; then
  echo "== aarch64 (cross-built, qemu-aarch64)"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
  arm_exe=$(test_binary --target aarch64-unknown-linux-gnu)
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$arm_exe" "${skip[@]}" -q || status=1
fi
exit $status
