#!/usr/bin/env bash
# Tessera and Redis side by side, on loopback, in one run:
#   loadgen/compare.sh [OUT_DIR]
# Starts a tessera-server and a redis-server (installing redis-server from the distro if it is
# missing), runs the same workloads against each with tessera-loadgen, stops both (by pid), and
# writes OUT_DIR/compare.md (a table) and OUT_DIR/*.svg (latency curves) beside the JSON results.
#
# Settings (environment): DURATION (10s), KEYS (100000), SEED_KEYS (10000: the seed mix averages
# ~17 KiB a value), CONNECTIONS (50), THREADS (1: the generator's tokio threads), SHARDS
# (tessera-server --shards, default 1), TESSERA_FLAGS (extra server flags), PIN (1), REPEAT (3:
# each case runs this many times, alternating the two sides; the table quotes the run with the
# median throughput of each side, since numbers move from run to run on a shared machine).
#
# Per-core comparison: with PIN=1 each server runs on CPU 0 and the load generator on CPU 1, so
# Redis (one thread) and a one-shard Tessera get the same single core and the generator never
# competes with them. SHARDS=2 PIN=0 runs Tessera on every core instead (sharing them with the
# generator on a 2-core machine).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/loadgen/results/$(date +%Y%m%d-%H%M%S)}
DURATION=${DURATION:-10s}
KEYS=${KEYS:-100000}
SEED_KEYS=${SEED_KEYS:-10000}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
SHARDS=${SHARDS:-1}
PIN=${PIN:-1}
REPEAT=${REPEAT:-3}
server_cpu=()
loadgen_cpu=()
if [ "$PIN" = 1 ]; then
  server_cpu=(taskset -c 0)
  loadgen_cpu=(taskset -c 1)
fi
TESSERA_FLAGS=${TESSERA_FLAGS:-}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if ! command -v redis-server >/dev/null; then
  echo "compare.sh: installing redis-server from the distro" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi
(cd "$root" && cargo build --release -q -p tessera-server -p tessera-loadgen)
bin=$root/target/release
work=$(mktemp -d)
tessera_pid=""
redis_pid=""

stop_servers() {
  for pid in $tessera_pid $redis_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  tessera_pid=""
  redis_pid=""
}
trap 'stop_servers; rm -rf "$work"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_servers durable|volatile
start_servers() {
  local fsync=interval redis_aof=(--appendonly no)
  if [ "$1" = durable ]; then
    fsync=always
    redis_aof=(--appendonly yes --appendfsync always)
  fi
  rm -rf "$work/tessera" "$work/redis" && mkdir -p "$work/redis"
  local shards=()
  [ -n "$SHARDS" ] && shards=(--shards "$SHARDS")
  # shellcheck disable=SC2086
  "${server_cpu[@]}" "$bin/tessera-server" --data-dir "$work/tessera" --listen 127.0.0.1:0 --fsync "$fsync" \
    "${shards[@]}" $TESSERA_FLAGS >"$work/tessera.out" 2>"$work/tessera.err" &
  tessera_pid=$!
  for _ in $(seq 100); do grep -q ready "$work/tessera.out" 2>/dev/null && break; sleep 0.1; done
  tessera_addr=$(grep -o '127.0.0.1:[0-9]*' "$work/tessera.out" | head -1)
  [ -n "$tessera_addr" ] || { cat "$work/tessera.err" >&2; exit 1; }
  redis_port=$(free_port)
  "${server_cpu[@]}" redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --dir "$work/redis" \
    "${redis_aof[@]}" --daemonize no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "servers ($1): tessera $tessera_addr (pid $tessera_pid), redis 127.0.0.1:$redis_port (pid $redis_pid)" >&2
}

# run NAME BACKEND ROUND LOADGEN-ARGS...
run() {
  local name=$1 backend=$2 round=$3
  shift 3
  local target="tessera://$tessera_addr"
  [ "$backend" = redis ] && target="redis://127.0.0.1:$redis_port"
  "${loadgen_cpu[@]}" "$bin/tessera-loadgen" --target "$target" --label "$backend $name" \
    --json "$out/$backend-$name.$round.json" --threads "$THREADS" --live false "$@"
}

# The run with the median throughput becomes SIDE-NAME.json.
keep_median() {
  python3 - "$@" <<'PY'
import json, shutil, sys
files = sys.argv[2:]
ranked = sorted(files, key=lambda f: json.load(open(f))["throughput_ops_s"])
shutil.copy(ranked[len(ranked) // 2], sys.argv[1])
PY
}

both() {
  local name=$1
  shift
  echo "== $name" >&2
  for round in $(seq "$REPEAT"); do
    run "$name" tessera "$round" "$@"
    run "$name" redis "$round" "$@"
  done
  for side in tessera redis; do
    keep_median "$out/$side-$name.json" "$out/$side-$name".[0-9]*.json
  done
}

common=(--connections "$CONNECTIONS" --duration "$DURATION" --keys "$KEYS" --value-size 1024)
start_servers volatile
both get-p1 --workload getset --read-ratio 1 --pipeline 1 "${common[@]}"
both set-p1 --workload getset --read-ratio 0 --pipeline 1 "${common[@]}"
both get-p16 --workload getset --read-ratio 1 --pipeline 16 "${common[@]}"
both set-p16 --workload getset --read-ratio 0 --pipeline 16 "${common[@]}"
both mix-p1 --workload getset --read-ratio 0.5 --pipeline 1 "${common[@]}"
both seed --workload seed --pipeline 1 --connections "$CONNECTIONS" --duration "$DURATION" --keys "$SEED_KEYS"

# Open loop for tail latency: both sides at half of Tessera's peak, then at half of Redis's.
peak() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['throughput_ops_s'])" "$1"; }
for side in tessera redis; do
  rate=$(python3 -c "print(int($(peak "$out/$side-mix-p1.json") / 2))")
  both "open-half-$side" --workload getset --read-ratio 0.5 --pipeline 1 --rate "$rate" "${common[@]}"
done
stop_servers

start_servers durable
both set-fsync --workload getset --read-ratio 0 --pipeline 1 "${common[@]}"
stop_servers

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
cases = ["get-p1", "set-p1", "get-p16", "set-p16", "mix-p1", "seed", "set-fsync",
         "open-half-tessera", "open-half-redis"]
def load(side, case):
    with open(os.path.join(out, f"{side}-{case}.json")) as f:
        return json.load(f)
rows = ["| case | Tessera ops/s | Redis ops/s | ratio | Tessera p50 / p99 / p99.9 us | Redis p50 / p99 / p99.9 us | errors T / R |",
        "|---|---:|---:|---:|---|---|---|"]
for case in cases:
    t, r = load("tessera", case), load("redis", case)
    lt, lr = t["latency_us"]["all"], r["latency_us"]["all"]
    rows.append(f"| {case} | {t['throughput_ops_s']:.0f} | {r['throughput_ops_s']:.0f} | "
                f"{t['throughput_ops_s'] / max(r['throughput_ops_s'], 1e-9):.2f}x | "
                f"{lt['p50']} / {lt['p99']} / {lt['p999']} | {lr['p50']} / {lr['p99']} / {lr['p999']} | "
                f"{t['errors']} / {r['errors']} |")
with open(os.path.join(out, "compare.md"), "w") as f:
    f.write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
for case in get-p1 set-p1 set-fsync open-half-tessera; do
  "$bin/tessera-loadgen" plot --title "$case: latency by percentile" --out "$out/$case.svg" \
    "$out/tessera-$case.json" "$out/redis-$case.json" 2>/dev/null
done
echo "results in $out" >&2
