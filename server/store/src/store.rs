//! `Store`: one shard's log-structured hash store, as a state machine with no I/O.
//!
//! Inputs: `handle_write` (a PUT or DELETE), `get`, `scan`, `poll_flush(now)` and
//! `handle_flush_done` / `handle_flush_failed` (the shell's report of a flush it performed).
//! Effects: `FlushPlan`s (create, write, sync), and the sequence numbers the shell waits on:
//! a write with sequence `s` is on disk once `durable_seq() >= s`.
//!
//! Sequence numbers: the store numbers its appends (the store sequence number, which group
//! commit and `durable_seq` count in), and every write also has a sequence number in its vnode
//! (`VnodeLog`, recorded in the record itself): the head of a vnode's chain assigns it in
//! `handle_write`, replicas apply the head's in `handle_replicated_write`.
//!
//! Visibility (`visibility.rs`): a write is visible once its vnode's visible sequence number
//! passes its own; on one node that is the vnode's durable one, in a cluster the committed one
//! (`set_committed`). `read` returns, beside the lookup, the `Barrier` a strict reader must wait
//! for (`unsettled_barrier` and `unsettled_in_vnodes` give the same for a refusal and for a
//! SCAN), so that no answer reveals a write that can still be taken back.
//!
//! Versions: every write gets `max(last_version + 1, now_ms * VERSIONS_PER_MS)`. A key's version therefore
//! only grows, across deletes and restarts too, even when an unsynced tail was lost in a crash
//! (as long as the clock does not step back by more than the lost writes' lifetime).

use crate::cache::ValueCache;
use crate::config::{FsyncPolicy, StoreConfig};
use crate::hint::{HintEntry, HintFile};
use crate::index::{digest, Applied, Digest, Entry, VnodeIndex};
use crate::log::{Chunk, FlushPlan, LogTail};
use crate::ondisk::{
    self, encode_record, Parsed, RecordHeader, RECORD_FORMAT_V3, RECORD_HEADER_BYTES,
};
use crate::visibility::{Barrier, Unsettled, Visibility, VnodeLog, FLOOR};
use tessera_schema::limits::MAX_KEY_BYTES;

/// A PUT (`value: Some`) or DELETE (`value: None`).
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    pub vnode: u16,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
    /// 0 = no expiry.
    pub ttl_ms: u64,
    /// Compare-and-set: the current version must equal this (0 = the key must not exist).
    pub if_version: Option<u64>,
    /// The caller wants an fdatasync before its acknowledgement, whatever the policy.
    pub sync: bool,
    /// The vnode's chain epoch, recorded with the write (1 on a single node).
    pub epoch: u32,
}

/// What the caller must wait for before acknowledging a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteAck {
    pub version: u64,
    /// The write's store sequence number.
    pub seq: u64,
    /// The write's sequence number in its vnode.
    pub vnode_seq: u64,
    /// The expiry the write got (unix ms, 0 = none).
    pub expiry_ms: u64,
    /// Acknowledge only once `durable_seq() >= seq`.
    pub wait_for_sync: bool,
}

/// A write made by a vnode's head, applied as it is on a replica (or by a state transfer):
/// its version, expiry and sequence number are the head's.
#[derive(Clone, Copy, Debug)]
pub struct ReplicatedWrite<'a> {
    pub vnode: u16,
    pub key: &'a [u8],
    /// `None`: a tombstone.
    pub value: Option<&'a [u8]>,
    pub version: u64,
    pub expiry_ms: u64,
    pub seq: u64,
    pub epoch: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("version mismatch: the current version is {current}")]
    VersionMismatch { current: u64 },
    #[error("key not found")]
    NotFound,
    #[error("write buffer full: the disk is behind")]
    Overloaded,
    #[error("the store stopped accepting writes after a disk failure: {0}")]
    Failed(String),
    #[error("disk full: {0} (writes are refused until space returns; reads go on)")]
    DiskFull(String),
    #[error("memory limit reached: the index holds {index_bytes} bytes of the {limit_bytes}-byte limit; new keys are refused (overwrites, deletes and reads still work)")]
    MemoryLimit { index_bytes: u64, limit_bytes: u64 },
    #[error("replicated write {seq} arrived after {applied}: writes are applied in order")]
    OutOfOrder { seq: u64, applied: u64 },
}

