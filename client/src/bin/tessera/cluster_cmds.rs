//! `tessera topology` and `tessera verify`.
//!
//! `verify` asks every member for each vnode it holds: the sequence number applied there, its
//! live keys, an order-independent digest of their (key digest, version, expiry), and one of
//! their (key digest, version, value bytes). It costs each node a walk of its in-memory index
//! and a read of every live value (the reads a state transfer makes, 64 at once, in the
//! shard's low-priority transfer queue), and 40 bytes of answer per vnode replica, asked
//! 1 024 vnodes at a time. Replicas compare only at the same applied sequence: while writes flow,
//! a replica behind its head is "catching up", and `verify` asks again (up to `ROUNDS` times,
//! `ROUND_PAUSE` apart) before it reports a vnode as not agreeing.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use tessera_client::routing::Routing;
use tessera_client::{Client, ClientError, Status, VnodeCheck};

/// Vnodes asked per VERIFY request.
const VNODES_PER_REQUEST: u32 = 1024;
/// Times a vnode whose replicas are at different sequence numbers is asked again.
const ROUNDS: u32 = 10;
const ROUND_PAUSE: Duration = Duration::from_millis(300);

pub fn print_topology(out: &mut impl Write, routing: &Routing, json: bool) -> std::io::Result<()> {
    let topology = routing.topology();
    let vnodes = routing.vnodes();
    let mut heads = vec![0u32; routing.member_count()];
    let mut held = vec![0u32; routing.member_count()];
    for vnode in 0..vnodes {
        let replicas = routing.replicas(vnode as u16);
        heads[replicas[0]] += 1;
        replicas.iter().for_each(|&m| held[m] += 1);
    }
    let members: Vec<serde_json::Value> = (0..routing.member_count())
        .map(|m| {
            let zone = topology.members.get(m).map_or("", |i| i.zone.as_str());
            serde_json::json!({
                "id": m,
                "addr": routing.addr(m).to_string(),
                "shards": routing.shard_count(m),
                "zone": zone,
                "heads": heads[m],
                "replicas": held[m],
            })
        })
        .collect();
    let chains: Vec<serde_json::Value> = (0..vnodes)
        .map(|v| {
            serde_json::json!({
                "vnode": v,
                "epoch": routing.epoch(v as u16),
                "replicas": routing.replicas(v as u16),
            })
        })
        .collect();
    if json {
        let document = serde_json::json!({
            "cluster_id": format!("{:016x}", routing.cluster_id()),
            "vnodes": vnodes,
            "answered_by": routing.answering_member(),
            "members": members,
            "chains": chains,
        });
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&document).expect("json")
        );
    }
    if routing.is_cluster() {
        writeln!(
            out,
            "cluster {:016x}: {} members, {vnodes} vnodes (answered by node {})",
            routing.cluster_id(),
            routing.member_count(),
            routing.answering_member()
        )?;
    } else {
        writeln!(out, "a single node (not in a cluster): {vnodes} vnodes")?;
    }
    writeln!(
        out,
        "{:<6}{:<24}{:>7}{:>10}{:>8}{:>10}",
        "node", "address", "shards", "zone", "heads", "replicas"
    )?;
    for (m, member) in members.iter().enumerate() {
        let zone = member["zone"]
            .as_str()
            .filter(|z| !z.is_empty())
            .unwrap_or("-");
        writeln!(
            out,
            "{m:<6}{:<24}{:>7}{zone:>10}{:>8}{:>10}",
            routing.addr(m).to_string(),
            routing.shard_count(m),
            heads[m],
            held[m]
        )?;
    }
    writeln!(out, "\n{:<8}{:<8}chain (head first)", "vnode", "epoch")?;
    for v in 0..vnodes {
        let chain: Vec<String> = routing
            .replicas(v as u16)
            .iter()
            .map(|m| m.to_string())
            .collect();
        writeln!(
            out,
            "{v:<8}{:<8}{}",
            routing.epoch(v as u16),
            chain.join(" ")
        )?;
    }
    Ok(())
}

/// One vnode's replicas as last asked.
#[derive(Default)]
struct Compared {
    /// Per replica (member): its check, or why it could not be asked.
    replicas: BTreeMap<usize, Result<VnodeCheck, String>>,
}

impl Compared {
    /// All replicas answered and agree.
    fn agrees(&self) -> bool {
        let mut checks = self.replicas.values();
        let Some(Ok(first)) = checks.next() else {
            return false;
        };
        checks.all(|c| c.as_ref().is_ok_and(|c| same(c, first)))
    }

    /// All replicas answered at one sequence number (so a digest difference is real).
    fn settled(&self) -> bool {
        let applied: Vec<u64> = self
            .replicas
            .values()
            .filter_map(|c| c.as_ref().ok().map(|c| c.applied))
            .collect();
        applied.len() == self.replicas.len() && applied.windows(2).all(|w| w[0] == w[1])
    }
}

