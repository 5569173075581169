//! What an operator watches of a shard's replication: how far each successor is behind, and how
//! often successors had to be caught up. Read by the shell for its metrics; nothing here steers
//! replication.

use std::collections::BTreeMap;

use crate::placement::NodeId;

/// How successors were caught up, counted per successor since the shard started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUps {
    /// Resent from the retention queue (the successor reconnected, or said it was behind).
    pub from_queue: u64,
    /// The queue no longer held what it lacked: a state transfer.
    pub transfers: u64,
}

/// Counters kept by the replicator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub catch_ups: BTreeMap<NodeId, CatchUps>,
    /// Chain changes applied (a new epoch for a vnode). The chain table is fixed until the
    /// control plane can change it, so this stays 0 until then.
    pub chain_changes: u64,
}

/// How far one successor is behind this replica, over every vnode it follows this one in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuccessorLag {
    /// Writes this replica applied that the successor has not (summed over vnodes).
    pub writes: u64,
    /// The version of the oldest write the successor lacks, among those this replica still
    /// queues (versions carry the head's clock: `tessera-store` turns one into milliseconds).
    pub oldest_missing_version: Option<u64>,
    /// In some vnode the queue no longer holds the oldest write the successor lacks (it was
    /// dropped while the successor was away): that write is older than any queued one.
    pub unqueued: bool,
}

impl SuccessorLag {
    pub(crate) fn add(&mut self, other: SuccessorLag) {
        self.writes += other.writes;
        self.oldest_missing_version =
            match (self.oldest_missing_version, other.oldest_missing_version) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        self.unqueued |= other.unqueued;
    }
}