/// Where a GET's answer is.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    NotFound,
    /// The record is still in the in-memory tail.
    InMemory {
        value: &'a [u8],
        version: u64,
    },
    /// Read `len` bytes at `offset` of `segment`, then call [`finish_read`].
    OnDisk(DiskRead),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRead {
    pub segment: u32,
    pub offset: u64,
    pub len: usize,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record in segment {segment} at offset {offset}: {reason}")]
pub struct CorruptRecord {
    pub segment: u32,
    pub offset: u64,
    pub reason: String,
}

/// Checks a record read from disk for a [`DiskRead`] and returns its value.
pub fn finish_read(read: &DiskRead, key: &[u8], bytes: &[u8]) -> Result<Vec<u8>, CorruptRecord> {
    let corrupt = |reason: &str| CorruptRecord {
        segment: read.segment,
        offset: read.offset,
        reason: reason.to_string(),
    };
    match ondisk::parse_record(bytes) {
        Parsed::Record {
            header,
            key: found,
            value,
        } => {
            if found != key || header.version != read.version || header.tombstone {
                return Err(corrupt("record does not match the index"));
            }
            Ok(value.to_vec())
        }
        Parsed::End => Err(corrupt("zeros where the index expects a record")),
        Parsed::Corrupt(reason) => Err(corrupt(reason)),
    }
}

/// One key listed by [`Store::scan`]: the key itself when its record is in memory, or where
/// to read it (the record's header and key only) and check it with [`finish_key_read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanItem {
    pub digest: Digest,
    pub version: u64,
    pub key: ScanKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanKey {
    InMemory(Vec<u8>),
    OnDisk(DiskRead),
}

/// Checks the start of a record read for a [`ScanKey::OnDisk`] and returns its key.
pub fn finish_key_read(
    read: &DiskRead,
    expected: Digest,
    bytes: &[u8],
) -> Result<Vec<u8>, CorruptRecord> {
    let corrupt = |reason: &str| CorruptRecord {
        segment: read.segment,
        offset: read.offset,
        reason: reason.to_string(),
    };
    let (header, key) = ondisk::parse_key(bytes).map_err(corrupt)?;
    if header.version != read.version || header.tombstone || digest(key) != expected {
        return Err(corrupt("record does not match the index"));
    }
    Ok(key.to_vec())
}

/// Counters kept by the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub keys: u64,
    pub live_bytes: u64,
    pub disk_bytes: u64,
    pub segments: u32,
    pub fsyncs: u64,
    pub bytes_written: u64,
    pub cache_bytes: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Memory of the index: its tables' allocations plus the expiries kept beside them.
    pub index_bytes: u64,
    pub compactions: u64,
    pub bytes_reclaimed: u64,
    pub expired_keys: u64,
    /// Writes made durable by an fdatasync; divided by `fsyncs`, the mean group-commit size.
    pub synced_writes: u64,
}

/// Versions per millisecond of the writer's clock: a version divided by it is about when the
/// write was made (later, when a vnode takes more than this many writes in a millisecond).
pub const VERSIONS_PER_MS: u64 = 1024;

/// How long a full disk waits before the next flush attempt.
pub const DISK_FULL_RETRY_MS: u64 = 1000;

/// Memory per key with an expiry, in the `expiries` B-tree beside the index: a 16-byte digest
/// and 16 bytes of expiry and vnode, plus the B-tree's node space.
pub const EXPIRY_ENTRY_BYTES: u64 = 48;

#[derive(Debug)]
pub struct Store {
    pub(crate) config: StoreConfig,
    pub(crate) indexes: Vec<VnodeIndex>,
    pub(crate) tail: LogTail,
    pub(crate) last_version: u64,
    /// Sequence number of the newest append.
    pub(crate) seq: u64,
    pub(crate) durable_seq: u64,
    /// The newest sequence number someone waits to see synced.
    pub(crate) sync_wanted_seq: u64,
    pub(crate) last_sync_ms: u64,
    pub(crate) flush_in_progress: bool,
    pub(crate) failed: Option<String>,
    /// The disk was full at the last flush, and when to try again.
    pub(crate) disk_full: Option<(String, u64)>,
    pub(crate) stats: StoreStats,
    /// Bytes in segments before the active one.
    pub(crate) sealed_disk_bytes: u64,
    pub(crate) cache: ValueCache,
    /// Size of every sealed segment (bytes of log it holds).
    pub(crate) sealed_segments: std::collections::BTreeMap<u32, u64>,
    /// Bytes of live records per segment (active one included).
    pub(crate) segment_live: std::collections::HashMap<u32, u64, crate::fasthash::Fold>,
    pub compaction: crate::compaction::CompactionState,
    /// Bytes allocated by the vnodes' index tables.
    pub(crate) table_bytes: u64,
    /// Expiry (unix ms) and vnode of every key in the index that has one, by digest: the index
    /// keeps only a flag, and the TTL sweep walks this instead of every key.
    pub(crate) expiries: std::collections::BTreeMap<Digest, (u64, u16)>,
    /// Hint entries of the active segment, in log order.
    pub(crate) active_hint: Vec<HintEntry>,
    /// Hints of sealed segments not yet handed to the shell.
    pub(crate) sealed_hints: Vec<HintFile>,
    /// Writes applied to the index but not yet visible.
    pub(crate) unsettled: Unsettled,
    /// Sequence numbers per vnode.
    pub(crate) vnode_logs: Vec<VnodeLog>,
    /// The newest transfer mark of each vnode that has one (`marks.rs`).
    pub(crate) transfer_marks: std::collections::BTreeMap<u16, crate::marks::TransferMark>,
}

