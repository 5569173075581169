//! What a vnode's replication carries of the store: a write as its head made it, where a copy
//! stands, and the parts of a state transfer. The store defines them because it makes and
//! applies them (`transfer.rs`, `replica.rs`); the replication core (`tessera-core`) moves them
//! between replicas and re-exports them.

/// One write of a vnode, as the head made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub version: u64,
    /// Unix milliseconds, 0 = never.
    pub expiry_ms: u64,
    pub key: Vec<u8>,
    /// `None`: a delete (tombstone).
    pub value: Option<Vec<u8>>,
}

impl Entry {
    /// Bytes the entry holds in a queue.
    pub fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len) + 40
    }
}

/// Where a replica's copy of a vnode stands: its newest write and that write's version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub version: u64,
}

/// The sender's live key digests in `(after, upto]` (`after: None`: from the first digest),
/// as it held them when it read them: the receiver drops each key of that range it holds that
/// is not listed (a delete whose tombstone is gone, or that was never sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepRange {
    pub after: Option<u128>,
    pub upto: u128,
    pub digests: Vec<u128>,
}

/// One part of the answer to `Effect::ReadState`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatePart {
    /// Live keys' newest writes, in version order, continuing the parts before.
    pub entries: Vec<Entry>,
    /// The values were sent through this position (on parts with `keep`).
    pub through: Position,
    /// A range of the live key digests (after every part with entries).
    pub keep: Option<KeepRange>,
    /// The last part: the sender's applied sequence number when it read its last keep part.
    pub last: Option<u64>,
}
