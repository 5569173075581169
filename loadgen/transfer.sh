#!/usr/bin/env bash
# A state transfer measured: loadgen/transfer.sh [OUT_DIR]
# Three nodes on loopback (--shards 1, --vnodes 1, so one vnode holds every key), KEYS keys of
# VALUE bytes loaded; the vnode's tail is killed with SIGKILL, every key is written again (its
# predecessor's 64 MiB queue gives way), and the tail is restarted: its predecessor transfers
# the vnode. Meanwhile an open-loop read load (RATE/s, DURATION) runs against the cluster, and
# the same load runs before the restart, with the tail down and no transfer, as the baseline.
# Reads go to the sender (`--read-first`), so the figures are the sender's, not the restarting
# tail's (which holds its reads until the transfer is done).
# The predecessor's metrics (tessera_transfer_*) and RSS are sampled every 200 ms.
# OUT_DIR/transfer.md has: keys and bytes sent, seconds, MB/s and keys/s, the sender's RSS
# before and at its peak, and read p50/p99 without and with the transfer.
# Settings (environment): KEYS (1000000), VALUE (100), LIMIT (--transfer-mib-per-s, 0: none),
# RATE (5000), DURATION (10s), BIN (binaries; default: build target/release),
# PIN=1 (the sender alone on CPU 0; the other nodes, this script and the generator on CPU 1),
# LOADGEN_CPU (with PIN=1, the generator's CPU: 1, or 0 beside the sender), node logs kept in OUT_DIR,
# PERF=1 (perf record -g of the sender while the transfer runs: OUT_DIR/perf.txt).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/loadgen/results/transfer-$(date +%Y%m%d-%H%M%S)}
KEYS=${KEYS:-1000000}
VALUE=${VALUE:-100}
LIMIT=${LIMIT:-0}
RATE=${RATE:-5000}
DURATION=${DURATION:-10s}
if [ -z "${BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p tessera-server -p tessera-loadgen -p tessera-client)
  BIN=$root/target/release
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
declare -A pid
stop_all() {
  for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pid[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap 'stop_all; cp "$work"/n*.log "$out"/ 2>/dev/null; rm -rf "$work"' EXIT

base=7500
peers=""
for i in 0 1 2; do peers+="${peers:+,}127.0.0.1:$((base + 100 * i))"; done
start() { # i
  "$BIN/tessera-server" --data-dir "$work/n$1" --listen 127.0.0.1:$((base + 100 * $1)) \
    --shards 1 --vnodes 1 --peers "$peers" --pin false --transfer-mib-per-s "$LIMIT" \
    --metrics-listen 127.0.0.1:$((base + 100 * $1 + 70)) >>"$work/n$1.log" 2>&1 &
  pid[$1]=$!
}
for i in 0 1 2; do start $i; done
until "$BIN/tessera" --addr "$peers" put ready 1 >/dev/null 2>&1; do sleep 0.1; done

loadgen() { # label extra...
  local label=$1; shift
  ${PIN_LOADGEN:-} "$BIN/tessera-loadgen" --target "tessera://$first$peers" --consistency eventual --keys "$KEYS" \
    --value-size "$VALUE" --connections 8 --live false --label "$label" --json "$out/$label.json" "$@" \
    >"$out/$label.txt" 2>&1
}
first=""
echo "loading $KEYS keys of $VALUE bytes"
loadgen load --ops 1 --read-ratio 1
chain=$("$BIN/tessera" --addr "$peers" admin status --json |
  python3 -c 'import json,sys; print(" ".join(str(r["node"]) for r in json.load(sys.stdin)["chains"][0]["replicas"]))')
read -r head middle tail <<<"$chain"
echo "chain: head $head, middle $middle, tail $tail"
first="127.0.0.1:$((base + 100 * middle)),"
pin_rest() { # pid: off the sender's CPU
  [ "${PIN:-0}" = 1 ] && taskset -a -p -c 1 "$1" >/dev/null
  return 0
}
if [ "${PIN:-0}" = 1 ]; then
  taskset -a -p -c 0 "${pid[$middle]}" >/dev/null
  pin_rest "${pid[$head]}"
  # This script too, and so all it starts (the metric scrapes every 200 ms, python, the
  # restarted tail): a scrape on the sender's CPU took 20-40 ms from it each time.
  taskset -p -c 1 $$ >/dev/null
fi
kill -9 "${pid[$tail]}"; wait "${pid[$tail]}" 2>/dev/null || true; unset "pid[$tail]"
echo "writing every key again while the tail is down"
loadgen rewrite --ops 1 --read-ratio 1 --seed 2
echo "baseline: reads with no transfer"
[ "${PIN:-0}" = 1 ] && PIN_LOADGEN="taskset -c ${LOADGEN_CPU:-1}"
loadgen without --no-load --read-first --read-ratio 1 --rate "$RATE" --duration "$DURATION"

metric() { # node name
  python3 - "$((base + 100 * $1 + 70))" "$2" <<'PY'
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + "{") or l.startswith(name + " "))))
PY
}
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
sender=${pid[$middle]}
rss_before=$(rss "$sender"); rss_peak=$rss_before
bytes0=$(metric "$middle" tessera_transfer_bytes_total)
keys0=$(metric "$middle" tessera_transfer_keys_total)
echo "restarting the tail: the transfer runs under the same read load"
[ "${PIN:-0}" = 1 ] && PIN_LOADGEN="taskset -c ${LOADGEN_CPU:-1}"
loadgen with --no-load --read-first --read-ratio 1 --rate "$RATE" --duration "$DURATION" &
load=$!
start "$tail"
pin_rest "${pid[$tail]}"
t0=$(date +%s.%N); t_end=""
if [ "${PERF:-0}" = 1 ]; then
  perf record -q -F 499 -g -p "$sender" -o "$out/perf.data" -- sleep "${DURATION%s}" >/dev/null 2>&1 &
  perf_pid=$!