/// The hint entry of a record; `key` is needed only for a transfer mark's kind.
pub(crate) fn hint_entry(
    header: &RecordHeader,
    digest: Digest,
    offset: u64,
    key: &[u8],
) -> HintEntry {
    HintEntry {
        mark: if header.transfer_mark { key[0] } else { 0 },
        digest_hi: (digest >> 64) as u64,
        digest_lo: digest as u64,
        vnode: header.vnode,
        offset: offset as u32,
        record_len: header.record_len() as u32,
        version: header.version,
        expiry_ms: header.expiry_ms,
        tombstone: header.tombstone,
        seq: header.seq,
    }
}

impl Store {
    /// An empty store whose first segment is `first_segment`.
    pub fn new(config: StoreConfig) -> Store {
        Store::with_tail(config, Chunk::new(1), 0)
    }

    pub(crate) fn with_tail(config: StoreConfig, active: Chunk, last_version: u64) -> Store {
        config.validate().expect("invalid store config");
        let cache_bytes = match config.memory_limit_bytes {
            Some(limit) => config.cache_bytes.min(limit as usize),
            None => config.cache_bytes,
        };
        let cache = ValueCache::new(cache_bytes);
        let vnodes = config.vnodes as usize;
        let indexes: Vec<VnodeIndex> = (0..vnodes).map(|_| VnodeIndex::new()).collect();
        let table_bytes = indexes.iter().map(|i| i.allocated_bytes() as u64).sum();
        Store {
            cache,
            config,
            indexes,
            tail: LogTail {
                chunks: [active].into(),
                spare: Vec::new(),
            },
            last_version,
            seq: 0,
            durable_seq: 0,
            sync_wanted_seq: 0,
            last_sync_ms: 0,
            flush_in_progress: false,
            failed: None,
            disk_full: None,
            stats: StoreStats::default(),
            sealed_disk_bytes: 0,
            sealed_segments: Default::default(),
            segment_live: Default::default(),
            compaction: Default::default(),
            table_bytes,
            expiries: Default::default(),
            active_hint: Vec::new(),
            sealed_hints: Vec::new(),
            unsettled: Unsettled::default(),
            vnode_logs: vec![VnodeLog::default(); vnodes],
            transfer_marks: std::collections::BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The hint of a sealed segment whose bytes are all synced: the shell encodes it
    /// (`hint::encode_hint`, off the shard's thread: it takes a few hundred microseconds) and
    /// writes it to `hint::hint_file_name(segment)`. Hints are advisory; losing one costs a
    /// slower restart.
    pub fn poll_hint(&mut self) -> Option<HintFile> {
        loop {
            let ready = self
                .sealed_hints
                .iter()
                .position(|h| !self.tail.chunks.iter().any(|c| c.segment == h.segment))?;
            let hint = self.sealed_hints.remove(ready);
            if self.sealed_segments.contains_key(&hint.segment) {
                return Some(hint);
            }
            // Compacted away meanwhile: no hint needed.
        }
    }

    /// Bytes appended but not yet written; compaction waits while this is high.
    pub fn unflushed_bytes(&self) -> u64 {
        self.tail.unwritten_bytes()
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// A vnode's sequence numbers here: applied, durable, visible.
    pub fn vnode_log(&self, vnode: u16) -> VnodeLog {
        self.vnode_logs[usize::from(vnode)]
    }

    /// The replication core's word that `vnode` is committed through `seq`: with
    /// `Visibility::Committed`, writes up to it may be shown. Never lowers the watermark.
    pub fn set_committed(&mut self, vnode: u16, seq: u64) {
        debug_assert_eq!(self.config.visibility, Visibility::Committed);
        let log = &mut self.vnode_logs[usize::from(vnode)];
        if seq > log.visible_seq {
            log.visible_seq = seq;
            self.unsettled.settle(vnode, seq);
        }
    }

    /// Vnodes whose durable or visible sequence number moved since the last call: the shell
    /// wakes the readers waiting on them (and tells the replication core).
    pub fn take_log_changes(&mut self) -> Vec<u16> {
        self.unsettled.take_changes()
    }

    /// Whether `barrier` is passed.
    pub fn is_visible(&self, barrier: Barrier) -> bool {
        let log = &self.vnode_logs[usize::from(barrier.vnode)];
        match barrier.seq {
            FLOOR => log.read_floor.is_some_and(|floor| log.visible_seq >= floor),
            seq => log.visible_seq >= seq,
        }
    }

    /// The replication core's word that this replica's copy of `vnode` is whole: reads may go
    /// once the vnode's visible sequence number reaches `floor`.
    pub fn release_reads(&mut self, vnode: u16, floor: u64) {
        let log = &mut self.vnode_logs[usize::from(vnode)];
        if log.read_floor.is_none_or(|old| floor > old) {
            log.read_floor = Some(floor);
            self.unsettled.mark_changed(vnode);
        }
    }

    /// The replication core's word that this replica's copy of `vnode` is not whole (a state
    /// transfer is filling it): every read waits until `release_reads` again.
    pub fn hold_reads(&mut self, vnode: u16) {
        let log = &mut self.vnode_logs[usize::from(vnode)];
        if log.read_floor.is_some() {
            log.read_floor = None;
            self.unsettled.mark_changed(vnode);
        }
    }

    /// A reader waits for `barrier`: make sure a sync is on its way, whatever the fsync policy
    /// (on one node visibility follows durability).
    pub fn want_visible(&mut self, _barrier: Barrier) {
        if self.config.visibility == Visibility::Durable {
            self.sync_wanted_seq = self.seq;
        }
    }

    /// What an answer about `key` (a refusal that names its version or its absence) must wait
    /// for: its newest write, if that is not yet visible.
    pub fn unsettled_barrier(&self, vnode: u16, key: &[u8]) -> Option<Barrier> {
        self.barrier(vnode, digest(key))
    }

    /// The same for a listing of the keys of `vnodes` (SCAN), which reveals new and deleted
    /// keys alike: the newest unsettled write of each vnode in the range.
    pub fn unsettled_in_vnodes(&self, vnodes: std::ops::RangeInclusive<u16>) -> Vec<Barrier> {
        let mut barriers = self.unsettled.vnodes_barriers(vnodes.clone());
        barriers.extend(vnodes.filter_map(|vnode| self.floor_barrier(vnode)));
        barriers
    }

    /// The barrier every read of `vnode` waits for while the replica's copy is not whole.
    fn floor_barrier(&self, vnode: u16) -> Option<Barrier> {
        let log = &self.vnode_logs[usize::from(vnode)];
        match log.read_floor {
            None => Some(Barrier { vnode, seq: FLOOR }),
            Some(floor) if floor > log.visible_seq => Some(Barrier { vnode, seq: floor }),
            Some(_) => None,
        }
    }

    /// Writes applied but not yet visible.
    pub fn unsettled_writes(&self) -> usize {
        self.unsettled.len()
    }

    /// Store sequence numbers up to `durable_seq` are durable now: learn each vnode's durable
    /// sequence number, and on a single node make those writes visible.
    fn settle(&mut self) {
        let advanced = self
            .unsettled
            .durable_through(self.durable_seq, &mut self.vnode_logs);
        if self.config.visibility != Visibility::Durable {
            return;
        }
        for vnode in advanced {
            let log = &mut self.vnode_logs[usize::from(vnode)];
            if log.durable_seq > log.visible_seq {
                log.visible_seq = log.durable_seq;
                self.unsettled.settle(vnode, log.visible_seq);
            }
        }
    }

    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Writes made durable by a sync so far (`StoreStats::synced_writes`, without the rest).
    pub fn synced_writes(&self) -> u64 {
        self.stats.synced_writes
    }

    pub fn stats(&self) -> StoreStats {
        let mut stats = self.stats.clone();
        stats.disk_bytes = self.sealed_disk_bytes + self.tail.active_ref().end();
        // Sealed segments, plus the active one once its file exists.
        let active_exists = self.tail.active_ref().created || self.tail.active_ref().end() > 0;
        stats.segments = self.sealed_segments.len() as u32 + u32::from(active_exists);
        let cache = self.cache.stats();
        stats.cache_bytes = cache.bytes;
        stats.cache_hits = cache.hits;
        stats.cache_misses = cache.misses;
        stats.index_bytes = self.index_bytes();
        stats.compactions = self.compaction.runs;
        stats.bytes_reclaimed = self.compaction.bytes_reclaimed;
        stats.expired_keys = self.compaction.expired_keys;
        stats
    }

    /// See `VnodeIndex::set_bulk_load`.
    pub(crate) fn set_bulk_load(&mut self, bulk_load: bool) {
        for index in &mut self.indexes {
            index.set_bulk_load(bulk_load);
        }
        self.table_bytes = self
            .indexes
            .iter()
            .map(|i| i.allocated_bytes() as u64)
            .sum();
    }

    /// Sizes every vnode's table for `scale` times the keys it holds (a bulk load's estimate).
    pub(crate) fn reserve_tables(&mut self, scale: f64) {
        for index in &mut self.indexes {
            index.reserve((index.len() as f64 * scale) as usize);
        }
        self.table_bytes = self
            .indexes
            .iter()
            .map(|i| i.allocated_bytes() as u64)
            .sum();
    }

    pub(crate) fn index_bytes(&self) -> u64 {
        self.table_bytes + self.expiries.len() as u64 * EXPIRY_ENTRY_BYTES
    }

    /// The digest's entry, with its expiry filled in.
    pub(crate) fn entry(&self, vnode: u16, digest: Digest) -> Option<Entry> {
        let mut entry = self.indexes[usize::from(vnode)].get(digest)?;
        if entry.expiry_ms != 0 {
            entry.expiry_ms = self.expiries[&digest].0;
        }
        Some(entry)
    }

    fn live_entry(&self, vnode: u16, digest: Digest, now_ms: u64) -> Option<Entry> {
        self.entry(vnode, digest)
            .filter(|entry| entry.is_live(now_ms))
    }

    pub(crate) fn check_writable(&self) -> Result<(), WriteError> {
        if let Some(reason) = &self.failed {
            return Err(WriteError::Failed(reason.clone()));
        }
        if let Some((reason, _)) = &self.disk_full {
            return Err(WriteError::DiskFull(reason.clone()));
        }
        if self.tail.unwritten_bytes() > self.config.max_unflushed_bytes as u64 {
            return Err(WriteError::Overloaded);
        }
        Ok(())
    }

    /// Applies a PUT or DELETE to the index and the log tail, as the head of its vnode: checks
    /// compare-and-set, assigns the version and the vnode's next sequence number.
    pub fn handle_write(&mut self, write: Write<'_>, now_ms: u64) -> Result<WriteAck, WriteError> {
        self.check_writable()?;
        let digest = digest(write.key);
        let current = self
            .live_entry(write.vnode, digest, now_ms)
            .map_or(0, |e| e.version);
        if write.if_version.is_some_and(|expected| expected != current) {
            return Err(WriteError::VersionMismatch { current });
        }
        if write.value.is_none() && current == 0 {
            return Err(WriteError::NotFound);
        }
        if current == 0 && write.value.is_some() {
            self.admit_new_key(write.vnode, write.ttl_ms != 0, now_ms)?;
        }
        let version = self
            .last_version
            .saturating_add(1)
            .max(now_ms.saturating_mul(VERSIONS_PER_MS));
        let expiry_ms = match write.ttl_ms {
            0 => 0,
            ttl_ms => now_ms.saturating_add(ttl_ms),
        };
        let vnode_seq = self.vnode_logs[usize::from(write.vnode)].applied_seq + 1;
        let applied = ReplicatedWrite {
            vnode: write.vnode,
            key: write.key,
            value: write.value,
            version,
            expiry_ms,
            seq: vnode_seq,
            epoch: write.epoch,
        };
        self.append_write(&applied, digest, now_ms);
        let wait_for_sync = write.sync || self.config.fsync == FsyncPolicy::Always;
        if wait_for_sync {
            self.sync_wanted_seq = self.seq;
        }
        Ok(WriteAck {
            version,
            seq: self.seq,
            vnode_seq,
            expiry_ms,
            wait_for_sync,
        })
    }

    /// Applies a write made by the vnode's head, as it is: no compare-and-set, no memory limit
    /// (a replica that refused would stall its chain: the limit is enforced at the head), the
    /// head's version, expiry and sequence number. Sequence numbers must only grow; gaps are
    /// allowed (a state transfer sends only each key's newest write). Returns the store
    /// sequence number to wait for durability on.
    pub fn handle_replicated_write(
        &mut self,
        write: ReplicatedWrite<'_>,
        now_ms: u64,
    ) -> Result<u64, WriteError> {
        self.check_writable()?;
        let applied = self.vnode_logs[usize::from(write.vnode)].applied_seq;
        if write.seq <= applied {
            return Err(WriteError::OutOfOrder {
                seq: write.seq,
                applied,
            });
        }
        self.append_write(&write, digest(write.key), now_ms);
        Ok(self.seq)
    }

    /// Appends a write, points the index at it, keeps the cache and the sequence numbers.
    fn append_write(&mut self, write: &ReplicatedWrite<'_>, digest: Digest, now_ms: u64) {
        self.last_version = self.last_version.max(write.version);
        let header = RecordHeader {
            tombstone: write.value.is_none(),
            key_len: write.key.len() as u16,
            value_len: write.value.map_or(0, <[u8]>::len) as u32,
            vnode: write.vnode,
            version: write.version,
            expiry_ms: write.expiry_ms,
            seq: write.seq,
            epoch: write.epoch,
            format: RECORD_FORMAT_V3,
            digest_key: false,
            transfer_mark: false,
        };
        let (segment, offset, record_len) =
            self.append(&header, write.key, digest, write.value.unwrap_or(&[]));
        let entry = Entry {
            segment,
            offset: offset as u32,
            record_len,
            version: write.version,
            expiry_ms: write.expiry_ms,
        };
        self.apply_to_index(write.vnode, digest, header.tombstone, entry);
        match write.value {
            // Keep a cached key hot with its new value; uncached keys are cached when read.
            Some(value) if self.cache.contains(digest) => {
                self.cache
                    .insert(digest, value, write.version, write.expiry_ms, now_ms)
            }
            _ => self.cache.remove(digest),
        }
        self.seq += 1;
        let log = &mut self.vnode_logs[usize::from(write.vnode)];
        log.applied_seq = write.seq;
        log.applied_version = write.version;
        self.unsettled
            .record(self.seq, digest, write.vnode, write.seq);
    }

    /// Checks the memory limit for one more key in `vnode`, shrinking the cache to make room.
    /// The cost is exact: nothing while the vnode's table has room, the table's growth when it
    /// must grow, and an expiry entry for a key with a TTL. So a refused key may still fit in
    /// another vnode, and deleting a key makes room in its own vnode.
    fn admit_new_key(&mut self, vnode: u16, has_ttl: bool, now_ms: u64) -> Result<(), WriteError> {
        let Some(limit_bytes) = self.config.memory_limit_bytes else {
            return Ok(());
        };
        let index_bytes = self.index_bytes();
        let growth = self.indexes[usize::from(vnode)].insert_growth_bytes() as u64;
        let needed = index_bytes + growth + if has_ttl { EXPIRY_ENTRY_BYTES } else { 0 };
        if needed > limit_bytes {
            return Err(WriteError::MemoryLimit {
                index_bytes,
                limit_bytes,
            });
        }
        let cache_room = (limit_bytes - needed) as usize;
        if self.cache.capacity() > cache_room {
            self.cache.set_capacity(cache_room, now_ms);
        }
        Ok(())
    }

    /// Appends a record in the current format (a format 1 record that compaction copies is
    /// rewritten as format 2, its seq and epoch 0): returns its segment, offset and length.
    pub(crate) fn append(
        &mut self,
        header: &RecordHeader,
        key: &[u8],
        digest: Digest,
        value: &[u8],
    ) -> (u32, u64, u32) {
        let header = &RecordHeader {
            format: RECORD_FORMAT_V3,
            ..*header
        };
        let len = header.record_len() as u64;
        if self.tail.active().end() + len > self.config.segment_size_bytes {
            let old = self.tail.active_ref();
            let (old_segment, old_end) = (old.segment, old.end());
            self.sealed_disk_bytes += old_end;
            self.sealed_segments.insert(old_segment, old_end);
            let entries = std::mem::take(&mut self.active_hint);
            self.sealed_hints.push(HintFile {
                segment: old_segment,
                end_offset: old_end,
                entries,
            });
            let next = old_segment + 1;
            self.tail.roll(next);
        }
        let active = self.tail.active();
        let offset = active.end();
        encode_record(&mut active.bytes, header, key, value);
        let segment = active.segment;
        self.active_hint
            .push(hint_entry(header, digest, offset, key));
        (segment, offset, len as u32)
    }

    /// Points the digest at `entry` (or drops it, for a tombstone) and keeps the counters.
    pub(crate) fn apply_to_index(
        &mut self,
        vnode: u16,
        digest: Digest,
        tombstone: bool,
        entry: Entry,
    ) {
        let index = &mut self.indexes[usize::from(vnode)];
        let bytes_before = index.allocated_bytes() as u64;
        // An older record never replaces a newer one. In service versions only grow, so this
        // matters at recovery, where compaction's copies can put a key's records out of order.
        let Applied::Replaced(old) = index.apply(digest, tombstone, &entry) else {
            return;
        };
        self.table_bytes = self.table_bytes + index.allocated_bytes() as u64 - bytes_before;
        if let Some(old) = old {
            self.stats.live_bytes -= u64::from(old.record_len);
            self.stats.keys -= 1;
            if old.expiry_ms != 0 {
                self.expiries.remove(&digest);
            }
            self.charge_segment(old.segment, -i64::from(old.record_len));
        }
        if !tombstone {
            self.stats.live_bytes += u64::from(entry.record_len);
            self.stats.keys += 1;
            if entry.expiry_ms != 0 {
                self.expiries.insert(digest, (entry.expiry_ms, vnode));
            }
            self.charge_segment(entry.segment, i64::from(entry.record_len));
        }
    }

    fn charge_segment(&mut self, segment: u32, delta_bytes: i64) {
        let live = self.segment_live.entry(segment).or_default();
        *live = live
            .checked_add_signed(delta_bytes)
            .expect("segment live bytes stay positive");
    }

    /// Finds a key's value. A reader that must not reveal unsettled writes uses [`Store::read`].
    pub fn get(&self, vnode: u16, key: &[u8], now_ms: u64) -> Lookup<'_> {
        self.read(vnode, key, now_ms).0
    }

    /// Finds a key's value, and the sequence number that must be visible before the answer
    /// leaves (`None`: answer now). The answer is the state as of this call: the caller waits,
    /// then sends it, whatever was written meanwhile.
    pub fn read(&self, vnode: u16, key: &[u8], now_ms: u64) -> (Lookup<'_>, Option<Barrier>) {
        let digest = digest(key);
        (
            self.lookup(vnode, key, digest, now_ms),
            self.barrier(vnode, digest),
        )
    }

    /// The key's newest unsettled write, or, while the replica's copy is not whole, the
    /// vnode's floor (`VnodeLog::read_floor`).
    fn barrier(&self, vnode: u16, digest: Digest) -> Option<Barrier> {
        self.floor_barrier(vnode)
            .max(self.unsettled.barrier(digest))
    }

    fn lookup(&self, vnode: u16, key: &[u8], digest: Digest, now_ms: u64) -> Lookup<'_> {
        let Some(entry) = self.live_entry(vnode, digest, now_ms) else {
            return Lookup::NotFound;
        };
        let (offset, len) = (u64::from(entry.offset), entry.record_len as usize);
        if let Some(record) = self.tail.record_bytes(entry.segment, offset, len) {
            let value_start = ondisk::header_len(record[4]) + key.len();
            return Lookup::InMemory {
                value: &record[value_start..],
                version: entry.version,
            };
        }
        match self.cache.get(digest, entry.version, now_ms) {
            Some(value) => Lookup::InMemory {
                value,
                version: entry.version,
            },
            None => Lookup::OnDisk(DiskRead {
                segment: entry.segment,
                offset,
                len,
                version: entry.version,
            }),
        }
    }

    /// A disk read finished: cache the value if the key still has the version that was read.
    pub fn handle_read_done(
        &mut self,
        vnode: u16,
        key: &[u8],
        read: &DiskRead,
        value: &[u8],
        now_ms: u64,
    ) {
        let digest = digest(key);
        let Some(entry) = self.live_entry(vnode, digest, now_ms) else {
            return;
        };
        if entry.version == read.version {
            self.cache
                .insert(digest, value, read.version, entry.expiry_ms, now_ms);
        }
    }

    /// Up to `limit` live keys of `vnode` in digest order, after the digest `after`. Keys whose
    /// records are on disk come as reads of their record's start: the index keeps no keys.
    pub fn scan(
        &self,
        vnode: u16,
        after: Option<Digest>,
        limit: usize,
        now_ms: u64,
    ) -> Vec<ScanItem> {
        self.indexes[usize::from(vnode)]
            .iter_after(after)
            .filter_map(|(digest, _)| self.live_entry(vnode, digest, now_ms).map(|e| (digest, e)))
            .take(limit)
            .map(|(digest, entry)| ScanItem {
                digest,
                version: entry.version,
                key: self.scan_key(&entry),
            })
            .collect()
    }

    fn scan_key(&self, entry: &Entry) -> ScanKey {
        let offset = u64::from(entry.offset);
        let record_len = entry.record_len as usize;
        if let Some(record) = self.tail.record_bytes(entry.segment, offset, record_len) {
            if let Ok((_, key)) = ondisk::parse_key(record) {
                return ScanKey::InMemory(key.to_vec());
            }
        }
        ScanKey::OnDisk(DiskRead {
            segment: entry.segment,
            offset,
            len: record_len.min(RECORD_HEADER_BYTES + MAX_KEY_BYTES),
            version: entry.version,
        })
    }

    /// The next flush to perform, if one is due at `now_ms`. One flush runs at a time.
    pub fn poll_flush(&mut self, now_ms: u64) -> Option<FlushPlan> {
        if self.flush_in_progress || self.failed.is_some() {
            return None;
        }
        if self
            .disk_full
            .as_ref()
            .is_some_and(|(_, retry_at_ms)| now_ms < *retry_at_ms)
        {
            return None;
        }
        let sync = self.sync_due(now_ms);
        let write_due = self.tail.unwritten_bytes() >= self.config.flush_threshold_bytes as u64
            || self.tail.has_sealed();
        if !sync && !write_due {
            return None;
        }
        let (steps, ends) = self.tail.plan(sync);
        if steps.is_empty() {
            if sync {
                // Everything appended is already synced (the chunks that held it are gone).
                self.durable_seq = self.seq;
                self.settle();
            }
            return None;
        }
        self.flush_in_progress = true;
        Some(FlushPlan {
            steps,
            seq_covered: self.seq,
            sync,
            ends,
        })
    }

    fn sync_due(&self, now_ms: u64) -> bool {
        if self.seq == self.durable_seq {
            return false;
        }
        if self.sync_wanted_seq > self.durable_seq {
            return true;
        }
        match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval {
                interval_ms,
                max_writes,
            } => {
                now_ms >= self.last_sync_ms.saturating_add(interval_ms)
                    || self.seq - self.durable_seq >= max_writes
            }
        }
    }

