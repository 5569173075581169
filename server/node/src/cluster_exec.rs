//! Operations on this shard's store when the node is in a cluster: each at its level.
//!
//! - A write goes to its vnode's head: elsewhere it is answered MOVED, naming the head (the
//!   client refreshes its topology and sends it there: redirected, not forwarded, so that a
//!   write crosses the network once). The head applies it, hands it to the replication core and
//!   answers once the level's ack point is reached: `eventual` the head has it, `session` head
//!   and middle, `strong` (the default) every replica; "has it" means durable under
//!   `--fsync always` or when the write asks for a sync. A write whose ack point is not reached
//!   in time is answered UNAVAILABLE, outcome unknown.
//! - A read is served by the replica it reaches. `eventual`: what the replica holds now.
//!   `session`: once the replica has applied the session token the client sent for the
//!   key's vnode. `strong`: once the key's newest write here is committed (the chain has it),
//!   so that no strong read shows a write that can still be lost, and none misses one that was
//!   acknowledged (every committed write went through every replica).
//! - A refusal that reveals a key's state (VERSION_MISMATCH, NOT_FOUND, MEMORY_LIMIT) waits
//!   until that state is committed, whatever the level.
//!
//! Every answer carries the session token of its key's vnode: the chain's epoch and the write's
//! sequence number (a write) or what this replica has applied (a read).

use std::rc::Rc;
use std::time::Duration;

use tessera_core::replication::{Level as CoreLevel, Now, Refusal};
use tessera_core::shard::{ops, ReadWait, WriteStep};
use tessera_schema::msg::{BatchOp, Level, OpResult, Status, Token};
use tessera_schema::placement::vnode_of;
use tessera_schema::verify::check_batch_op;
use tessera_store::{Barrier, Lookup, Write};

use crate::budget::Charge;
use crate::exec::{read_record, wait_visible, write_error, Answer};
use crate::replica::{pump, Replica};
use crate::shard::{mono_ms, now_ms, Shard};

// The bounds of each wait are the shard core's (`tessera_core::shard::ops`), so that the
// simulator gives up when the node does.
const SESSION_WAIT: Duration = Duration::from_millis(ops::SESSION_WAIT_MS);
const RECOVERY_WAIT: Duration = Duration::from_millis(ops::RECOVERY_WAIT_MS);
const COMMIT_WAIT: Duration = Duration::from_millis(ops::COMMIT_WAIT_MS);

/// What a cluster operation is asked for, beside itself.
#[derive(Clone, Debug, Default)]
pub struct OpOptions {
    pub level: Level,
    pub tokens: Vec<Token>,
}

fn core_level(level: Level) -> CoreLevel {
    match level {
        Level::Eventual => CoreLevel::Eventual,
        Level::Session => CoreLevel::Session,
        Level::Default | Level::Strong => CoreLevel::Strong,
    }
}

fn moved(message: String) -> OpResult {
    OpResult::error(Status::Moved, message)
}

/// Runs a batch (or one op) of this shard's vnodes; one result per op, in order. The ops'
/// synchronous parts (lookups, writes) run in order before any of them waits.
pub async fn run_batch(
    shard: &Rc<Shard>,
    ops: Vec<BatchOp>,
    options: &OpOptions,
    charge: &Charge,
    answer_room_bytes: usize,
) -> Vec<OpResult> {
    let answer = std::cell::RefCell::new(Answer {
        room_bytes: answer_room_bytes,
        charge,
    });
    let runs = ops.iter().map(|op| run_op(shard, op, options, &answer));
    let results = futures::future::join_all(runs).await;
    shard.kick_flusher();
    results
}

