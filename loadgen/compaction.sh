#!/usr/bin/env bash
# Foreground latency with and without compaction, in one run:
#   loadgen/compaction.sh [OUT_DIR]
# Starts a one-shard tessera-server with compaction off (--space-factor 1000) and then on (the
# default 2), each time on a fresh data directory, and runs the same open-loop overwrite-heavy
# load against it: RATE requests/s, half of them 4 KiB overwrites of KEYS keys (at 20 000/s that
# is 40 MB/s of new log over 20 MB of live data), for DURATION. Each side runs REPEAT times,
# alternating; OUT_DIR/compaction.md quotes each run's p50/p99/p99.9, the compactions run, and
# the bytes of log against the bytes of live data at the end (STATS disk_bytes, live_bytes). The server is pinned to CPU 0 and the generator to CPU 1.
#
# Settings (environment): RATE (20000), KEYS (5000), VALUE (4096), DURATION (20s), REPEAT (2),
# SEGMENT_MIB (16).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/loadgen/results/$(date +%Y%m%d-%H%M%S)}
RATE=${RATE:-20000}
KEYS=${KEYS:-5000}
VALUE=${VALUE:-4096}
DURATION=${DURATION:-20s}
REPEAT=${REPEAT:-2}
SEGMENT_MIB=${SEGMENT_MIB:-16}
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

port=7600
run_side() { # label space_factor run
  local label=$1 factor=$2 run=$3
  rm -rf "$work/data"
  taskset -c 0 "$bin/tessera-server" --data-dir "$work/data" --listen 127.0.0.1:$port \
    --shards 1 --segment-mib "$SEGMENT_MIB" --space-factor "$factor" >"$work/server.log" 2>&1 &
  pid=$!
  until "$bin/tessera" --addr 127.0.0.1:$port --timeout 200ms ping >/dev/null 2>&1; do sleep 0.05; done
  taskset -c 1 "$bin/tessera-loadgen" --target tessera://127.0.0.1:$port --workload getset \
    --keys "$KEYS" --value-size "$VALUE" --read-ratio 0.5 --rate "$RATE" --duration "$DURATION" \
    --live false --label "$label" --json "$out/compaction-$label.$run.json" >/dev/null
  local stats
  stats=$("$bin/tessera" --addr 127.0.0.1:$port stats --json)
  python3 - "$out/compaction-$label.$run.json" "$label" "$stats" >>"$out/compaction.md" <<'EOF'
import json, sys
path, label, stats = sys.argv[1:]
total = json.loads(stats)["total"]
lat = json.load(open(path))["latency_us"]["all"]
log_mb, live_mb = total["disk_bytes"] / 1e6, total["live_bytes"] / 1e6
print(f"| {label} | {total['compactions']} | {log_mb:.0f} MB / {live_mb:.0f} MB | "
      f"{lat['p50']} / {lat['p99']} / {lat['p999']} |")
EOF
  stop_server
  port=$((port + 10))
}

{
  echo "Open loop, $RATE requests/s, 50 % $VALUE-byte overwrites over $KEYS keys, $DURATION, one shard, $SEGMENT_MIB MiB segments"
  echo
  echo "| run | compactions | log / live data at the end | p50 / p99 / p99.9 us |"
  echo "|---|---:|---:|---|"
} >"$out/compaction.md"
for run in $(seq 1 "$REPEAT"); do
  run_side off 1000 "$run"
  run_side on 2 "$run"
done
cat "$out/compaction.md"