    /// When the shell should call `poll_flush` next if nothing else happens: `None` when nothing
    /// is waiting to be written or synced.
    pub fn next_flush_deadline_ms(&self) -> Option<u64> {
        // After a disk failure nothing will be flushed again: no deadline, so the shell sleeps.
        if self.failed.is_some() || (self.seq == self.durable_seq && !self.tail.needs_write()) {
            return None;
        }
        if let Some((_, retry_at_ms)) = self.disk_full {
            return Some(retry_at_ms);
        }
        match self.config.fsync {
            FsyncPolicy::Always => Some(0),
            _ if self.sync_wanted_seq > self.durable_seq => Some(0),
            FsyncPolicy::Interval { interval_ms, .. } => {
                Some(self.last_sync_ms.saturating_add(interval_ms))
            }
        }
    }

    /// Copies the bytes of a planned `Write` step into `out` (of the step's length).
    pub fn copy_flush_bytes(&self, segment: u32, offset: u64, out: &mut [u8]) {
        self.tail.copy_bytes(segment, offset, out);
    }

    /// The shell performed every step of `plan`.
    pub fn handle_flush_done(&mut self, plan: &FlushPlan, now_ms: u64) {
        self.disk_full = None;
        use crate::log::FlushStep;
        self.tail.complete(plan);
        for step in &plan.steps {
            match step {
                FlushStep::Write { len, .. } => self.stats.bytes_written += len,
                FlushStep::Sync { .. } => self.stats.fsyncs += 1,
                FlushStep::CreateSegment { .. } => {}
            }
        }
        if plan.sync {
            self.stats.synced_writes += plan.seq_covered.saturating_sub(self.durable_seq);
            self.durable_seq = self.durable_seq.max(plan.seq_covered);
            self.last_sync_ms = now_ms;
            self.settle();
        }
        self.flush_in_progress = false;
    }

