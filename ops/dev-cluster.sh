#!/usr/bin/env bash
# Starts an N-node Tessera cluster on loopback for development: node i serves 127.0.0.1:(7000 + 100 i)
# with data in ./tessera-dev/nI, one shard each; logs go to ./tessera-dev/nI.log.
# Usage: ops/dev-cluster.sh [N=3]        start (builds release binaries first)
#        ops/dev-cluster.sh stop         SIGTERM every node this script started
set -euo pipefail
cd "$(dirname "$0")/.."
root=./tessera-dev
if [[ "${1:-}" == "stop" ]]; then
    for pidfile in "$root"/n*.pid; do
        [[ -e "$pidfile" ]] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
    exit 0
fi
nodes="${1:-3}"
cargo build -q --release --bin tessera-server --bin tessera
mkdir -p "$root"
peers=""
for ((i = 0; i < nodes; i++)); do peers+="${peers:+,}127.0.0.1:$((7000 + 100 * i))"; done
for ((i = 0; i < nodes; i++)); do
    ./target/release/tessera-server --data-dir "$root/n$i" --listen "127.0.0.1:$((7000 + 100 * i))" \
        --shards 1 --peers "$peers" >"$root/n$i.log" 2>&1 &
    echo $! >"$root/n$i.pid"
done
echo "started $nodes nodes ($peers); logs in $root/n*.log; stop with: ops/dev-cluster.sh stop"
echo "try: ./target/release/tessera --addr $peers topology"
