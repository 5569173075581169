//! Serving one client request on the shard that received it: local work runs inline, work for
//! another shard's vnodes hops once over the mesh (as Seastar's memcached does).
//!
//! SCAN cursors: `[vnode: u16 LE][flag: u8][digest: u128 LE]`; flag 0 = start of the vnode (no
//! digest), 1 = after the key whose index digest is `digest`. A page walks vnodes in order and,
//! within a vnode, keys in digest order (the index keeps digests, not keys: `index.rs`); each
//! shard owns a contiguous run of vnodes, so a page crosses shards at most once per shard.
//!
//! A page's `limit` bounds the keys examined, as Redis's SCAN COUNT does: with a prefix, a page
//! may hold fewer keys than the limit, or none, and still carry a cursor to go on from. Keys
//! written during a scan may or may not be listed; keys present throughout are listed once.

use std::rc::Rc;

use std::sync::Arc;

use tessera_schema::limits::{
    DEFAULT_SCAN_PAGE, MAX_RESPONSE_BODY_BYTES, MAX_SCAN_PAGE, MAX_VALUE_BYTES,
    RESULT_OVERHEAD_BYTES,
};
use tessera_schema::msg::{
    BatchOp, Level, OpResult, Request, Response, ScanPage, ScanRequest, Status,
};
use tessera_schema::placement::{decode_scan_cursor, encode_scan_cursor, vnode_of};
use tessera_schema::verify::check_request;

use crate::budget::Charge;
use crate::cluster_exec::OpOptions;
use crate::exec::{run_batch, run_shard_op};
use crate::mesh::{ShardOp, ShardReply};
use crate::shard::Shard;

/// Serves one request; the values and keys it copies are charged to `charge`.
pub async fn handle_request(
    shard: &Rc<Shard>,
    request: Request,
    options: OpOptions,
    charge: &Arc<Charge>,
) -> Response {
    if shard.stopping.get() {
        return Response::error(Status::Unavailable, "the node is shutting down");
    }
    if let Err(refusal) = check_request(&request) {
        return Response::error(refusal.status, refusal.message);
    }
    let options = &options;
    match request {
        Request::Ping => Response::Op(OpResult::ok(0)),
        Request::Get { key } => single(shard, BatchOp::Get { key }, options, charge).await,
        Request::Put(put) => single(shard, BatchOp::Put(put), options, charge).await,
        Request::Delete(delete) => single(shard, BatchOp::Delete(delete), options, charge).await,
        Request::Batch(ops) => Response::Batch(batch(shard, ops, options, charge).await),
        Request::Scan(scan_request) => scan(shard, scan_request, options, charge).await,
        Request::Stats => stats(shard).await,
        Request::Topology => Response::Topology(shard.node.topology()),
        Request::Verify {
            from_vnode,
            count,
            values,
        } => verify(shard, from_vnode, count, values).await,
        // The connection answers AUTH (login.rs); one cannot come this far.
        Request::Auth(_) => Response::error(Status::BadRequest, "AUTH is the connection's"),
    }
}

fn overloaded(target: u16) -> OpResult {
    OpResult::error(
        Status::Overloaded,
        format!("shard {target}'s queue is full"),
    )
}

/// Runs ops that all belong to shard `target`, their values within `answer_room_bytes`.
async fn on_shard(
    shard: &Rc<Shard>,
    target: u16,
    ops: Vec<BatchOp>,
    options: &OpOptions,
    charge: &Arc<Charge>,
    answer_room_bytes: usize,
) -> Vec<OpResult> {
    if target == shard.index {
        return match shard.replica {
            Some(_) => {
                crate::cluster_exec::run_batch(shard, ops, options, charge, answer_room_bytes).await
            }
            None => run_batch(shard, ops, charge, answer_room_bytes).await,
        };
    }
    let count = ops.len();
    let op = ShardOp::Batch {
        ops,
        charge: charge.clone(),
        answer_room_bytes,
        options: options.clone(),
    };
    match shard.forward(target, op).await {
        Some(ShardReply::Batch(results)) => results,
        _ => vec![overloaded(target); count],
    }
}

async fn single(
    shard: &Rc<Shard>,
    op: BatchOp,
    options: &OpOptions,
    charge: &Arc<Charge>,
) -> Response {
    let target = shard.owner_of(vnode_of(op.key(), shard.node.vnodes));
    let room = MAX_RESPONSE_BODY_BYTES;
    let mut results = on_shard(shard, target, vec![op], options, charge, room).await;
    Response::Op(results.pop().expect("one result per op"))
}