fn same(a: &VnodeCheck, b: &VnodeCheck) -> bool {
    (a.applied, a.keys, a.digest, a.values) == (b.applied, b.keys, b.digest, b.values)
}

pub async fn verify(client: &Client, out: &mut impl Write, json: bool) -> Result<(), ClientError> {
    let routing = client.topology();
    let mut pending: Vec<u16> = (0..routing.vnodes()).map(|v| v as u16).collect();
    let mut compared: BTreeMap<u16, Compared> = BTreeMap::new();
    for round in 0..ROUNDS {
        if round > 0 {
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        let asked = ask_members(client, &routing, &pending, true).await;
        for &vnode in &pending {
            let mut entry = Compared::default();
            for member in routing.replicas(vnode) {
                let check = match &asked[member] {
                    Ok(checks) => checks
                        .get(&vnode)
                        .copied()
                        .ok_or_else(|| "does not report it".to_string()),
                    Err(why) => Err(why.clone()),
                };
                entry.replicas.insert(member, check);
            }
            compared.insert(vnode, entry);
        }
        // Ask again about vnodes whose replicas are still at different points.
        pending.retain(|v| !compared[v].agrees() && !compared[v].settled());
        if pending.is_empty() {
            break;
        }
    }
    report(out, &compared, json).map_err(|e| ClientError::Io(e.to_string()))?;
    let differing = compared.values().filter(|c| !c.agrees()).count();
    if differing > 0 {
        return Err(ClientError::Status {
            status: Status::Internal,
            message: format!("the replicas of {differing} vnodes do not agree"),
            version: 0,
        });
    }
    Ok(())
}

/// Each member's checks of the vnodes in `vnodes` it holds, or why it could not answer.
pub(crate) async fn ask_members(
    client: &Client,
    routing: &Routing,
    vnodes: &[u16],
    values: bool,
) -> Vec<Result<BTreeMap<u16, VnodeCheck>, String>> {
    let (Some(&first), Some(&last)) = (vnodes.first(), vnodes.last()) else {
        return vec![Ok(BTreeMap::new()); routing.member_count()];
    };
    let asks = (0..routing.member_count()).map(|member| async move {
        let mut checks = BTreeMap::new();
        let mut from = u32::from(first);
        while from <= u32::from(last) {
            let count = VNODES_PER_REQUEST.min(u32::from(last) + 1 - from);
            let part = client
                .verify_of(member, from, count, values)
                .await
                .map_err(|e| format!("node {member} ({}): {e}", routing.addr(member)))?;
            checks.extend(part.into_iter().map(|c| (c.vnode, c)));
            from += count;
        }
        Ok(checks)
    });
    futures::future::join_all(asks).await
}

fn report(
    out: &mut impl Write,
    compared: &BTreeMap<u16, Compared>,
    json: bool,
) -> std::io::Result<()> {
    let differing: Vec<(&u16, &Compared)> = compared.iter().filter(|(_, c)| !c.agrees()).collect();
    let replicas: usize = compared.values().map(|c| c.replicas.len()).sum();
    if json {
        let items: Vec<serde_json::Value> = differing
            .iter()
            .map(|(vnode, c)| {
                let replicas: Vec<serde_json::Value> = c
                    .replicas
                    .iter()
                    .map(|(member, check)| match check {
                        Ok(k) => serde_json::json!({"node": member, "applied": k.applied,
                            "keys": k.keys, "digest": format!("{:016x}", k.digest),
                            "values": format!("{:016x}", k.values)}),
                        Err(why) => serde_json::json!({"node": member, "error": why}),
                    })
                    .collect();
                serde_json::json!({"vnode": vnode, "settled": c.settled(), "replicas": replicas})
            })
            .collect();
        let document = serde_json::json!({
            "vnodes": compared.len(),
            "replicas": replicas,
            "agree": differing.is_empty(),
            "differing": items,
        });
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&document).expect("json")
        );
    }
    for (vnode, c) in &differing {
        let state = if c.settled() {
            "differ"
        } else {
            "still moving"
        };
        writeln!(out, "vnode {vnode}: replicas {state}")?;
        for (member, check) in &c.replicas {
            match check {
                Ok(k) => writeln!(
                    out,
                    "  node {member}: applied {} keys {} digest {:016x} values {:016x}",
                    k.applied, k.keys, k.digest, k.values
                )?,
                Err(why) => writeln!(out, "  node {member}: {why}")?,
            }
        }
    }
    if differing.is_empty() {
        writeln!(
            out,
            "{} vnodes, {replicas} replicas: all replicas agree",
            compared.len()
        )
    } else {
        writeln!(
            out,
            "{} of {} vnodes: replicas do not agree",
            differing.len(),
            compared.len()
        )
    }
}
