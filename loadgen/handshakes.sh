#!/usr/bin/env bash
# What a new connection costs on one shard: plain TCP, plus a login, TLS, and TLS plus a login,
# in one run (`tessera-loadgen connect`: TCP, TLS handshake, AUTH, one TOPOLOGY, close):
#   loadgen/handshakes.sh [OUT_DIR]
# A node with --shards 1 on CPU 0 and the generator on CPU 1 (PIN=1). The first connection of
# each case is reported on its own: the user's first login on a node pays argon2 (19 MiB, two
# passes); later ones are known by their seal. Each line also gives the node's CPU time per
# connection (from /proc/PID/stat), whichever side limited the rate. REPEAT rounds.
# Settings (environment): COUNT (2000 connections per case), CONCURRENCY (4), REPEAT (3), PIN (1).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/loadgen/results/handshakes-$(date +%Y%m%d-%H%M%S)}
COUNT=${COUNT:-2000}
CONCURRENCY=${CONCURRENCY:-4}
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
(cd "$root" && cargo build --release -q -p tessera-loadgen -p tessera-server -p tessera-client)
bin=$root/target/release
work=$(mktemp -d)
pid=""
stop_node() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi
}
trap 'stop_node; rm -rf "$work"' EXIT

"$bin/tessera" admin certs --out "$work/certs" --members 127.0.0.1 >/dev/null
hash=$(printf 'bench-secret' | "$bin/tessera" admin hash-password)
printf '[[user]]\nname = "bench"\npassword = "%s"\nroute = true\n' "$hash" > "$work/users.toml"
tls=(--tls-cert "$work/certs/member-127.0.0.1.pem" --tls-key "$work/certs/member-127.0.0.1-key.pem")
users=(--users "$work/users.toml")

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_case() {
  local label=$1 server_flags=$2 loadgen_flags=$3
  rm -rf "$work/data"
  # shellcheck disable=SC2086
  "${server_cpu[@]}" "$bin/tessera-server" --data-dir "$work/data" --listen 127.0.0.1:17400 \
    --shards 1 $server_flags > "$work/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q ready "$work/server.log" && break; sleep 0.1; done
  grep -q ready "$work/server.log" || { cat "$work/server.log" >&2; exit 1; }
  local before after line
  before=$(cpu_ticks "$pid")
  # shellcheck disable=SC2086
  line=$(TESSERA_PASSWORD=bench-secret "${loadgen_cpu[@]}" "$bin/tessera-loadgen" connect \
    --target tessera://127.0.0.1:17400 --count "$COUNT" --concurrency "$CONCURRENCY" \
    --label "$label" $loadgen_flags)
  after=$(cpu_ticks "$pid")
  # The node's own CPU per connection, whichever side was the bottleneck.
  echo "$line; node CPU $(( (after - before) * 1000000 / $(getconf CLK_TCK) / COUNT )) us per connection" \
    | tee -a "$out/handshakes.txt"
  stop_node
}

for round in $(seq "$REPEAT"); do
  echo "round $round" | tee -a "$out/handshakes.txt"
  run_case plain "" ""
  run_case login "${users[*]}" "--user bench"
  run_case tls "${tls[*]}" "--tls-ca $work/certs/ca.pem"
  run_case tls+login "${tls[*]} ${users[*]}" "--tls-ca $work/certs/ca.pem --user bench"
done
echo "wrote $out/handshakes.txt"