/// The part of a BATCH's answer one shard's items may fill: their share of the limit by item
/// count, and at least one largest value, so a batch of few large values is not cut short.
/// The shares may add up past the limit; `fit_answer` trims the answer once gathered.
fn answer_share(items: usize, total_items: usize) -> usize {
    let share =
        (MAX_RESPONSE_BODY_BYTES as u64 * items as u64 / total_items.max(1) as u64) as usize;
    share.clamp(
        MAX_VALUE_BYTES + RESULT_OVERHEAD_BYTES,
        MAX_RESPONSE_BODY_BYTES,
    )
}

/// Cuts a BATCH's answer to what one response can carry: past the limit, each value is left
/// out and its item answered BATCH_TOO_LARGE (in the caller's order: the first items win).
fn fit_answer(results: &mut [OpResult]) {
    // Room for the response's own table and the frame's slack.
    let mut room = MAX_RESPONSE_BODY_BYTES - 4096;
    for result in results {
        let bytes = result.value.as_ref().map_or(0, Vec::len) + result.message.len();
        match room.checked_sub(bytes + RESULT_OVERHEAD_BYTES) {
            Some(left) => room = left,
            None => {
                *result = OpResult::error(
                    Status::BatchTooLarge,
                    format!(
                        "the batch's answer would pass {MAX_RESPONSE_BODY_BYTES} bytes: this \
                         value was left out (GET it on its own)"
                    ),
                );
                room = room.saturating_sub(result.message.len() + RESULT_OVERHEAD_BYTES);
            }
        }
    }
}

async fn batch(
    shard: &Rc<Shard>,
    ops: Vec<BatchOp>,
    options: &OpOptions,
    charge: &Arc<Charge>,
) -> Vec<OpResult> {
    let shards = usize::from(shard.node.shards);
    let mut groups: Vec<(Vec<usize>, Vec<BatchOp>)> =
        (0..shards).map(|_| Default::default()).collect();
    for (position, op) in ops.into_iter().enumerate() {
        let target = usize::from(shard.owner_of(vnode_of(op.key(), shard.node.vnodes)));
        groups[target].0.push(position);
        groups[target].1.push(op);
    }
    let total = groups.iter().map(|g| g.0.len()).sum();
    let runs = groups
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !g.0.is_empty())
        .map(|(target, (positions, ops))| async move {
            let room = answer_share(ops.len(), total);
            let results = on_shard(shard, target as u16, ops, options, charge, room).await;
            (positions, results)
        });
    let mut results = vec![None; total];
    for (positions, group_results) in futures::future::join_all(runs).await {
        for (position, result) in positions.into_iter().zip(group_results) {
            results[position] = Some(result);
        }
    }
    let mut results: Vec<OpResult> = results
        .into_iter()
        .map(|r| r.expect("every op answered"))
        .collect();
    fit_answer(&mut results);
    results
}

/// Whether this node holds a replica of `vnode` (always, for a node not in a cluster).
fn holds(shard: &Shard, vnode: u16) -> bool {
    shard.node.cluster.as_ref().is_none_or(|cluster| {
        cluster
            .table
            .chain(u32::from(vnode))
            .position(cluster.me)
            .is_some()
    })
}

/// The last vnode from `vnode` through `last` that this node holds without a gap.
fn held_run_end(shard: &Shard, vnode: u16, last: u16) -> u16 {
    let mut end = vnode;
    while end < last && holds(shard, end + 1) {
        end += 1;
    }
    end
}

/// The last vnode of the contiguous run owned by the shard that owns `vnode`.
fn run_end(shard: &Shard, vnode: u16) -> u16 {
    let owner = shard.owner_of(vnode);
    let mut last = vnode;
    while u32::from(last) + 1 < shard.node.vnodes && shard.owner_of(last + 1) == owner {
        last += 1;
    }
    last
}