fi
started=0
for _ in $(seq 1 3000); do
  r=$(rss "$sender"); [ "$r" -gt "$rss_peak" ] && rss_peak=$r
  flying=$(metric "$middle" tessera_transfers_in_flight)
  [ "$flying" -gt 0 ] && started=1
  if [ "$started" = 1 ] && [ "$flying" = 0 ]; then t_end=$(date +%s.%N); break; fi
  sleep 0.2
done
wait "$load"
if [ -n "${perf_pid:-}" ]; then
  wait "$perf_pid" || true
  perf report -i "$out/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null | grep -v '^$' | head -150 >"$out/perf.txt" || true
fi
[ -n "$t_end" ] || { echo "the transfer did not finish in 10 minutes" >&2; exit 1; }
bytes=$(( $(metric "$middle" tessera_transfer_bytes_total) - bytes0 ))
keys=$(( $(metric "$middle" tessera_transfer_keys_total) - keys0 ))
"$BIN/tessera" --addr "$peers" --timeout 120s verify >"$out/verify.txt" 2>&1 || { cat "$out/verify.txt" >&2; exit 1; }
python3 - "$out" "$t0" "$t_end" "$bytes" "$keys" "$rss_before" "$rss_peak" "$KEYS" "$VALUE" "$LIMIT" "$RATE" <<'PY'
import json, sys
out, t0, t1, nbytes, nkeys, rss0, rss1, keys, value, limit, rate = sys.argv[1:]
secs = float(t1) - float(t0)
lat = {l: json.load(open(f"{out}/{l}.json")) for l in ("without", "with")}
def pct(l, key):
    return lat[l]["latency_us"]["read"][key]
rows = [
    f"# State transfer: {keys} keys of {value} B, --transfer-mib-per-s {limit}, reads at {rate}/s",
    "",
    "| figure | value |", "|---|---|",
    f"| keys sent | {nkeys} |",
    f"| bytes sent (values and digests) | {int(nbytes) / 2**20:.1f} MiB |",
    f"| from the tail's restart to the transfer's end | {secs:.1f} s (includes the restart) |",
    f"| rate | {int(nbytes) / 2**20 / secs:.1f} MiB/s, {int(nkeys) / secs:.0f} keys/s |",
    f"| sender RSS | {int(rss0) / 2**20:.1f} MiB before, {int(rss1) / 2**20:.1f} MiB at most during |",
    f"| read p50 / p99 without a transfer (us) | {pct('without', 'p50')} / {pct('without', 'p99')} |",
    f"| read p50 / p99 with the transfer (us) | {pct('with', 'p50')} / {pct('with', 'p99')} |",
    f"| read errors without / with | {lat['without']['errors']} / {lat['with']['errors']} |",
]
open(f"{out}/transfer.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
