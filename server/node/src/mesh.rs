//! Messages between the shards of one node, carried by glommio's channel mesh.
//!
//! A shard that receives a request for another shard's vnode forwards it here and awaits the
//! reply on a oneshot channel. Deadlock rule (glommio's mesh can deadlock on cyclic waits): the
//! receive loop never awaits a send; it spawns a task per request, and that task may await the
//! reply's send, which always drains because every peer's receive loop keeps receiving.

use std::sync::Arc;

use tessera_schema::msg::{BatchOp, OpResult, ScanEntry, ShardStats, Status, VnodeCheck};
use tessera_store::Digest;

use crate::budget::Charge;

/// Work one shard asks of another.
#[derive(Debug)]
pub enum ShardOp {
    /// Operations of one request for the target's vnodes; the values they copy are charged to
    /// `charge` (the requesting connection's) and fit in `answer_room_bytes` of answer.
    Batch {
        ops: Vec<BatchOp>,
        charge: Arc<Charge>,
        answer_room_bytes: usize,
        /// Level and session tokens (a node in a cluster).
        options: crate::cluster_exec::OpOptions,
    },
    /// Live keys of vnodes `from_vnode..=last_vnode` (all owned by the target), after the
    /// digest `after` in `from_vnode`, starting with `prefix`; at most `limit` keys examined.
    Scan {
        from_vnode: u16,
        last_vnode: u16,
        after: Option<Digest>,
        prefix: Vec<u8>,
        limit: usize,
        charge: Arc<Charge>,
        /// A strong scan waits for what it lists to be committed (durable on a single node
        /// under `--fsync always`).
        strong: bool,
    },
    Stats,
    /// `tessera verify`'s view of these vnodes (all owned by the target).
    Verify {
        vnodes: Vec<u16>,
        /// Also digest every live value.
        values: bool,
    },
}

#[derive(Debug)]
pub enum ShardReply {
    Batch(Vec<OpResult>),
    /// Entries found, how many keys were examined, and the vnode and digest to resume after
    /// when `limit` keys were examined before the range ended (`None`: the range is done).
    Scan {
        entries: Vec<ScanEntry>,
        examined: usize,
        resume: Option<(u16, Digest)>,
    },
    Stats(ShardStats),
    Verify(Vec<VnodeCheck>),
    /// The op failed on the target (a corrupt record met by a scan, no memory for its answer):
    /// the status and a message saying why.
    Failed(Status, String),
}

#[derive(Debug)]
pub enum MeshMsg {
    Request { id: u64, op: ShardOp },
    Reply { id: u64, reply: ShardReply },
}
