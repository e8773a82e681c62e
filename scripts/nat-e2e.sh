#!/usr/bin/env bash
# A whole market across real NAT, with real processes in Linux network namespaces:
#
#   mkt-pub  10.1.0.1        the node (REST and libp2p) and the buyer's CLI
#   mkt-nat  10.1.0.2        a router that masquerades both private networks behind 10.1.0.2
#   mkt-a    192.168.7.2     a worker and a verifier, behind the NAT
#   mkt-b    192.168.8.2     a second verifier, behind the NAT
#
# Nothing on the public side can open a connection to a private host (checked first); the
# participants dial out, the node assigns over those connections, fetches the worker's bundle and
# serves the verifiers their openings. A training task must settle, the worker be paid, the
# exported ledger verify, and the worker hold a reservation on the node's relay.
#
# Needs root, `ip netns` and iptables (Debian: iproute2, iptables). Not part of CI, which may not
# grant the privileges; run by hand and reported in BENCHMARKS.md. KEEP=1 keeps the work folder;
# RELAY_FLAG= starts the worker without `--relay` (the task still settles, but then the relay
# check fails here: AutoNAT probes only global addresses, and these networks are private).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin market-node --bin market-worker --bin market-verifier
BIN=$PWD/target/release
WORK=$(mktemp -d)
NAMESPACES=(mkt-pub mkt-nat mkt-a mkt-b)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [[ "${KEEP:-0}" == 1 ]]; then echo "work folder: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

for ns in "${NAMESPACES[@]}"; do
  ip netns del "$ns" 2>/dev/null || true
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
link() { # NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  ip link add "$2" type veth peer name "$5"
  ip link set "$2" netns "$1"
  ip link set "$5" netns "$4"
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$4" addr add "$6" dev "$5"
  ip -n "$1" link set "$2" up
  ip -n "$4" link set "$5" up
}
link mkt-pub mktpub0 10.1.0.1/24 mkt-nat mktwan0 10.1.0.2/24
link mkt-nat lana 192.168.7.1/24 mkt-a mkta0 192.168.7.2/24
link mkt-nat lanb 192.168.8.1/24 mkt-b mktb0 192.168.8.2/24
ip -n mkt-a route add default via 192.168.7.1
ip -n mkt-b route add default via 192.168.8.1
ip netns exec mkt-nat sysctl -qw net.ipv4.ip_forward=1
ip netns exec mkt-nat iptables -t nat -A POSTROUTING -o mktwan0 -j MASQUERADE

# The NAT is real: the private side reaches out, the public side cannot reach in.
ip netns exec mkt-pub python3 - <<'EOF'
import socket
for host in ("192.168.7.2", "192.168.8.2"):
    try:
        socket.create_connection((host, 9), timeout=2)
        raise SystemExit(f"the public side reached {host}: no NAT")
    except OSError as e:
        print(f"public side cannot reach {host}: {e}")
EOF

BUYER=$("$BIN/market-node" key "$WORK/buyer.key")
WORKER=$("$BIN/market-node" key "$WORK/worker.key")
V1=$("$BIN/market-node" key "$WORK/verifier-1.key")
V2=$("$BIN/market-node" key "$WORK/verifier-2.key")

ip netns exec mkt-pub env RUST_LOG=info "$BIN/market-node" serve --data "$WORK/node" \
  --listen 10.1.0.1:8080 --p2p /ip4/10.1.0.1/tcp/4001 --p2p /ip4/10.1.0.1/udp/4001/quic-v1 \
  --mint "$BUYER:5000" --mint "$WORKER:1000" --mint "$V1:1000" --mint "$V2:1000" \
  >"$WORK/node.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do [[ -s "$WORK/node/endpoints.json" ]] && break; sleep 0.1; done
MARKET=$(python3 -c 'import json,sys; print(next(a for a in json.load(open(sys.argv[1]))["p2p"] if "/tcp/" in a))' "$WORK/node/endpoints.json")
echo "node at $MARKET"

ip netns exec mkt-a env RUST_LOG=info "$BIN/market-worker" run --market "$MARKET" \
  --key "$WORK/worker.key" --stake 300 --data "$WORK/worker" --quiet ${RELAY_FLAG---relay} \
  --listen /ip4/192.168.7.2/tcp/0 >"$WORK/worker.log" 2>&1 &
PIDS+=($!)
ip netns exec mkt-a env RUST_LOG=info "$BIN/market-verifier" run --market "$MARKET" \
  --key "$WORK/verifier-1.key" --stake 100 --data "$WORK/verifier-1" \
  --listen /ip4/192.168.7.2/tcp/0 >"$WORK/verifier-1.log" 2>&1 &
PIDS+=($!)
ip netns exec mkt-b env RUST_LOG=info "$BIN/market-verifier" run --market "$MARKET" \
  --key "$WORK/verifier-2.key" --stake 100 --data "$WORK/verifier-2" \
  --listen /ip4/192.168.8.2/tcp/0 >"$WORK/verifier-2.log" 2>&1 &
PIDS+=($!)

START=$(date +%s.%N)
ip netns exec mkt-pub "$BIN/market-node" task submit examples/tasks/gpt-train.json \
  --node http://10.1.0.1:8080 --key "$WORK/buyer.key" --wait >"$WORK/task.json" 2>"$WORK/task.progress"
END=$(date +%s.%N)

ip netns exec mkt-pub python3 - "$WORK" "$BUYER" "$WORKER" "$V1" "$V2" <<'EOF'
import json, sys, urllib.request
work, buyer, worker, v1, v2 = sys.argv[1:]
text, docs, dec, i = open(f"{work}/task.json").read(), [], json.JSONDecoder(), 0
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    doc, i = dec.raw_decode(text, i)
    docs.append(doc)
final = docs[-1]
state = final["state"]["state"] if isinstance(final["state"], dict) else final["state"]
assert state == "settled", f"task ended {state}: {final}"
verdicts = [v for a in final["attempts"] for v in a["verdicts"]]
print(f"task {final['id'][:12]} settled; verdicts: {[(v['verifier'][:8], v['passed']) for v in verdicts]}")
def account(a):
    with urllib.request.urlopen(f"http://10.1.0.1:8080/v1/accounts/{a}") as r:
        return json.load(r)
w = account(worker)
assert w["balance"] > 1000 - 300, f"the worker was not paid: {w}"
for name, a in (("buyer", buyer), ("worker", worker), ("verifier-1", v1), ("verifier-2", v2)):
    x = account(a)
    print(f"{name:10} balance {x['balance']:5} staked {x['staked']}")
with urllib.request.urlopen("http://10.1.0.1:8080/v1/ledger/export") as r, open(f"{work}/ledger.export", "wb") as f:
    f.write(r.read())
EOF
"$BIN/market-ledger" verify --export "$WORK/ledger.export"
strip() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }
strip "$WORK/node.log" | grep -h "participant joined" | sed 's/^.*participant joined/participant joined/'
# The worker behind the NAT also holds a reservation on the node's relay (`--relay`).
strip "$WORK/worker.log" | grep "reachable through the market's relay" \
  || { echo "the worker took no relay reservation"; exit 1; }
python3 -c "print(f'post to settlement across the NAT: {$END - $START:.1f} s')"
echo "nat-e2e: ok"
