#!/usr/bin/env bash
# The node is killed (SIGKILL) in the middle of a networked training task and restarted on the
# same data and port. The worker keeps computing while the node is away, joins again, is handed
# the task under the new node process's job number, continues its earlier run instead of
# starting over, and the task settles with the worker paid once and the ledger intact.
#
# Real processes on loopback (ports 18080 and 14001). Takes about a minute on 2 cores; not part
# of CI (the in-process network tests cover the protocol); run by hand and reported in
# BENCHMARKS.md. KEEP=1 keeps the work folder.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin market-node --bin market-worker --bin market-verifier
BIN=$PWD/target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ "${KEEP:-0}" == 1 ]]; then echo "work folder: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
cd "$WORK"

API=http://127.0.0.1:18080
BUYER=$("$BIN/market-node" key buyer.key)
WORKER=$("$BIN/market-node" key worker.key)
VERIFIER=$("$BIN/market-node" key verifier.key)
printf 'verifiers_per_task = 1\n' >node.toml
start_node() {
  rm -f node/endpoints.json
  RUST_LOG=info "$BIN/market-node" serve --data node --config node.toml --listen 127.0.0.1:18080 \
    --p2p /ip4/127.0.0.1/tcp/14001 --mint "$BUYER:5000" --mint "$WORKER:1000" \
    --mint "$VERIFIER:1000" >>node.log 2>&1 &
  NODE=$!
  PIDS+=("$NODE")
  for _ in $(seq 200); do [[ -s node/endpoints.json ]] && return; sleep 0.1; done
  echo "the node did not start"; exit 1
}
state() { # prints the task's state, and its steps done while running
  "$BIN/market-node" task status "$1" --node "$API" 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)["state"]
print(s["state"], s.get("done", 0)) if isinstance(s, dict) else print(s, 0)' || echo "unreachable 0"
}

start_node
MARKET=$(python3 -c 'import json; print(next(a for a in json.load(open("node/endpoints.json"))["p2p"] if "/tcp/" in a))')
RUST_LOG=info "$BIN/market-worker" run --market "$MARKET" --key worker.key --stake 300 \
  --data worker --quiet >worker.log 2>&1 &
PIDS+=($!)
RUST_LOG=info "$BIN/market-verifier" run --market "$MARKET" --key verifier.key --stake 100 \
  --data verifier >verifier.log 2>&1 &
PIDS+=($!)

python3 - "$OLDPWD/examples/tasks/gpt-train.json" <<'EOF'
import json, sys
task = json.load(open(sys.argv[1]))
task["workload"]["steps"] = 3000
json.dump(task, open("task.json", "w"))
EOF
"$BIN/market-node" task submit task.json --node "$API" --key buyer.key >submitted.json
ID=$(python3 -c 'import json; print(json.load(open("submitted.json"))["id"])')

for _ in $(seq 600); do
  read -r S DONE < <(state "$ID")
  [[ "$S" == running && "$DONE" -ge 600 ]] && break
  sleep 0.1
done
echo "killing the node at step $DONE of 3000"
kill -9 "$NODE"
sleep 1
start_node
echo "node restarted"

for _ in $(seq 1200); do
  read -r S _ < <(state "$ID")
  [[ "$S" == settled || "$S" == rejected ]] && break
  sleep 0.25
done
echo "task $S"
[[ "$S" == settled ]] || exit 1

strip() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }
strip worker.log | grep -E "continuing an earlier assignment|resumed from a checkpoint" | sed 's/^.*INFO //'
strip worker.log | grep -q "continuing an earlier assignment" \
  || { echo "the worker started over"; exit 1; }
python3 - "$API" "$WORKER" <<'EOF'
import json, sys, urllib.request
api, worker = sys.argv[1:]
w = json.load(urllib.request.urlopen(f"{api}/v1/accounts/{worker}"))
paid = w["balance"] - (1000 - 300)
print(f"worker paid {paid}")
assert paid == 1000 - 10, f"paid {paid}, expected the price less one verifier fee"
EOF
curl -sf "$API/v1/ledger/export" -o ledger.export
"$BIN/market-ledger" verify --export ledger.export
echo "node-restart: ok"
