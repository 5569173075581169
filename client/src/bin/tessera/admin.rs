//! `tessera admin status`: the state of every node of the cluster the client reached, and of
//! every vnode's chain.
//!
//! Per node: up or down (it answered STATS or not), uptime, version, shard count, keys, disk
//! bytes and memory (index plus value cache). Per vnode: its chain, epoch, each replica's
//! applied sequence number (VERIFY, an index walk on every node: see `cluster_cmds`) and its
//! lag, the head's number minus the furthest-behind replica's. A chain is short when a replica
//! does not answer. State transfers in flight (a replica being caught up from a predecessor)
//! are listed with the keys and bytes sent so far and their rate. The exit status is 2 when a
//! node is down or a chain is short.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;
use tessera_client::routing::Routing;
use tessera_client::{Client, ClientError, ShardStats, Status, TransferStats, VnodeCheck};

use crate::cluster_cmds::ask_members;

/// Vnodes listed in the text report when they are short or behind (the JSON lists all).
const LISTED: usize = 20;

struct Node {
    addr: String,
    stats: Result<Vec<ShardStats>, String>,
}

struct Chain {
    vnode: u16,
    epoch: u64,
    /// Per replica, in chain order: its node and applied sequence number, if it answered.
    replicas: Vec<(usize, Option<u64>)>,
}

impl Chain {
    fn short(&self) -> bool {
        self.replicas.iter().any(|(_, applied)| applied.is_none())
    }

    fn lag(&self) -> u64 {
        let applied = || self.replicas.iter().filter_map(|(_, a)| *a);
        applied().max().unwrap_or(0) - applied().min().unwrap_or(0)
    }
}

pub async fn status(client: &Client, out: &mut impl Write, json: bool) -> Result<(), ClientError> {
    let routing = client.topology();
    let stats = (0..routing.member_count())
        .map(|member| async move { client.stats_of(member).await.map_err(|e| e.to_string()) });
    let nodes: Vec<Node> = futures::future::join_all(stats)
        .await
        .into_iter()
        .enumerate()
        .map(|(member, stats)| Node {
            addr: routing.addr(member).to_string(),
            stats,
        })
        .collect();
    let chains = chains(client, &routing).await;
    let io = |e: std::io::Error| ClientError::Io(e.to_string());
    if json {
        write_json(out, &nodes, &chains).map_err(io)?;
    } else {
        write_text(out, &nodes, &chains).map_err(io)?;
    }
    let down = nodes.iter().filter(|n| n.stats.is_err()).count();
    let short = chains.iter().filter(|c| c.short()).count();
    if down > 0 || short > 0 {
        return Err(ClientError::Status {
            status: Status::Unavailable,
            message: format!("{down} nodes down, {short} chains short of a replica"),
            version: 0,
        });
    }
    Ok(())
}

async fn chains(client: &Client, routing: &Routing) -> Vec<Chain> {
    let vnodes: Vec<u16> = (0..routing.vnodes()).map(|v| v as u16).collect();
    let asked: Vec<Result<BTreeMap<u16, VnodeCheck>, String>> =
        ask_members(client, routing, &vnodes, false).await;
    vnodes
        .iter()
        .map(|&vnode| Chain {
            vnode,
            epoch: routing.epoch(vnode),
            replicas: routing
                .replicas(vnode)
                .into_iter()
                .map(|member| {
                    let applied = asked[member]
                        .as_ref()
                        .ok()
                        .and_then(|checks| checks.get(&vnode))
                        .map(|check| check.applied);
                    (member, applied)
                })
                .collect(),
        })
        .collect()
}

/// (uptime ms, version, shards, keys, disk bytes, memory bytes) of a node that answered.
fn totals(shards: &[ShardStats]) -> (u64, String, usize, u64, u64, u64) {
    let first = shards.first();
    (
        first.map_or(0, |s| s.uptime_ms),
        first.map_or(String::new(), |s| s.version.clone()),
        shards.len(),
        shards.iter().map(|s| s.keys).sum(),
        shards.iter().map(|s| s.disk_bytes).sum(),
        shards.iter().map(|s| s.index_bytes + s.cache_bytes).sum(),
    )
}

/// Every transfer the nodes that answered are sending: (from node, transfer).
fn transfers(nodes: &[Node]) -> Vec<(usize, &TransferStats)> {
    nodes
        .iter()
        .enumerate()
        .filter_map(|(id, node)| node.stats.as_ref().ok().map(|shards| (id, shards)))
        .flat_map(|(id, shards)| {
            shards
                .iter()
                .flat_map(move |s| s.transfers.iter().map(move |t| (id, t)))
        })
        .collect()
}

fn mib_per_s(t: &TransferStats) -> f64 {
    t.bytes as f64 / (1 << 20) as f64 / (t.elapsed_ms.max(1) as f64 / 1000.0)
}

