#!/usr/bin/env bash
# Throughput against cores (issue 19), in one run:
#   loadgen/scaling.sh [OUT_DIR]
# One tessera-server at 1, 2, 4, ... shards (on CPUs 0..N-1, `--cpuset`) up to SERVER_CPUS, and
# redis-server with 1 thread and with N I/O threads on the same CPUs, each against the same GET
# load at pipeline 1 and 16; the generator runs on the other CPUs (GEN_CPUS, by default every CPU
# from SERVER_CPUS on) with as many tokio threads. OUT_DIR/scaling.md has, per case, ops/s,
# p50/p99 and the ratio to one shard; the generator's CPU use per run (user+system seconds per
# second of wall time, from /proc) says whether it was the limit: a generator near its CPU count
# measured itself, not the server.
#
# On a 2-CPU machine this runs one shard against one Redis thread (SERVER_CPUS=1, GEN_CPUS=1):
# a dry run of the script; the scaling figures need a machine with more cores.
#
# Settings (environment): SERVER_CPUS (half the online CPUs, at least 1), GEN_CPUS ("N-M"),
# DURATION (10s), KEYS (200000), VALUE (1024), CONNECTIONS (256 at pipeline 1, 64 at 16).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/loadgen/results/scaling-$(date +%Y%m%d-%H%M%S)}
cpus=$(nproc)
SERVER_CPUS=${SERVER_CPUS:-$(( cpus / 2 > 0 ? cpus / 2 : 1 ))}
GEN_CPUS=${GEN_CPUS:-$SERVER_CPUS-$((cpus - 1))}
DURATION=${DURATION:-10s}
KEYS=${KEYS:-200000}
VALUE=${VALUE:-1024}
command -v redis-server >/dev/null || { echo "scaling.sh needs redis-server (the distro's package)" >&2; exit 1; }
gen_threads=$(python3 -c "
import sys
n = 0
for part in sys.argv[1].split(','):
    lo, _, hi = part.partition('-')
    n += int(hi or lo) - int(lo) + 1
print(n)" "$GEN_CPUS")
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

# load LABEL TARGET PIPELINE: one run; appends a table row.
load() {
  local label=$1 target=$2 pipeline=$3 connections=256
  [ "$pipeline" -gt 1 ] && connections=64
  taskset -c "$GEN_CPUS" "$bin/tessera-loadgen" --target "$target" --workload getset \
    --read-ratio 1 --keys "$KEYS" --value-size "$VALUE" --connections "$connections" \
    --pipeline "$pipeline" --threads "$gen_threads" --duration "$DURATION" --live false \
    --label "$label" --json "$out/$label.json" >"$work/loadgen.out" 2>&1 &
  local gen=$!
  sleep 2 # the load phase first; then sample the generator's CPU over the measured part
  local t0 c0 t1 c1
  t0=$(date +%s.%N); c0=$(awk '{print $14 + $15}' "/proc/$gen/stat" 2>/dev/null || echo 0)
  sleep 5
  t1=$(date +%s.%N); c1=$(awk '{print $14 + $15}' "/proc/$gen/stat" 2>/dev/null || echo "$c0")
  wait "$gen"
  python3 - "$out/$label.json" "$label" "$pipeline" "$t0" "$c0" "$t1" "$c1" "$(getconf CLK_TCK)" \
    "$gen_threads" >>"$out/scaling.md" <<'PY'
import json, sys
path, label, pipeline, t0, c0, t1, c1, tck, threads = sys.argv[1:]
run = json.load(open(path))
lat = run["latency_us"]["all"]
cpu = (float(c1) - float(c0)) / float(tck) / max(float(t1) - float(t0), 1e-9)
print(f"| {label} | {pipeline} | {run['throughput_ops_s']:.0f} | {lat['p50']} / {lat['p99']} | "
      f"{cpu:.2f} of {threads} |")
PY
}

run_tessera() { # shards pipeline
  local shards=$1 port=7900
  rm -rf "$work/data"
  "$bin/tessera-server" --data-dir "$work/data" --listen 127.0.0.1:$port --shards "$shards" \
    --cpuset "0-$((shards - 1))" >"$work/server.log" 2>&1 &
  pid=$!
  until "$bin/tessera" --addr 127.0.0.1:$port --timeout 200ms ping >/dev/null 2>&1; do sleep 0.05; done
  load "tessera-${shards}-shards-p$2" "tessera://127.0.0.1:$port" "$2"
  stop_server
}

run_redis() { # io_threads pipeline
  local threads=$1 port=7950 cpus_used=$(( $1 > 1 ? $1 : 1 ))
  local flags=()
  [ "$threads" -gt 1 ] && flags=(--io-threads "$threads" --io-threads-do-reads yes)
  taskset -c "0-$((cpus_used - 1))" redis-server --port $port --save "" --appendonly no \
    "${flags[@]}" >"$work/redis.log" 2>&1 &
  pid=$!
  until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.05; done
  load "redis-${threads}-threads-p$2" "redis://127.0.0.1:$port" "$2"
  stop_server
}

{
  echo "GETs of $VALUE-byte values over $KEYS keys, $DURATION per run; servers on CPUs 0-$((SERVER_CPUS - 1)), the generator on $GEN_CPUS ($gen_threads threads)"
  echo
  echo "| run | pipeline | ops/s | p50 / p99 us | generator CPU (cores) |"
  echo "|---|---:|---:|---|---|"
} >"$out/scaling.md"
for pipeline in 1 16; do
  shards=1
  while [ "$shards" -le "$SERVER_CPUS" ]; do
    run_tessera "$shards" "$pipeline"
    shards=$((shards * 2))
  done
  run_redis 1 "$pipeline"
  [ "$SERVER_CPUS" -gt 1 ] && run_redis "$SERVER_CPUS" "$pipeline"
done
cat "$out/scaling.md"