    /// The disk was full during `plan` (ENOSPC; in practice while preallocating a new segment).
    /// Writes are refused with `WriteError::DiskFull` and the flush is retried after
    /// `DISK_FULL_RETRY_MS`; whatever was appended is kept and written once space returns
    /// (compaction or an operator freed some). Steps already done are redone: rewriting the
    /// same bytes is harmless.
    pub fn handle_disk_full(&mut self, _plan: &FlushPlan, reason: String, now_ms: u64) {
        self.flush_in_progress = false;
        self.disk_full = Some((reason, now_ms + DISK_FULL_RETRY_MS));
    }

    pub fn disk_full(&self) -> bool {
        self.disk_full.is_some()
    }

    pub fn disk_full_reason(&self) -> Option<&str> {
        self.disk_full.as_ref().map(|(reason, _)| reason.as_str())
    }

    /// A step of `plan` failed. The store stops accepting writes: after a failed fdatasync the
    /// state of the file is unknown, and pretending otherwise could acknowledge lost data.
    pub fn handle_flush_failed(&mut self, _plan: &FlushPlan, reason: String) {
        self.flush_in_progress = false;
        self.failed = Some(reason);
    }
}

impl Store {
    /// Asks for everything appended so far to be synced; returns the sequence number to wait for.
    pub fn request_sync(&mut self) -> u64 {
        self.sync_wanted_seq = self.seq;
        self.seq
    }
}