fn write_json(out: &mut impl Write, nodes: &[Node], chains: &[Chain]) -> std::io::Result<()> {
    let in_flight = transfers(nodes);
    let transfers: Vec<_> = in_flight
        .iter()
        .map(|&(from, t)| {
            json!({"vnode": t.vnode, "from": from, "to": t.to_node, "keys": t.keys,
                   "bytes": t.bytes, "elapsed_ms": t.elapsed_ms, "mib_per_s": mib_per_s(t)})
        })
        .collect();
    let nodes: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(id, node)| match &node.stats {
            Ok(shards) => {
                let (uptime_ms, version, shards, keys, disk_bytes, memory_bytes) = totals(shards);
                json!({"id": id, "addr": node.addr, "state": "up", "uptime_ms": uptime_ms,
                       "version": version, "shards": shards, "keys": keys,
                       "disk_bytes": disk_bytes, "memory_bytes": memory_bytes})
            }
            Err(why) => json!({"id": id, "addr": node.addr, "state": "down", "error": why}),
        })
        .collect();
    let chains: Vec<_> = chains
        .iter()
        .map(|c| {
            let replicas: Vec<_> = c
                .replicas
                .iter()
                .map(|(node, applied)| json!({"node": node, "applied": applied}))
                .collect();
            json!({"vnode": c.vnode, "epoch": c.epoch, "replicas": replicas,
                   "lag": c.lag(), "short": c.short(), "behind": behind(c, &in_flight)})
        })
        .collect();
    let report = json!({"nodes": nodes, "chains": chains, "transfers": transfers});
    writeln!(out, "{report}")
}

/// Why a chain's replicas differ: a replica down, a transfer under way (from, to), or the
/// stream (a replica behind that is not being transferred to: it catches up from its
/// predecessor's queue, or is waiting for it). `None` when every replica agrees.
fn behind(chain: &Chain, transfers: &[(usize, &TransferStats)]) -> Option<String> {
    if chain.short() {
        return Some("a replica does not answer".into());
    }
    if chain.lag() == 0 {
        return None;
    }
    let transfer = transfers.iter().find(|(_, t)| t.vnode == chain.vnode);
    Some(match transfer {
        Some((from, t)) => format!(
            "state transfer from node {from} to node {}: {} keys, {} sent",
            t.to_node,
            t.keys,
            mib(t.bytes)
        ),
        None => "catching up from its predecessor's stream".into(),
    })
}

fn write_text(out: &mut impl Write, nodes: &[Node], chains: &[Chain]) -> std::io::Result<()> {
    writeln!(out, "node  address                state  uptime     version  shards  keys        disk        memory")?;
    for (id, node) in nodes.iter().enumerate() {
        match &node.stats {
            Ok(shards) => {
                let (uptime_ms, version, shards, keys, disk, memory) = totals(shards);
                writeln!(
                    out,
                    "{id:<5} {:<22} up     {:<10} {version:<8} {shards:<7} {keys:<11} {:<11} {}",
                    node.addr,
                    format!("{}s", uptime_ms / 1000),
                    mib(disk),
                    mib(memory)
                )?;
            }
            Err(why) => writeln!(out, "{id:<5} {:<22} DOWN   {why}", node.addr)?,
        }
    }
    let short: Vec<&Chain> = chains.iter().filter(|c| c.short()).collect();
    let lagging: Vec<&Chain> = chains
        .iter()
        .filter(|c| !c.short() && c.lag() > 0)
        .collect();
    let max_lag = chains.iter().map(Chain::lag).max().unwrap_or(0);
    writeln!(
        out,
        "chains: {} vnodes, {} complete, {} short of a replica, {} with a replica behind (most: {max_lag} writes)",
        chains.len(),
        chains.len() - short.len(),
        short.len(),
        lagging.len()
    )?;
    let transfers = transfers(nodes);
    writeln!(out, "transfers in flight: {}", transfers.len())?;
    for (from, t) in transfers.iter().take(LISTED) {
        writeln!(
            out,
            "  vnode {} from node {from} to node {}: {} keys, {} in {:.1} s ({:.1} MiB/s)",
            t.vnode,
            t.to_node,
            t.keys,
            mib(t.bytes),
            t.elapsed_ms as f64 / 1000.0,
            mib_per_s(t)
        )?;
    }
    for chain in short.iter().chain(lagging.iter()).take(LISTED) {
        let replicas: Vec<String> = chain
            .replicas
            .iter()
            .map(|(node, applied)| match applied {
                Some(seq) => format!("node {node} at {seq}"),
                None => format!("node {node} DOWN"),
            })
            .collect();
        writeln!(
            out,
            "  vnode {} (epoch {}): {} ({})",
            chain.vnode,
            chain.epoch,
            replicas.join(", "),
            behind(chain, &transfers).unwrap_or_default()
        )?;
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