async fn run_op(
    shard: &Rc<Shard>,
    op: &BatchOp,
    options: &OpOptions,
    answer: &std::cell::RefCell<Answer<'_>>,
) -> OpResult {
    if let Err(refusal) = check_batch_op(op) {
        return OpResult::error(refusal.status, refusal.message);
    }
    let replica = shard.replica.as_ref().expect("a cluster shard");
    let vnode = vnode_of(op.key(), shard.node.vnodes);
    let chain = replica.cluster.table.chain(u32::from(vnode));
    if chain.position(replica.cluster.me).is_none() {
        let holders: Vec<String> = chain
            .replicas
            .iter()
            .map(|&n| replica.cluster.member(n).addr.to_string())
            .collect();
        return moved(format!(
            "vnode {vnode} is held by {} (head first), not by this node",
            holders.join(", ")
        ));
    }
    match op {
        BatchOp::Get { key } => read(shard, replica, vnode, key, options, answer).await,
        BatchOp::Put(put) => {
            shard.counters.puts.set(shard.counters.puts.get() + 1);
            let write = Write {
                vnode,
                key: &put.key,
                value: Some(&put.value),
                ttl_ms: put.ttl_ms,
                if_version: put.if_version,
                sync: put.durability == tessera_schema::msg::Durability::Sync,
                epoch: chain.epoch as u32,
            };
            write_at_head(shard, replica, write, options.level).await
        }
        BatchOp::Delete(delete) => {
            shard.counters.deletes.set(shard.counters.deletes.get() + 1);
            let write = Write {
                vnode,
                key: &delete.key,
                value: None,
                ttl_ms: 0,
                if_version: delete.if_version,
                sync: delete.durability == tessera_schema::msg::Durability::Sync,
                epoch: chain.epoch as u32,
            };
            write_at_head(shard, replica, write, options.level).await
        }
    }
}

fn refusal(refusal: Refusal, replica: &Replica) -> OpResult {
    match refusal {
        Refusal::NotHead { vnode, head } => moved(format!(
            "writes of vnode {vnode} go to its head, {}",
            replica.cluster.member(head).addr
        )),
        Refusal::NotHeld { vnode } => moved(format!("vnode {vnode} is not held by this node")),
        Refusal::Recovering { .. } => OpResult::error(Status::Unavailable, refusal.to_string()),
        Refusal::Overloaded { .. } => OpResult::error(Status::Overloaded, refusal.to_string()),
    }
}

/// Waits while a restarted head has not heard from its replicas (up to `RECOVERY_WAIT_MS`),
/// rather than refusing a write that comes meanwhile at once; `ops::write_at_head` decides.
async fn wait_recovered(replica: &Replica, vnode: u16) {
    let recovered = replica.wait_takes_writes(vnode);
    let timeout = glommio::timer::sleep(RECOVERY_WAIT);
    let recovered = async {
        let _ = recovered.await;
    };
    futures_lite::future::or(recovered, timeout).await;
}

async fn write_at_head(
    shard: &Rc<Shard>,
    replica: &Replica,
    write: Write<'_>,
    level: Level,
) -> OpResult {
    wait_recovered(replica, write.vnode).await;
    let now = Now {
        mono_ms: mono_ms(),
        wall_ms: now_ms(),
    };
    let step = {
        let mut store = shard.store.borrow_mut();
        let mut replicator = replica.replicator.borrow_mut();
        ops::write_at_head(&mut store, &mut replicator, write, core_level(level), now)
    };
    let (ack, ticket) = match step {
        WriteStep::Accepted { ack, ticket } => (ack, ticket),
        WriteStep::Refused(refused) => return refusal(refused, replica),
        WriteStep::StoreRefused { error, barrier } => {
            let result = write_error(error);
            return match wait_committed(shard, barrier).await {
                Ok(()) => result,
                Err(unavailable) => unavailable,
            };
        }
    };
    // Registered before the pump runs: the write may be done at once (eventual).
    let done = replica.wait_write(ticket);
    shard.kick_flusher();
    pump(shard);
    let epoch = replica.epoch(write.vnode);
    match done.await {
        Ok(Ok(())) => OpResult::ok(ack.version).with_token(epoch, ack.vnode_seq),
        Ok(Err(failure)) => OpResult::error(Status::Unavailable, failure.to_string()),
        Err(_) => OpResult::error(Status::Unavailable, "the node is stopping: outcome unknown"),
    }
}

