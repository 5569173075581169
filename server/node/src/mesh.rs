//! Messages between the shards of one node, carried by glommio's channel mesh.
//!
//! A shard that receives a request for another shard's vnode forwards it here and awaits the
//! reply on a oneshot channel. Deadlock rule (glommio's mesh can deadlock on cyclic waits): the
//! receive loop never awaits a send; it spawns a task per request, and that task may await the
//! reply's send, which always drains because every peer's receive loop keeps receiving.

use tessera_schema::msg::{BatchOp, OpResult, ScanEntry, ShardStats};
use tessera_store::Digest;

/// Work one shard asks of another.
#[derive(Debug)]
pub enum ShardOp {
    Batch(Vec<BatchOp>),
    /// Live keys of vnodes `from_vnode..=last_vnode` (all owned by the target), after the
    /// digest `after` in `from_vnode`, starting with `prefix`; at most `limit` keys examined.
    Scan {
        from_vnode: u16,
        last_vnode: u16,
        after: Option<Digest>,
        prefix: Vec<u8>,
        limit: usize,
    },
    Stats,
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
    /// The op failed on the target (a corrupt record met by a scan); the message says where.
    Failed(String),
}

#[derive(Debug)]
pub enum MeshMsg {
    Request { id: u64, op: ShardOp },
    Reply { id: u64, reply: ShardReply },
}