async fn scan(
    shard: &Rc<Shard>,
    request: ScanRequest,
    options: &OpOptions,
    charge: &Arc<Charge>,
) -> Response {
    let vnodes = shard.node.vnodes;
    let Some((mut vnode, mut after)) = decode_scan_cursor(&request.cursor, vnodes) else {
        return Response::error(Status::BadRequest, "scan cursor is not one this node made");
    };
    let limit = match request.limit {
        0 => DEFAULT_SCAN_PAGE,
        n => n.min(MAX_SCAN_PAGE),
    } as usize;
    let mut page = ScanPage::default();
    let mut examined = 0;
    while vnode < vnodes {
        // Vnode ids are below `vnodes` <= 65 536: they fit in 16 bits.
        let from_vnode = vnode as u16;
        // In a cluster a page covers the vnodes this node holds from the cursor on; the client
        // asks a holder of the next one for the page after.
        if !holds(shard, from_vnode) {
            if page.entries.is_empty() && examined == 0 {
                return Response::error(
                    Status::Moved,
                    format!("vnode {from_vnode} is not held by this node"),
                );
            }
            page.next_cursor = encode_scan_cursor(from_vnode, None);
            return Response::Scan(page);
        }
        let last_vnode = held_run_end(shard, from_vnode, run_end(shard, from_vnode));
        let target = shard.owner_of(from_vnode);
        let op = ShardOp::Scan {
            from_vnode,
            last_vnode,
            after: after.take(),
            prefix: request.prefix.clone(),
            limit: limit - examined,
            charge: charge.clone(),
            strong: matches!(options.level, Level::Default | Level::Strong),
        };
        let reply = if target == shard.index {
            run_shard_op(shard, op).await
        } else {
            match shard.forward(target, op).await {
                Some(reply) => reply,
                None => {
                    return Response::error(
                        Status::Overloaded,
                        format!("shard {target}'s queue is full"),
                    )
                }
            }
        };
        let (entries, found, resume) = match reply {
            ShardReply::Scan {
                entries,
                examined,
                resume,
            } => (entries, examined, resume),
            ShardReply::Failed(status, reason) => return Response::error(status, reason),
            _ => return Response::error(Status::Internal, "unexpected reply to a scan"),
        };
        page.entries.extend(entries);
        examined += found;
        if let Some((last_vnode, last_digest)) = resume {
            page.next_cursor = encode_scan_cursor(last_vnode, Some(last_digest));
            return Response::Scan(page);
        }
        vnode = u32::from(last_vnode) + 1;
        if examined >= limit && vnode < vnodes {
            page.next_cursor = encode_scan_cursor(vnode as u16, None);
            return Response::Scan(page);
        }
    }
    Response::Scan(page)
}

/// VERIFY: the checks of the vnodes of `from_vnode .. from_vnode + count` this node holds,
/// gathered from their shards.
async fn verify(shard: &Rc<Shard>, from_vnode: u32, count: u32, values: bool) -> Response {
    let vnodes = shard.node.vnodes;
    let end = from_vnode.saturating_add(count).min(vnodes);
    let mut per_shard: Vec<Vec<u16>> = vec![Vec::new(); usize::from(shard.node.shards)];
    for vnode in from_vnode.min(end)..end {
        let vnode = vnode as u16;
        if holds(shard, vnode) {
            per_shard[usize::from(shard.owner_of(vnode))].push(vnode);
        }
    }
    let gathers = per_shard
        .into_iter()
        .enumerate()
        .filter(|(_, vnodes)| !vnodes.is_empty())
        .map(|(target, vnodes)| async move {
            let op = ShardOp::Verify { vnodes, values };
            let reply = if target == usize::from(shard.index) {
                Some(run_shard_op(shard, op).await)
            } else {
                shard.forward(target as u16, op).await
            };
            match reply {
                Some(ShardReply::Verify(checks)) => Some(checks),
                _ => None,
            }
        });
    let mut checks = Vec::new();
    for gathered in futures::future::join_all(gathers).await {
        match gathered {
            Some(part) => checks.extend(part),
            None => return Response::error(Status::Overloaded, "a shard's queue is full"),
        }
    }
    checks.sort_by_key(|c| c.vnode);
    Response::Verify(checks)
}

async fn stats(shard: &Rc<Shard>) -> Response {
    let gathers = (0..shard.node.shards).map(|target| async move {
        if target == shard.index {
            return Some(shard.stats());
        }
        match shard.forward(target, ShardOp::Stats).await {
            Some(ShardReply::Stats(stats)) => Some(stats),
            _ => None,
        }
    });
    let shards: Option<Vec<_>> = futures::future::join_all(gathers)
        .await
        .into_iter()
        .collect();
    match shards {
        Some(shards) => Response::Stats(shards),
        None => Response::error(Status::Overloaded, "a shard's queue is full"),
    }
}
