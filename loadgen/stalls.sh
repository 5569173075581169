#!/usr/bin/env bash
# Where a one-shard node's latency tail comes from (issue 19), in one run:
#   loadgen/stalls.sh [OUT_DIR]
# Runs the same open-loop load (RATE requests/s, half of them VALUE-byte overwrites of KEYS
# keys, DURATION) against a one-shard tessera-server with compaction on (--space-factor 2) and
# off (1000), each on a fresh data directory with --metrics-listen, and against Redis (the
# distro's redis-server, no persistence) as the floor of this generator on this machine. The
# servers run on CPU 0, the generator on CPU 1. OUT_DIR/stalls.md has, per side, the client's
# p50/p99/p99.9/max; the server's own count of requests slower than 1 ms and 5 ms (from
# tessera_request_duration_seconds); and the shard's stalls of 20 ms or more by cause
# (tessera_shard_stall_seconds, server/node/src/stall.rs).
#
# Settings (environment): RATE (20000), KEYS (5000), VALUE (4096), DURATION (20s), REPEAT (2).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/loadgen/results/$(date +%Y%m%d-%H%M%S)}
RATE=${RATE:-20000}
KEYS=${KEYS:-5000}
VALUE=${VALUE:-4096}
DURATION=${DURATION:-20s}
REPEAT=${REPEAT:-2}
command -v redis-server >/dev/null || { echo "stalls.sh needs redis-server (the distro's package)" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
(cd "$root" && cargo build --release -q -p tessera-server -p tessera-loadgen -p tessera-client)
bin=$root/target/release
work=$(mktemp -d)
pid=""
stop_server() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
trap 'stop_server; rm -rf "$work"' EXIT

port=7700
load() { # label target
  taskset -c 1 "$bin/tessera-loadgen" --target "$2" --workload getset --keys "$KEYS" \
    --value-size "$VALUE" --read-ratio 0.5 --rate "$RATE" --duration "$DURATION" --live false \
    --label "$1" --json "$out/stalls-$1.json" >/dev/null
}
report() { # label metrics-file (or "")
  python3 - "$out/stalls-$1.json" "$1" "${2:-}" >>"$out/stalls.md" <<'PY'
import json, re, sys
path, label, metrics = sys.argv[1:]
lat = json.load(open(path))["latency_us"]["all"]
slow = {"0.001": 0, "0.005": 0}
total, stalls = 0, {}
if metrics:
    below = {}
    for line in open(metrics):
        m = re.match(r'tessera_request_duration_seconds_bucket\{level="\w+",operation="(get|put)",le="([^"]+)"\} (\d+)', line)
        if m:
            below[(m[1], m[2])] = int(m[3])
        m = re.match(r'tessera_shard_stall_seconds_count\{cause="(\w+)",shard="0"\} (\d+)', line)
        if m:
            stalls[m[1]] = int(m[2])
    for op in ("get", "put"):
        count = below.get((op, "+Inf"), 0)
        total += count
        for le in slow:
            slow[le] += count - below.get((op, le), 0)
server = f"{slow['0.001']} / {slow['0.005']} of {total}" if metrics else "-"
stall = ", ".join(f"{c} {n}" for c, n in sorted(stalls.items())) or ("none" if metrics else "-")
print(f"| {label} | {lat['p50']} / {lat['p99']} / {lat['p999']} / {lat['max']} | {server} | {stall} |")
PY
}
run_tessera() { # label space_factor
  rm -rf "$work/data"
  taskset -c 0 "$bin/tessera-server" --data-dir "$work/data" --listen 127.0.0.1:$port \
    --shards 1 --space-factor "$2" --metrics-listen 127.0.0.1:$((port + 5)) >"$work/server.log" 2>&1 &
  pid=$!
  until "$bin/tessera" --addr 127.0.0.1:$port --timeout 200ms ping >/dev/null 2>&1; do sleep 0.05; done
  load "$1" "tessera://127.0.0.1:$port"
  curl -s "127.0.0.1:$((port + 5))/metrics" >"$work/metrics.txt"
  report "$1" "$work/metrics.txt"
  grep "got back to its tasks late" "$work/server.log" >>"$out/stalls-$1.log" || true
  stop_server
  port=$((port + 10))
}
run_redis() { # label
  taskset -c 0 redis-server --port $port --save "" --appendonly no >"$work/redis.log" 2>&1 &
  pid=$!
  until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.05; done
  load "$1" "redis://127.0.0.1:$port"
  report "$1" ""
  stop_server
  port=$((port + 10))
}

{
  echo "Open loop, $RATE requests/s, 50 % $VALUE-byte overwrites over $KEYS keys, $DURATION, one shard on CPU 0, the generator on CPU 1"
  echo
  echo "| run | client p50 / p99 / p99.9 / max us | server: requests over 1 ms / 5 ms | shard stalls >= 20 ms |"
  echo "|---|---|---|---|"
} >"$out/stalls.md"
for run in $(seq 1 "$REPEAT"); do
  run_tessera "compaction-on.$run" 2
  run_tessera "compaction-off.$run" 1000
  run_redis "redis.$run"
done
cat "$out/stalls.md"
