#!/usr/bin/env bash
# Pooled training over constrained links (issue 14): a node with two verifiers in one network
# namespace, and K workers, each in a namespace of its own behind a link shaped with `tc` (tbf,
# RATE each way, default 50mbit, plus DELAY of one-way latency with netem if set, e.g. 10ms;
# none by default, as some kernels lack netem). The same pooled
# task (a `gpt` of 4 layers, width 128, on the arithmetic language) is run with H = 1 (a merge
# after every step, as per-step synchronous training would) and H = 50, each once over shaped
# links and once over unshaped ones. Communication is the difference between the two wall
# times (the shaped links are all that differs); compute is the unshaped wall time, which is an
# upper bound (it still holds loopback transfers and every round's audits and merge).
#
# Real processes: `market-node serve`, `market-worker run`, `market-verifier run`, and the
# buyer's `market-node task submit --wait`. Needs root, `ip netns` and `tc` (Debian: iproute2).
# Not part of CI; run by hand and reported in BENCHMARKS.md. Environment: BIN (a folder with
# the release binaries; built here if unset), K (4), RATE (50mbit), DELAY (none), STEPS1 (steps
# of the H = 1 run, 10), STEPS50 (of the H = 50 run, 100), KEEP=1 keeps the work folder.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

if [[ -z "${BIN:-}" ]]; then
  cargo build --release --bin market-node --bin market-worker --bin market-verifier
  BIN=$PWD/target/release
fi
K=${K:-4}
RATE=${RATE:-50mbit}
DELAY=${DELAY:-}
STEPS1=${STEPS1:-10}
STEPS50=${STEPS50:-100}
WORK=$(mktemp -d)
NAMESPACES=(mkp-node)
for i in $(seq "$K"); do NAMESPACES+=("mkp-w$i"); done
PIDS=()

stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
cleanup() {
  stop_all
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [[ "${KEEP:-0}" == 1 ]]; then echo "work folder: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

for ns in "${NAMESPACES[@]}"; do
  ip netns del "$ns" 2>/dev/null || true
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
for i in $(seq "$K"); do
  ip link add "mkpn$i" type veth peer name "mkpw$i"
  ip link set "mkpn$i" netns mkp-node
  ip link set "mkpw$i" netns "mkp-w$i"
  ip -n mkp-node addr add "10.3.$i.1/24" dev "mkpn$i"
  ip -n "mkp-w$i" addr add "10.3.$i.2/24" dev "mkpw$i"
  ip -n mkp-node link set "mkpn$i" up
  ip -n "mkp-w$i" link set "mkpw$i" up
done

shape() { # on|off: the workers' links, both directions
  for i in $(seq "$K"); do
    for end in "mkp-node mkpn$i" "mkp-w$i mkpw$i"; do
      set -- $end
      ip netns exec "$1" tc qdisc del dev "$2" root 2>/dev/null || true
      if [[ "$MODE" == on ]]; then
        if [[ -n "$DELAY" ]]; then
          ip netns exec "$1" tc qdisc add dev "$2" root handle 1: netem delay "$DELAY"
          ip netns exec "$1" tc qdisc add dev "$2" parent 1: handle 2: tbf rate "$RATE" burst 64kb latency 2s
        else
          ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$RATE" burst 64kb latency 2s
        fi
      fi
    done
  done
}

spec() { # STEPS H NONCE -> a pooled task file
  python3 - "$1" "$2" "$3" "$K" <<'EOF'
import json, sys
steps, h, nonce, k = map(int, sys.argv[1:])
print(json.dumps({
    "version": 1, "buyer": "6c1517a05614c721fe4625cf4fe98602333568c2441aa2b4cad0ab6fa7daaa7c", "nonce": nonce, "seed": 42, "profile": "repro",
    "price": 100 * k * (steps // h),
    "audit": {"detection_target": "0.99", "assumed_faked_fraction": "0.1"},
    "workload": {
        "kind": "training",
        "model": {"model": "gpt", "layers": 4, "heads": 4, "width": 128, "vocab": 16, "context": 16},
        "dataset": {"source": "arithmetic", "max_operand": 49, "examples": 4096},
        "optimizer": {"optimizer": "adamw", "lr": "0.003", "beta1": "0.9", "beta2": "0.999",
                      "eps": "0.00000001", "weight_decay": "0.01"},
        "batch_size": 16, "steps": steps, "checkpoint_interval": min(h, 10),
        "initial_weights": None,
        "pool": {"workers": k, "rounds": steps // h, "inner_steps": h,
                 "outer_optimizer": {"optimizer": "nesterov", "lr": "0.7", "momentum": "0.9"}},
    },
}))
EOF
}

run() { # STEPS H MODE: a fresh market, one pooled task, its wall time in seconds on stdout
  local steps=$1 h=$2 dir="$WORK/run-$2-$3"
  mkdir -p "$dir"
  MODE=$3 shape
  local buyer v1 v2
  buyer=$("$BIN/market-node" key "$dir/buyer.key")
  v1=$("$BIN/market-node" key "$dir/v1.key")
  v2=$("$BIN/market-node" key "$dir/v2.key")
  local mints=(--mint "$buyer:100000" --mint "$v1:1000" --mint "$v2:1000")
  for i in $(seq "$K"); do
    mints+=(--mint "$("$BIN/market-node" key "$dir/w$i.key"):1000")
  done
  # The node's address on every worker's link: it listens on all of them.
  ip netns exec mkp-node "$BIN/market-node" serve --data "$dir/node" --listen 10.3.1.1:8080 \
    --p2p /ip4/0.0.0.0/tcp/4001 "${mints[@]}" >"$dir/node.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do [[ -s "$dir/node/endpoints.json" ]] && break; sleep 0.1; done
  local peer
  peer=$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1]))["p2p"][0]; print(a[a.index("/p2p/"):])' "$dir/node/endpoints.json")
  for v in 1 2; do
    ip netns exec mkp-node "$BIN/market-verifier" run --market "/ip4/10.3.1.1/tcp/4001$peer" \
      --key "$dir/v$v.key" --stake 100 --data "$dir/v$v" --listen /ip4/10.3.1.1/tcp/0 \
      >"$dir/v$v.log" 2>&1 &
    PIDS+=($!)
  done
  for i in $(seq "$K"); do
    ip netns exec "mkp-w$i" "$BIN/market-worker" run --market "/ip4/10.3.$i.1/tcp/4001$peer" \
      --key "$dir/w$i.key" --stake 300 --data "$dir/w$i" --quiet \
      --listen "/ip4/10.3.$i.2/tcp/0" >"$dir/w$i.log" 2>&1 &
    PIDS+=($!)
  done
  for _ in $(seq 600); do
    local joined
    joined=$(ip netns exec mkp-node python3 -c 'import json,urllib.request as u; print(len(json.load(u.urlopen("http://10.3.1.1:8080/v1/workers"))))' 2>/dev/null || echo 0)
    [[ "$joined" -ge "$K" ]] && break
    sleep 0.2
  done
  spec "$steps" "$h" 1 >"$dir/task.json"
  local start end
  start=$(date +%s.%N)
  ip netns exec mkp-node "$BIN/market-node" task submit "$dir/task.json" \
    --node http://10.3.1.1:8080 --key "$dir/buyer.key" --wait >"$dir/out.json" 2>"$dir/progress"
  end=$(date +%s.%N)
  python3 - "$dir/out.json" <<'EOF' >&2
import json, sys
text, dec, i, docs = open(sys.argv[1]).read(), json.JSONDecoder(), 0, []
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    doc, i = dec.raw_decode(text, i)
    docs.append(doc)
final = docs[-1]
state = final["state"]["state"]
assert state == "settled", f"the pooled task ended {state}"
rounds = final["pool"]["history"]
print(f"  settled: {len(rounds)} rounds merged; held-out loss {rounds[-1]['eval_loss']}")
EOF
  stop_all
  python3 -c "print(f'{$end - $start:.2f}')"
}

echo "pool-link: K=$K workers, each link $RATE each way${DELAY:+, $DELAY one way}"
declare -A WALL
for h in 1 50; do
  steps=$STEPS1
  [[ $h == 50 ]] && steps=$STEPS50
  for mode in off on; do
    echo "H=$h, $steps steps, shaping $mode:" >&2
    WALL[$h-$mode]=$(run "$steps" "$h" "$mode")
    echo "  wall ${WALL[$h-$mode]} s" >&2
  done
  python3 - "$h" "$steps" "${WALL[$h-off]}" "${WALL[$h-on]}" <<'EOF'
import sys
h, steps = int(sys.argv[1]), int(sys.argv[2])
free, shaped = float(sys.argv[3]), float(sys.argv[4])
comm = max(shaped - free, 0.0)
print(f"H={h:<3} {steps:>4} steps, {steps // h:>3} rounds: unshaped {free:7.1f} s (compute, at most), "
      f"shaped {shaped:7.1f} s; communication {comm:7.1f} s = {comm / free:5.2f}x compute; "
      f"per step: compute {free / steps:6.2f} s, communication {comm / steps:6.2f} s")
EOF
done
echo "pool-link: ok"
