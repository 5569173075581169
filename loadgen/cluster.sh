#!/usr/bin/env bash
# A three-node cluster and a single node side by side, in one run, at the same offered load:
#   loadgen/cluster.sh [OUT_DIR]
# For each fsync policy in FSYNC_MODES, starts a single node (--shards 1) and a three-node
# loopback cluster (--shards 1 each, --peers, replication factor 3), loads KEYS keys, and runs
# the same open-loop getset load (RATE requests/s, half reads, VALUE-byte values) at each
# consistency level against each side, in turn, REPEAT times, alternating which side goes first.
# OUT_DIR/cluster.md quotes, per case and side, the medians over the runs of write and read
# p50/p99, and the cluster's p99s over the single node's. Every process is stopped by its own
# pid.
#
# A single node is a cluster of one: every level costs the same there (the head is the whole
# chain), so its rows are the baseline each level is compared with.
#
# SIDES picks what is compared (default "single cluster"); `cluster-tls` is the same cluster
# with mutual TLS on its peer ports (certificates from `tessera admin certs`), so
# SIDES="cluster cluster-tls" measures what peer TLS costs, the plain cluster the baseline.
#
# Placing nodes on cores (a machine with many): NODE_CPUSETS ("", or three core lists such as
# "0-3 4-7 8-11") gives cluster node i `--cpuset` of the i-th list and the single node the
# first, each with SHARDS shards (default 1); GEN_CPUSET (e.g. "12-15") runs the generator under
# `taskset -c`. With NODE_CPUSETS set, SERVER_FLAGS defaults to nothing.
#
# Settings (environment): RATE (4000), KEYS (20000), VALUE (1024), DURATION (10s), REPEAT (3),
# CONNECTIONS (16), FSYNC_MODES ("always interval"), LEVELS ("eventual session strong"),
# SERVER_FLAGS ("--pin false": by default a one-shard node pins itself to CPU 0, and three of
# them would share one core while the generator had the other; unpinned, the kernel spreads
# the nodes and the generator over the machine's cores, for both sides alike).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/loadgen/results/cluster-$(date +%Y%m%d-%H%M%S)}
RATE=${RATE:-4000}
KEYS=${KEYS:-20000}
VALUE=${VALUE:-1024}
DURATION=${DURATION:-10s}
REPEAT=${REPEAT:-3}
CONNECTIONS=${CONNECTIONS:-16}
FSYNC_MODES=${FSYNC_MODES:-"always interval"}
LEVELS=${LEVELS:-"eventual session strong"}
NODE_CPUSETS=${NODE_CPUSETS:-}
GEN_CPUSET=${GEN_CPUSET:-}
SHARDS=${SHARDS:-1}
read -r -a node_cpusets <<<"$NODE_CPUSETS"
if [ -n "$NODE_CPUSETS" ] && [ "${#node_cpusets[@]}" -ne 3 ]; then
  echo "NODE_CPUSETS needs three core lists, one per cluster node" >&2
  exit 1
fi
default_flags="--pin false"
[ -n "$NODE_CPUSETS" ] && default_flags=""
SERVER_FLAGS=${SERVER_FLAGS-$default_flags}
# The flags that place node $1 (0, 1, 2) on its cores.
placement() {
  if [ -n "$NODE_CPUSETS" ]; then echo "--cpuset ${node_cpusets[$1]}"; fi
}
generator=()
[ -n "$GEN_CPUSET" ] && generator=(taskset -c "$GEN_CPUSET")
SIDES=${SIDES:-"single cluster"}
mkdir -p "$out"
out=$(cd "$out" && pwd)
(cd "$root" && cargo build --release -q -p tessera-server -p tessera-loadgen -p tessera-client)
bin=$root/target/release
work=$(mktemp -d)
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

wait_ready() { # addr
  until "$bin/tessera" --addr "$1" --timeout 200ms ping >/dev/null 2>&1; do sleep 0.05; done
}

