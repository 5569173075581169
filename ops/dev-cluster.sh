#!/usr/bin/env bash
# Starts an N-node Tessera cluster on loopback for development: node i serves 127.0.0.1:(7000 + 100 i)
# with data in ./tessera-dev/nI, one shard each (unpinned: the nodes share this machine's cores);
# logs go to ./tessera-dev/nI.log.
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
        --shards 1 --pin false --peers "$peers" >"$root/n$i.log" 2>&1 &
    echo $! >"$root/n$i.pid"
done
# Ready once every chain is linked: a strong write reaches every replica.
for _ in $(seq 1 300); do
    if ./target/release/tessera --addr "$peers" --timeout 1s put dev-cluster:ready 1 >/dev/null 2>&1; then
        echo "started $nodes nodes ($peers); logs in $root/n*.log; stop with: ops/dev-cluster.sh stop"
        echo "try: ./target/release/tessera --addr $peers topology"
        exit 0
    fi
    sleep 0.1
done
echo "the nodes did not form a cluster within 30 s; see $root/n*.log" >&2
exit 1
