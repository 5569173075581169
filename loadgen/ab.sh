#!/usr/bin/env bash
# Two tessera-server binaries side by side, in one run, on the same workloads:
#   loadgen/ab.sh BIN_A BIN_B [OUT_DIR]
# For a change's cost: build the commit before it into another target directory, e.g.
#   git worktree add /tmp/before HEAD~1 && (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target \
#     cargo build --release -p tessera-server)
#   loadgen/ab.sh /tmp/before-target/release/tessera-server target/release/tessera-server
# Each case starts a fresh node of each side (in turn, never both at once), loads the keys, runs
# tessera-loadgen, and stops the node by its pid; REPEAT rounds alternate which side goes first,
# and the table quotes each side's median-throughput run. Writes OUT_DIR/ab.md and the JSON results.
#
# Settings (environment): DURATION (5s), KEYS (100000), CONNECTIONS (50), REPEAT (3), PIN (1:
# server on CPU 0, generator on CPU 1), CASES (all of those below), B_FLAGS and B_LOADGEN
# (extra server and generator flags for side B only: one binary against itself with TLS, e.g.
# B_FLAGS="--tls-cert C --tls-key K" B_LOADGEN="--tls-ca CA" loadgen/ab.sh BIN BIN).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { sed -n 2,14p "$0" >&2; exit 2; }
bin_a=$(realpath "$1")
bin_b=$(realpath "$2")
out=${3:-$root/loadgen/results/ab-$(date +%Y%m%d-%H%M%S)}
DURATION=${DURATION:-5s}
KEYS=${KEYS:-100000}
CONNECTIONS=${CONNECTIONS:-50}
REPEAT=${REPEAT:-3}
PIN=${PIN:-1}
server_cpu=()
loadgen_cpu=()
if [ "$PIN" = 1 ]; then
  server_cpu=(taskset -c 0)
  loadgen_cpu=(taskset -c 1)
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
(cd "$root" && cargo build --release -q -p tessera-loadgen)
loadgen=$root/target/release/tessera-loadgen
work=$(mktemp -d)
pid=""
stop_node() {
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  pid=""
}
trap 'stop_node; rm -rf "$work"' EXIT

# case NAME "SERVER FLAGS" LOADGEN-ARGS...
case_run() {
  local name=$1 flags=$2
  shift 2
  if [ -n "${CASES:-}" ] && [[ " $CASES " != *" $name "* ]]; then return; fi
  echo "== $name (server: $flags)" >&2
  for round in $(seq "$REPEAT"); do
    # Odd rounds run A first, even rounds B first: whichever runs second inherits the first's
    # deleted data (ext4 discards it in the background) and a warmer page cache.
    local order="a b"
    [ $((round % 2)) = 0 ] && order="b a"
    for side in $order; do
      local bin=$bin_a side_flags="" side_loadgen=""
      [ "$side" = b ] && bin=$bin_b side_flags=${B_FLAGS:-} side_loadgen=${B_LOADGEN:-}
      rm -rf "$work/data"
      sync
      sleep 1
      # shellcheck disable=SC2086
      "${server_cpu[@]}" "$bin" --data-dir "$work/data" --listen 127.0.0.1:0 --shards 1 $flags $side_flags \
        >"$work/out" 2>"$work/err" &
      pid=$!
      for _ in $(seq 100); do grep -q ready "$work/out" 2>/dev/null && break; sleep 0.1; done
      local addr
      addr=$(grep -o '127.0.0.1:[0-9]*' "$work/out" | head -1)
      [ -n "$addr" ] || { cat "$work/err" >&2; exit 1; }
      "${loadgen_cpu[@]}" "$loadgen" --target "tessera://$addr" --label "$side $name" \
        --json "$out/$side-$name.$round.json" --live false --connections "$CONNECTIONS" \
        --duration "$DURATION" $side_loadgen "$@"
      stop_node
    done
  done
  for side in a b; do
    python3 - "$out/$side-$name.json" "$out/$side-$name".[0-9]*.json <<'PY'
import json, shutil, sys
ranked = sorted(sys.argv[2:], key=lambda f: json.load(open(f))["throughput_ops_s"])
shutil.copy(ranked[len(ranked) // 2], sys.argv[1])
PY
  done
}

get=(--workload getset --read-ratio 1 --keys "$KEYS")
mix=(--workload getset --read-ratio 0.5 --keys "$KEYS")
# Few keys: most reads find a write to their key still waiting for its fsync.
hot=(--workload getset --read-ratio 0.5 --keys 64)
case_run get-always "--fsync always" "${get[@]}"
case_run mix-always "--fsync always" "${mix[@]}"
case_run hot-mix-always "--fsync always" "${hot[@]}"
case_run mix-interval "--fsync interval" "${mix[@]}"
case_run hot-mix-interval "--fsync interval" "${hot[@]}"
case_run get-p1-interval "--fsync interval" "${get[@]}"
case_run set-p1-interval "--fsync interval" --workload getset --read-ratio 0 --keys "$KEYS"
case_run get-p16-interval "--fsync interval" "${get[@]}" --pipeline 16
case_run set-p16-interval "--fsync interval" --workload getset --read-ratio 0 --keys "$KEYS" --pipeline 16

python3 - "$out" "$bin_a" "$bin_b" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
names = sorted({os.path.basename(f)[2:-5] for f in glob.glob(os.path.join(out, "a-*.json"))
                if f.count(".") == 1})
rows = [f"A = {sys.argv[2]}", f"B = {sys.argv[3]}", "",
        "| case | A ops/s | B ops/s | B/A | A p50 / p99 / p99.9 us | B p50 / p99 / p99.9 us |",
        "|---|---:|---:|---:|---|---|"]
for name in names:
    a, b = (json.load(open(os.path.join(out, f"{s}-{name}.json"))) for s in "ab")
    la, lb = a["latency_us"]["all"], b["latency_us"]["all"]
    rows.append(f"| {name} | {a['throughput_ops_s']:.0f} | {b['throughput_ops_s']:.0f} | "
                f"{b['throughput_ops_s'] / max(a['throughput_ops_s'], 1e-9):.2f}x | "
                f"{la['p50']} / {la['p99']} / {la['p999']} | {lb['p50']} / {lb['p99']} / {lb['p999']} |")
with open(os.path.join(out, "ab.md"), "w") as f:
    f.write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
echo "results in $out" >&2