# start_side single|cluster FSYNC: starts the side on fresh data; sets `addrs` to its members.
base=7700
start_side() {
  local side=$1 fsync=$2 peers="" i
  rm -rf "$work/data"
  base=$((base + 400))
  if [ "$side" = single ]; then
    "$bin/tessera-server" --data-dir "$work/data/single" --listen 127.0.0.1:$base \
      --shards "$SHARDS" $(placement 0) --fsync "$fsync" $SERVER_FLAGS >"$work/single.log" 2>&1 &
    pids+=($!)
    wait_ready 127.0.0.1:$base
    addrs=127.0.0.1:$base
    return
  fi
  for i in 0 1 2; do peers+="${peers:+,}127.0.0.1:$((base + 100 * i))"; done
  local tls=""
  if [ "$side" = cluster-tls ]; then
    [ -f "$work/certs/ca.pem" ] ||
      "$bin/tessera" admin certs --members 127.0.0.1 --out "$work/certs" >/dev/null
    tls="--peer-tls-cert $work/certs/member-127.0.0.1.pem --peer-tls-key $work/certs/member-127.0.0.1-key.pem --peer-tls-ca $work/certs/ca.pem"
  fi
  for i in 0 1 2; do
    "$bin/tessera-server" --data-dir "$work/data/n$i" --listen 127.0.0.1:$((base + 100 * i)) \
      --shards "$SHARDS" $(placement "$i") --peers "$peers" --fsync "$fsync" $SERVER_FLAGS $tls \
      >"$work/n$i.log" 2>&1 &
    pids+=($!)
  done
  for i in 0 1 2; do wait_ready 127.0.0.1:$((base + 100 * i)); done
  # Every chain linked: a strong write through the cluster succeeds.
  until "$bin/tessera" --addr "$peers" --consistency strong put cluster:ready 1 >/dev/null 2>&1; do
    sleep 0.1
  done
  addrs=$peers
}

run_case() { # side fsync level run
  local side=$1 fsync=$2 level=$3 run=$4
  start_side "$side" "$fsync"
  "${generator[@]}" "$bin/tessera-loadgen" --target "tessera://$addrs" --consistency "$level" --workload getset \
    --keys "$KEYS" --value-size "$VALUE" --read-ratio 0.5 --rate "$RATE" \
    --connections "$CONNECTIONS" --duration "$DURATION" --live false \
    --label "$side-$fsync-$level" --json "$out/$side-$fsync-$level.$run.json" >/dev/null
  stop_all
}

for fsync in $FSYNC_MODES; do
  for level in $LEVELS; do
    for run in $(seq 1 "$REPEAT"); do
      order=$SIDES
      [ $((run % 2)) = 1 ] || order=$(echo "$SIDES" | tr ' ' '\n' | tac | tr '\n' ' ')
      for side in $order; do run_case "$side" "$fsync" "$level" "$run"; done
    done
  done
done

python3 - "$out" "$RATE" "$VALUE" "$DURATION" "$KEYS" "$REPEAT" "$SIDES" >"$out/cluster.md" <<'EOF'
import glob, json, os, statistics, sys
out, rate, value, duration, keys, repeat, sides = sys.argv[1:]
sides = sides.split()
first = sides[0]
LEVELS = ["eventual", "session", "strong"]
def runs(pattern):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, pattern)))]
def median(rs, op, pct):
    return statistics.median(r["latency_us"][op][pct] for r in rs) if rs else None
print(f"Open loop, {rate} requests/s (half {value}-byte writes, half reads) over {keys} keys, "
      f"{duration} per run, {repeat} runs per case; each cell is the median over the case's runs. "
      f"The ratios are over the {first} side's p99 (a single node ignores the level, so its "
      "baseline is the median over all its runs under that fsync policy). Latencies in "
      "microseconds.\n")
print(f"| fsync | level | side | write p50 | write p99 | read p50 | read p99 | errors | write p99 / {first}'s | read p99 / {first}'s |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
fsyncs = sorted({os.path.basename(p).split("-")[-2] for p in glob.glob(os.path.join(out, "*.json"))})
for fsync in fsyncs:
    for level in LEVELS:
        base = runs(f"{first}-{fsync}-*.json" if first == "single" else f"{first}-{fsync}-{level}.*.json")
        base_w, base_r = median(base, "write", "p99"), median(base, "read", "p99")
        for side in sides:
            rs = runs(f"{side}-{fsync}-{level}.*.json")
            if not rs:
                continue
            cells = [median(rs, op, pct) for op, pct in
                     (("write", "p50"), ("write", "p99"), ("read", "p50"), ("read", "p99"))]
            errors = sum(r["errors"] for r in rs)
            ratios = ["", ""]
            if side != first and base_w and base_r:
                ratios = [f"{cells[1] / base_w:.2f}x", f"{cells[3] / base_r:.2f}x"]
            row = [fsync, level, side] + [f"{c:.0f}" for c in cells] + [str(errors)] + ratios
            print("| " + " | ".join(row) + " |")
EOF
cat "$out/cluster.md"
