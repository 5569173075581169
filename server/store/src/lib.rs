//! tessera-store: one shard's log-structured hash store, sans-IO.
//!
//! The store decides and the shell (tessera-server, on glommio) does: the store never opens a
//! file, reads a clock or sleeps. It takes inputs (writes, reads, `now_ms`, the outcome of disk
//! operations) and hands out plans of disk operations (`FlushPlan`, `DiskRead`,
//! `RecoveryAction`). That is what lets `testing::MemDisk` run the very same code on an
//! in-memory disk that loses unsynced writes and tears them, deterministically.
//!
//! - [`ondisk`]: the record and segment format (the one file that owns it).
//! - [`store`]: the state machine: index, versions, compare-and-set, TTL, group commit.
//! - [`log`]: the in-memory log tail and flush plans.
//! - `marks`: what a replica remembers across a restart of a transfer it was receiving.
//! - [`recovery`]: rebuild from segments, torn-tail truncation, corruption refusal.
//! - [`replica`]: the store as chain replication sees it (what tessera-core's `VnodeStore`
//!   forwards to) and the snapshots a state transfer sends.
//! - [`replicated`]: the writes, positions and transfer parts replication carries.
//! - [`testing`]: the fault-injecting in-memory disk.
//! - [`visibility`]: which writes an answer may reveal (visible once durable through seq S).

pub mod cache;
pub mod compaction;
pub mod config;
pub(crate) mod fasthash;
pub mod hint;
pub mod index;
pub mod log;
pub(crate) mod marks;
pub mod ondisk;
pub mod recovery;
pub mod replica;
pub mod replicated;
pub mod store;
pub mod testing;
pub mod transfer;
pub mod visibility;

#[cfg(test)]
mod transfer_tests;

pub use config::{FsyncPolicy, StoreConfig};
pub use index::{digest, Digest};
pub use log::{FlushPlan, FlushStep};
pub use recovery::{CorruptSegment, Recovery, RecoveryAction, SegmentReport};
pub use replica::{finish_state_read, StateItem, VnodeCheck};
pub use store::{
    finish_key_read, finish_read, DiskRead, Lookup, ReplicatedWrite, ScanItem, ScanKey, Store,
    StoreStats, Write, WriteAck, WriteError, VERSIONS_PER_MS,
};
pub use transfer::{Next as TransferNext, TransferLimits, TransferSource};
pub use visibility::{Barrier, Visibility, VnodeLog};
