#!/usr/bin/env bash
# Compares the node's resource estimate of a task (compute/src/resources.rs) with what running
# it takes: the peak resident memory of `market-worker exec` (GNU time) and the bytes of the
# bundle it writes. Runs the example tasks and larger variants of them; prints one line per
# task with both figures and their ratio (estimate / measured; above 1 is a safe estimate).
#
#   scripts/resources-check.sh [path/to/market-worker]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/market-worker}
[ -x "$BIN" ] || { echo "build it first: cargo build --release -p market-worker" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 - "$WORK" <<'PY'
import json, sys, copy
work = sys.argv[1]
def load(n): return json.load(open(f"examples/tasks/{n}.json"))
tasks = {}
for n in ["gpt-train", "mlp-train", "gpt-infer"]:
    tasks[n] = load(n)
# A wider, deeper gpt with a bigger batch, fewer steps (minutes, not hours, on 2 cores).
t = load("gpt-train"); w = t["workload"]
w["model"].update(layers=4, heads=4, width=128, context=16)
w["batch_size"] = 64; w["steps"] = 20; w["checkpoint_interval"] = 2
tasks["gpt-train-wide"] = t
# An mlp with a large dataset and many checkpoints.
t = load("mlp-train"); w = t["workload"]
w["model"]["widths"] = [64, 1024, 1024, 8]
w["dataset"].update(features=64, outputs=8, examples=200000)
w["batch_size"] = 256; w["steps"] = 40; w["checkpoint_interval"] = 1
tasks["mlp-train-big"] = t
# Inference with many prompts and long outputs.
t = load("gpt-infer"); w = t["workload"]
w["model"].update(layers=4, heads=4, width=128, context=64)
w["inputs"]["prompts"] = w["inputs"]["prompts"] * 16
w["inputs"]["max_new_tokens"] = 48
tasks["gpt-infer-long"] = t
for n, t in tasks.items():
    json.dump(t, open(f"{work}/{n}.json", "w"))
PY

printf '%-16s %14s %14s %6s %14s %14s %6s\n' task est_memory peak_rss ratio est_disk bundle ratio
for task in gpt-train mlp-train gpt-infer gpt-train-wide mlp-train-big gpt-infer-long; do
    out="$WORK/$task.bundle"
    /usr/bin/time -v -o "$WORK/$task.time" "$BIN" exec --task "$WORK/$task.json" --out "$out" \
        >/dev/null 2>"$WORK/$task.err" || { cat "$WORK/$task.err" >&2; exit 1; }
    est=$(grep -o 'estimated needs: [0-9]* bytes of memory, [0-9]* bytes of disk' "$WORK/$task.err")
    est_mem=$(echo "$est" | awk '{print $3}')
    est_disk=$(echo "$est" | awk '{print $7}')
    rss=$(( $(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$WORK/$task.time") * 1024 ))
    disk=$(du -sb "$out" | awk '{print $1}')
    printf '%-16s %14d %14d %6.2f %14d %14d %6.2f\n' "$task" "$est_mem" "$rss" \
        "$(echo "$est_mem / $rss" | bc -l)" "$est_disk" "$disk" "$(echo "$est_disk / $disk" | bc -l)"
done
