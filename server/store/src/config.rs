//! Store settings. Defaults follow the brief (fsync every 100 ms or 1 000 writes).

use crate::ondisk::{BLOCK_BYTES, MAX_RECORD_BYTES};

/// When the log is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every write is acknowledged only after an fdatasync that covers it; concurrent writes
    /// share one fdatasync (group commit).
    Always,
    /// fdatasync every `interval_ms` or every `max_writes` writes, whichever comes first;
    /// writes are acknowledged on append unless they ask for durability themselves.
    Interval { interval_ms: u64, max_writes: u64 },
}

impl FsyncPolicy {
    pub const DEFAULT_INTERVAL: FsyncPolicy = FsyncPolicy::Interval {
        interval_ms: 100,
        max_writes: 1000,
    };
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Size of each segment file. A multiple of BLOCK_BYTES, at least twice the largest record,
    /// at most 4 GiB (index entries hold 32-bit offsets).
    pub segment_size_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Bytes appended but not yet written that the store will hold; past it writes are refused
    /// with Overloaded until the disk catches up. Bounds memory when the disk is slower than
    /// the network.
    pub max_unflushed_bytes: usize,
    /// Unwritten bytes that trigger a write (without fdatasync) even when no sync is due, so that
    /// the in-memory tail stays small under `--fsync interval`.
    pub flush_threshold_bytes: usize,
    /// Bytes of hot values kept in memory (see `cache.rs`); 0 disables the cache.
    pub cache_bytes: usize,
    /// Compaction keeps the log within this factor of the live data (see `compaction.rs`).
    pub space_factor: f64,
    /// Bound on index plus cache memory. The cache shrinks as the index grows; once the index
    /// alone would pass the bound, writes of new keys are refused (`WriteError::MemoryLimit`).
    pub memory_limit_bytes: Option<u64>,
    /// The cluster's vnode count: every record's vnode is below it (fixed per data directory).
    pub vnodes: u32,
    /// What makes a write visible to readers (`visibility.rs`).
    pub visibility: crate::visibility::Visibility,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            segment_size_bytes: 64 * 1024 * 1024,
            fsync: FsyncPolicy::DEFAULT_INTERVAL,
            max_unflushed_bytes: 64 * 1024 * 1024,
            flush_threshold_bytes: 256 * 1024,
            cache_bytes: 256 * 1024 * 1024,
            space_factor: 2.0,
            memory_limit_bytes: None,
            vnodes: tessera_schema::placement::DEFAULT_VNODES,
            visibility: crate::visibility::Visibility::Durable,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), String> {
        let size = self.segment_size_bytes;
        if !size.is_multiple_of(BLOCK_BYTES) {
            return Err(format!(
                "segment size {size} is not a multiple of {BLOCK_BYTES}"
            ));
        }
        if size < 2 * MAX_RECORD_BYTES as u64 || size > u64::from(u32::MAX) {
            return Err(format!(
                "segment size {size} must be between {} and {} bytes",
                2 * MAX_RECORD_BYTES,
                u32::MAX
            ));
        }
        if self.space_factor.is_nan() || self.space_factor < 1.2 {
            return Err(format!(
                "space factor {} must be at least 1.2",
                self.space_factor
            ));
        }
        let max_vnodes = tessera_schema::placement::MAX_VNODES;
        if self.vnodes == 0 || self.vnodes > max_vnodes {
            return Err(format!(
                "vnode count {} must be between 1 and {max_vnodes}",
                self.vnodes
            ));
        }
        if self.max_unflushed_bytes < 2 * MAX_RECORD_BYTES {
            return Err("max_unflushed_bytes must hold at least two of the largest records".into());
        }
        Ok(())
    }
}