/// Waits until `barrier` (if any) is visible, for at most `COMMIT_WAIT`.
async fn wait_committed(shard: &Shard, barrier: Option<Barrier>) -> Result<(), OpResult> {
    let Some(barrier) = barrier else {
        return Ok(());
    };
    let wait = async { Some(wait_visible(shard, vec![barrier]).await) };
    let timeout = async {
        glommio::timer::sleep(COMMIT_WAIT).await;
        None
    };
    match futures_lite::future::or(wait, timeout).await {
        Some(Ok(())) => Ok(()),
        Some(Err(reason)) => Err(OpResult::error(Status::Unavailable, reason)),
        None => Err(OpResult::error(
            Status::Unavailable,
            format!(
                "vnode {}: this replica could not show a committed state within {COMMIT_WAIT:?} (a replica of its chain is down or catching up); retry, or read from another replica",
                barrier.vnode
            ),
        )),
    }
}

/// A GET at `level`, with this replica's token in the answer.
async fn read(
    shard: &Rc<Shard>,
    replica: &Replica,
    vnode: u16,
    key: &[u8],
    options: &OpOptions,
    answer: &std::cell::RefCell<Answer<'_>>,
) -> OpResult {
    shard.counters.gets.set(shard.counters.gets.get() + 1);
    let epoch = replica.epoch(vnode);
    if options.level == Level::Session {
        let token = options
            .tokens
            .iter()
            .find(|t| t.vnode == vnode && t.epoch == epoch)
            .map_or(0, |t| t.seq);
        let applied = replica.wait_applied(vnode, token);
        let in_time = futures_lite::future::or(async { applied.await.is_ok() }, async {
            glommio::timer::sleep(SESSION_WAIT).await;
            false
        });
        if !in_time.await {
            return OpResult::error(
                Status::Unavailable,
                format!("this replica has not applied the session's writes of vnode {vnode} yet; retry (or read from the head)"),
            );
        }
    }
    // A strong read of a replica whose copy is not whole yet (a restart) reads again once it is.
    for _ in 0..ops::STRONG_READ_TRIES {
        let (result, barrier) = match lookup(shard, vnode, key, answer).await {
            Ok(found) => found,
            Err(error) => return error,
        };
        let (barrier, again) = match ops::read_wait(core_level(options.level), barrier) {
            ReadWait::None => (None, false),
            ReadWait::Committed(barrier) => (Some(barrier), false),
            ReadWait::Whole(barrier) => (Some(barrier), true),
        };
        if let Err(unavailable) = wait_committed(shard, barrier).await {
            return unavailable;
        }
        if again {
            continue;
        }
        let applied = replica.replicator.borrow().applied(vnode).unwrap_or(0);
        return result.with_token(epoch, applied);
    }
    OpResult::error(
        Status::Unavailable,
        "this replica is still catching up; retry",
    )
}

/// The key's value here now, and the barrier of its newest write.
async fn lookup(
    shard: &Shard,
    vnode: u16,
    key: &[u8],
    answer: &std::cell::RefCell<Answer<'_>>,
) -> Result<(OpResult, Option<Barrier>), OpResult> {
    let (found, barrier) = {
        let store = shard.store.borrow();
        let (lookup, barrier) = store.read(vnode, key, now_ms());
        let len = match &lookup {
            Lookup::NotFound => 0,
            Lookup::InMemory { value, .. } => value.len(),
            Lookup::OnDisk(read) => read.len,
        };
        answer.borrow_mut().take(len)?;
        let found = match lookup {
            Lookup::NotFound => Ok(OpResult::error(Status::NotFound, "")),
            Lookup::InMemory { value, version } => Ok(OpResult::found(value.to_vec(), version)),
            Lookup::OnDisk(read) => Err(read),
        };
        (found, barrier)
    };
    match found {
        Ok(result) => Ok((result, barrier)),
        Err(read) => Ok((read_record(shard, &read, key).await, barrier)),
    }
}
