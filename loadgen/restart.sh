#!/usr/bin/env bash
# Restart time of a node holding KEYS keys, with and without hint files:
#   loadgen/restart.sh [OUT_DIR]
# Fills a fresh one-shard node with KEYS keys (50-byte keys, 100-byte values) through
# tessera-loadgen, stops it with SIGTERM, then restarts it REPEAT times from its hint files and
# REPEAT times with the hints deleted first (a full scan of the log). A restart is timed from
# exec to the first answered PING; the page cache is dropped before each one when running as
# root, so the segments come from the disk. Writes OUT_DIR/restart.md. The data directory
# (~2 GB at 10 M keys) lives under DATA_ROOT (default: a temporary directory on /var/tmp) and
# is removed at the end.
#
# Settings (environment): KEYS (10000000), REPEAT (3), DATA_ROOT.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/loadgen/results/$(date +%Y%m%d-%H%M%S)}
KEYS=${KEYS:-10000000}
REPEAT=${REPEAT:-3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
(cd "$root" && cargo build --release -q -p tessera-server -p tessera-loadgen -p tessera-client)
bin=$root/target/release
work=$(mktemp -d -p "${DATA_ROOT:-/var/tmp}")
data=$work/data
pid=""
port=7800
stop_server() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
trap 'stop_server; rm -rf "$work"' EXIT

start_server() {
  taskset -c 0 "$bin/tessera-server" --data-dir "$data" --listen 127.0.0.1:$port --shards 1 \
    >"$work/server.log" 2>&1 &
  pid=$!
  until "$bin/tessera" --addr 127.0.0.1:$port --timeout 200ms ping >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.01
  done
}

start_server
taskset -c 1 "$bin/tessera-loadgen" --target tessera://127.0.0.1:$port --workload getset \
  --keys "$KEYS" --key-size 50 --value-size 100 --ops 1 --live false 2>&1 | grep loaded
stop_server
log_mb=$(du -sm "$data" | cut -f1)

time_restart() { # label
  sync
  if [ "$(id -u)" -eq 0 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
  local started ended
  started=$(date +%s.%N)
  start_server
  ended=$(date +%s.%N)
  local replay
  replay=$(sed 's/\x1b\[[0-9;]*m//g' "$work/server.log" | grep -o 'replay_ms=[0-9]* read_wait_ms=[0-9]*')
  printf "| %s | %.2f | %s |\n" "$1" "$(echo "$ended - $started" | bc)" "$replay" >>"$out/restart.md"
  stop_server
}

{
  echo "Restart of one shard holding $KEYS keys (50-byte keys, 100-byte values; $log_mb MB on disk)"
  echo
  echo "| restart | seconds to the first PING | replay (CPU) and time waiting for reads |"
  echo "|---|---:|---|"
} >"$out/restart.md"
for _ in $(seq 1 "$REPEAT"); do
  time_restart "from hints"
done
for _ in $(seq 1 "$REPEAT"); do
  rm -f "$data"/shard-*/*.hint
  time_restart "full scan (no hints)"
done
cat "$out/restart.md"
