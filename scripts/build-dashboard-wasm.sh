#!/usr/bin/env bash
# Builds the ledger verifier for browsers (ledger/wasm) into market/dashboard/ledger.wasm, the
# module the node's dashboard embeds and serves. Paths are remapped so the bytes do not depend
# on where the source or the cargo home lie: anyone can rebuild it and compare (`--check` fails
# if the committed file differs from a fresh build, as CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
fi
# (These flags replace .cargo/config.toml's for the target, so its getrandom setting is repeated.)
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="--cfg getrandom_backend=\"unsupported\" --remap-path-prefix=$root=/market --remap-path-prefix=$cargo_home=/cargo" \
  cargo build -p market-ledger-wasm --target wasm32-unknown-unknown --profile dashboard-wasm --locked
built=target/wasm32-unknown-unknown/dashboard-wasm/market_ledger_wasm.wasm
if [ "${1:-}" = "--check" ]; then
  if ! cmp -s "$built" market/dashboard/ledger.wasm; then
    echo "market/dashboard/ledger.wasm is not what this source builds: run scripts/build-dashboard-wasm.sh and commit it" >&2
    exit 1
  fi
  echo "market/dashboard/ledger.wasm matches a fresh build ($(wc -c <"$built") bytes, blake3 $(b3sum --no-names "$built" 2>/dev/null || sha256sum "$built" | cut -d' ' -f1))"
else
  cp "$built" market/dashboard/ledger.wasm
  echo "wrote market/dashboard/ledger.wasm ($(wc -c <"$built") bytes)"
fi
