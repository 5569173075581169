//! A client operation at its level on one shard (DESIGN.md, "Consistency per operation").
//!
//! Writes go to the vnode's head ([`write_at_head`]): it is admitted by the replicator (the
//! head of a held vnode, not recovering, queues not full), applied to the store, and handed to
//! replication, whose ticket says when the level's ack point is reached. A store refusal that
//! reveals the key's state (VERSION_MISMATCH, NOT_FOUND, MEMORY_LIMIT) is answered only once
//! that state is committed ([`refusal_barrier`]), whatever the level: a refusal must not show
//! a write that can still be lost.
//!
//! Reads are served by the replica they reach ([`read_wait`]): `eventual` at once; `session`
//! once the replica has applied the client's token for the vnode ([`session_ready`]); `strong`
//! once the key's newest write here is committed. A read that found the replica's copy not
//! whole (its barrier is the store's `FLOOR`, after a restart) looks again once it is, up to
//! [`STRONG_READ_TRIES`] times.
//!
//! The waits are the caller's (the node sleeps on glommio timers, the simulator steps virtual
//! time); their bounds are here so that both give up at the same moment.

use tessera_store::visibility::FLOOR;
use tessera_store::{Barrier, Store, Write, WriteAck, WriteError};

use crate::replication::{Entry, Level, Now, Refusal, Replicator, Ticket};

/// How long a write waits for a restarted head to hear from its replicas before it is refused.
pub const RECOVERY_WAIT_MS: u64 = 2_000;
/// How long a `session` read waits for its replica to apply the client's token.
pub const SESSION_WAIT_MS: u64 = 2_000;
/// How long an answer waits for the state it shows to be committed (a `strong` read, or a
/// refusal that reveals a key's state): a chain that lacks a replica cannot commit, and the
/// client's budget is better spent on another replica than on a wait without end.
pub const COMMIT_WAIT_MS: u64 = 2_000;
/// Lookups a `strong` read makes while its replica's copy is not whole yet (a restart).
pub const STRONG_READ_TRIES: u32 = 3;

/// Where a write at the head stands after its synchronous part.
#[derive(Debug)]
pub enum WriteStep {
    /// Not admitted: not this vnode's head, not held, recovering, or the queues are full.
    Refused(Refusal),
    /// The store refused it; the answer leaves once `barrier` (if any) is visible.
    StoreRefused {
        error: WriteError,
        barrier: Option<Barrier>,
    },
    /// Applied here and handed to replication: the answer leaves when `ticket` is done.
    Accepted { ack: WriteAck, ticket: Ticket },
}

/// A client write of a vnode this shard heads, at `level`: admission, the store, replication.
/// `write.sync` asks for durability whatever the node's fsync policy.
pub fn write_at_head(
    store: &mut Store,
    replicator: &mut Replicator,
    write: Write<'_>,
    level: Level,
    now: Now,
) -> WriteStep {
    if let Err(refusal) = replicator.admit_write(write.vnode) {
        return WriteStep::Refused(refusal);
    }
    let ack = match store.handle_write(write, now.wall_ms) {
        Ok(ack) => ack,
        Err(error) => {
            let barrier = refusal_barrier(store, &write, &error);
            return WriteStep::StoreRefused { error, barrier };
        }
    };
    let entry = Entry {
        seq: ack.vnode_seq,
        version: ack.version,
        expiry_ms: ack.expiry_ms,
        key: write.key.to_vec(),
        value: write.value.map(<[u8]>::to_vec),
    };
    let ticket = replicator.handle_head_write(write.vnode, entry, level, write.sync, store, now);
    WriteStep::Accepted { ack, ticket }
}

/// What a store refusal must wait for before it is answered: the key's newest write, if the
/// refusal reveals the key's state and that write is not committed yet.
pub fn refusal_barrier(store: &Store, write: &Write<'_>, error: &WriteError) -> Option<Barrier> {
    let reveals = matches!(
        error,
        WriteError::VersionMismatch { .. } | WriteError::NotFound | WriteError::MemoryLimit { .. }
    );
    reveals
        .then(|| store.unsettled_barrier(write.vnode, write.key))
        .flatten()
}

/// Whether a `session` read may look now: the replica has applied the client's token.
pub fn session_ready(replicator: &Replicator, vnode: u16, token: u64) -> bool {
    replicator.applied(vnode).unwrap_or(0) >= token
}

/// What a read's answer waits for, given the barrier of the key's newest write here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadWait {
    /// Answer now.
    None,
    /// Answer once the barrier is visible (the write is committed).
    Committed(Barrier),
    /// The replica's copy is not whole yet: look again once the barrier is visible.
    Whole(Barrier),
}

/// What a read at `level` that found `barrier` waits for before it answers.
pub fn read_wait(level: Level, barrier: Option<Barrier>) -> ReadWait {
    match barrier {
        Some(barrier) if level == Level::Strong && barrier.seq == FLOOR => ReadWait::Whole(barrier),
        Some(barrier) if level == Level::Strong => ReadWait::Committed(barrier),
        _ => ReadWait::None,
    }
}
