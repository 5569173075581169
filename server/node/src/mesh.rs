//! Messages between the shards of one node, carried by glommio's channel mesh.
//!
//! A shard that receives a request for another shard's vnode forwards it here and awaits the
//! reply on a oneshot channel. Deadlock rule (glommio's mesh can deadlock on cyclic waits): the
//! receive loop never awaits a send; it spawns a task per request, and that task may await the
//! reply's send, which always drains because every peer's receive loop keeps receiving.

use tessera_schema::msg::{BatchOp, OpResult, ScanEntry, ShardStats};

/// Work one shard asks of another.
#[derive(Debug)]
pub enum ShardOp {
    Batch(Vec<BatchOp>),
    /// Live keys of vnodes `from_vnode..=last_vnode` (all owned by the target), after `after` in
    /// `from_vnode`, starting with `prefix`, at most `limit`.
    Scan {
        from_vnode: u16,
        last_vnode: u16,
        after: Option<Vec<u8>>,
        prefix: Vec<u8>,
        limit: usize,
    },
    Stats,
}

#[derive(Debug)]
pub enum ShardReply {
    Batch(Vec<OpResult>),
    /// Entries found, and the vnode and key to resume from when the page filled up.
    Scan {
        entries: Vec<(u16, ScanEntry)>,
        complete: bool,
    },
    Stats(ShardStats),
}

#[derive(Debug)]
pub enum MeshMsg {
    Request { id: u64, op: ShardOp },
    Reply { id: u64, reply: ShardReply },
}
