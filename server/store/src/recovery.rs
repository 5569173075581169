//! Rebuilding a store from its segments after a restart or a crash.
//!
//! The shell reads each segment file whole, oldest first, and hands the bytes to
//! [`Recovery::add_segment`]; [`Recovery::finish`] returns the store and the repairs the shell
//! must make to the files before serving (truncating a torn tail, so that stale bytes past the
//! new end can never be mistaken for records).
//!
//! Rules: records are applied in log order (versions grow along the log). In the newest segment a
//! record that fails its checks, or non-zero bytes after the end of the log, are a torn tail and
//! are cut off. In any older segment they are corruption: sealed segments were synced whole
//! before the next one was written, so damage there is not a crash artefact. Recovery refuses
//! to open such a store, naming file and offset, unless `repair` is set, in which case the
//! segment is cut at the damage and the loss is reported.

use crate::config::StoreConfig;
use crate::hint::{HintEntry, HintFile};
use crate::index::{Digest, Entry};
use crate::log::Chunk;
use crate::ondisk::{self, align_down, Parsed, RecordHeader};

/// Records parsed ahead of being applied to the index, their slots prefetched meanwhile: the
/// index is far larger than the CPU cache, and one miss at a time left replay memory-bound.
const PREFETCH_RECORDS: usize = 64;
use crate::store::Store;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: corruption at offset {offset}: {reason} (restart with --repair to cut the segment there, losing what follows)")]
pub struct CorruptSegment {
    pub segment: u32,
    pub file: String,
    pub offset: u64,
    pub reason: String,
}

/// A change the shell must make to the files before the store serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryAction {
    /// Cut the segment to `len_bytes`, preallocate it again (zeros past the cut), and sync it.
    Truncate { segment: u32, len_bytes: u64 },
    /// fdatasync the newest segment. After a process crash (not a power failure) it may hold
    /// bytes that were written but never synced, still in the page cache: recovery serves them,
    /// so they must be durable first, or a power failure later could take back what was read.
    Sync { segment: u32 },
}

/// What recovery found in one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentReport {
    pub records: u64,
    pub end_offset: u64,
    /// Bytes past the end of the log that were cut (torn tail or repaired corruption).
    pub cut_bytes: u64,
    pub cut_reason: Option<String>,
}

pub struct Recovery {
    store: Store,
    repair: bool,
    last_segment: Option<u32>,
    actions: Vec<RecoveryAction>,
    /// Bytes of segments the shell will hand over, if it said (`expect_log_bytes`).
    expected_log_bytes: Option<u64>,
    /// Bytes of log replayed so far.
    replayed_log_bytes: u64,
    reserved: bool,
}

impl Recovery {
    pub fn new(config: StoreConfig, repair: bool) -> Recovery {
        let mut store = Store::new(config);
        store.set_bulk_load(true);
        Recovery {
            store,
            repair,
            last_segment: None,
            actions: Vec::new(),
            expected_log_bytes: None,
            replayed_log_bytes: 0,
            reserved: false,
        }
    }

    /// Tells recovery how many bytes of segments (file sizes will do) are coming. After the
    /// first segment it then sizes each vnode's table for its share of the whole log at once,
    /// instead of growing it a dozen times (growth cost 40 % of a 10 M-key replay). Compaction
    /// keeps the log within `space_factor` of live data, so the estimate overshoots by about
    /// that much at most; `finish` trims what the keys did not fill, and a memory limit caps
    /// the reservation.
    pub fn expect_log_bytes(&mut self, bytes: u64) {
        self.expected_log_bytes = Some(bytes);
    }

    /// Reserves the tables once, scaled from what the first sealed segment held. The newest
    /// segment is never the basis: it is partly empty, and scaling a few records to a whole
    /// file would reserve far more than the keys need.
    fn reserve_tables(&mut self, segment_log_bytes: u64, sealed: bool) {
        self.replayed_log_bytes += segment_log_bytes;
        let Some(expected) = self.expected_log_bytes else {
            return;
        };
        if self.reserved || !sealed || self.replayed_log_bytes == 0 {
            return;
        }
        self.reserved = true;
        let mut scale = expected as f64 / self.replayed_log_bytes as f64;
        if let Some(limit) = self.store.config.memory_limit_bytes {
            let projected = self.store.index_bytes() as f64 * scale;
            scale = scale.min(scale * limit as f64 / projected.max(1.0));
        }
        if scale > 1.0 {
            self.store.reserve_tables(scale);
        }
    }

    /// Replays one segment. Segments must come in increasing id order; `is_newest` marks the last.
    pub fn add_segment(
        &mut self,
        segment: u32,
        bytes: &[u8],
        is_newest: bool,
    ) -> Result<SegmentReport, CorruptSegment> {
        assert!(
            self.last_segment.is_none_or(|last| last < segment),
            "segments out of order"
        );
        self.last_segment = Some(segment);
        let mut report = SegmentReport::default();
        let mut offset = 0usize;
        let mut hint = Vec::new();
        let mut batch = Vec::with_capacity(PREFETCH_RECORDS);
        let vnodes = self.store.indexes.len();
        let damage = loop {
            match ondisk::parse_record(&bytes[offset..]) {
                Parsed::Record { header, .. } if usize::from(header.vnode) >= vnodes => {
                    break Some("record of a vnode past the data directory's vnode count")
                }
                Parsed::Record { header, key, .. } if header.transfer_mark => {
                    // Marks keep their place among the records (see `marks.rs`).
                    self.apply_batch(segment, &mut batch, &mut hint);
                    self.apply_mark(&header, key[0], segment, offset as u64);
                    hint.push(crate::store::hint_entry(&header, 0, offset as u64, key));
                    report.records += 1;
                    offset += header.record_len();
                }
                Parsed::Record {
                    header,
                    key,
                    value: _,
                } => {
                    let digest = ondisk::record_digest(&header, key);
                    self.store.indexes[usize::from(header.vnode)].prefetch(digest);
                    batch.push((header, digest, offset));
                    if batch.len() == PREFETCH_RECORDS {
                        self.apply_batch(segment, &mut batch, &mut hint);
                    }
                    report.records += 1;
                    offset += header.record_len();
                }
                Parsed::End => match bytes[offset..].iter().position(|&b| b != 0) {
                    None => break None,
                    Some(_) => break Some("non-zero bytes after the end of the log"),
                },
                Parsed::Corrupt(reason) => break Some(reason),
            }
        };
        self.apply_batch(segment, &mut batch, &mut hint);
        report.end_offset = offset as u64;
        self.reserve_tables(offset as u64, !is_newest);
        if let Some(reason) = damage {
            if !is_newest && !self.repair {
                return Err(CorruptSegment {
                    segment,
                    file: ondisk::segment_file_name(segment),
                    offset: offset as u64,
                    reason: reason.to_string(),
                });
            }
            report.cut_bytes = (bytes.len() - offset) as u64;
            report.cut_reason = Some(reason.to_string());
            self.actions.push(RecoveryAction::Truncate {
                segment,
                len_bytes: offset as u64,
            });
        } else if is_newest {
            self.actions.push(RecoveryAction::Sync { segment });
        }
        if is_newest {
            self.store.tail.chunks = [resume_chunk(segment, &bytes[..offset])].into();
            self.store.active_hint = hint;
        } else {
            self.store.sealed_disk_bytes += offset as u64;
            self.store.sealed_segments.insert(segment, offset as u64);
            // This segment had no usable hint: hand one to the shell for next time.
            let end_offset = offset as u64;
            self.store.sealed_hints.push(HintFile {
                segment,
                end_offset,
                entries: hint,
            });
        }
        Ok(report)
    }

    /// Applies parsed records of `segment` to the index, in log order, and lists them in the
    /// segment's hint.
    fn apply_batch(
        &mut self,
        segment: u32,
        batch: &mut Vec<(RecordHeader, Digest, usize)>,
        hint: &mut Vec<HintEntry>,
    ) {
        for (header, digest, offset) in batch.drain(..) {
            let entry = Entry {
                segment,
                offset: offset as u32,
                record_len: header.record_len() as u32,
                version: header.version,
                expiry_ms: header.expiry_ms,
            };
            // Compaction copies live records forward, so a key's copies are not always in
            // version order along the log: apply_to_index never lets an older copy replace a
            // newer one.
            self.store
                .apply_to_index(header.vnode, digest, header.tombstone, entry);
            self.store.last_version = self.store.last_version.max(header.version);
            self.note_seq(header.vnode, header.seq, header.version);
            hint.push(crate::store::hint_entry(
                &header,
                digest,
                offset as u64,
                &[],
            ));
        }
    }

    /// A transfer mark: the newest of its vnode so far; a `done` mark carries the position
    /// the transfer brought the vnode to.
    fn apply_mark(&mut self, header: &RecordHeader, kind: u8, segment: u32, offset: u64) {
        self.store.note_mark(header, kind, segment, offset);
        if kind == ondisk::MARK_TRANSFER_DONE {
            self.note_seq(header.vnode, header.seq, header.version);
        }
        self.store.last_version = self.store.last_version.max(header.version);
    }

    /// A record with sequence number `seq` in `vnode`: the vnode's log goes at least that far.
    fn note_seq(&mut self, vnode: u16, seq: u64, version: u64) {
        let log = &mut self.store.vnode_logs[usize::from(vnode)];
        if seq > log.applied_seq {
            log.applied_seq = seq;
            log.applied_version = version;
        }
    }

    /// Replays a sealed segment from its hint instead of its bytes. The hint must come from
    /// `hint::decode_hint` (checksum and structure verified) and name this segment; a hint that
    /// names a vnode past the store's vnode count is refused (`Err`), and the caller scans the
    /// segment instead.
    pub fn add_segment_hint(&mut self, hint: HintFile) -> Result<SegmentReport, HintFile> {
        let vnodes = self.store.indexes.len();
        if hint.entries.iter().any(|e| usize::from(e.vnode) >= vnodes) {
            return Err(hint);
        }
        assert!(
            self.last_segment.is_none_or(|last| last < hint.segment),
            "segments out of order"
        );
        self.last_segment = Some(hint.segment);
        let mut report = SegmentReport::default();
        for (at, entry) in hint.entries.iter().enumerate() {
            if let Some(ahead) = hint.entries.get(at + PREFETCH_RECORDS) {
                self.store.indexes[usize::from(ahead.vnode)].prefetch(ahead.digest());
            }
            if entry.mark != 0 {
                let header = RecordHeader::transfer_mark(entry.vnode, entry.seq, entry.version);
                let offset = u64::from(entry.offset);
                self.apply_mark(&header, entry.mark, hint.segment, offset);
                report.records += 1;
                continue;
            }
            let index_entry = Entry {
                segment: hint.segment,
                offset: entry.offset,
                record_len: entry.record_len,
                version: entry.version,
                expiry_ms: entry.expiry_ms,
            };
            self.store
                .apply_to_index(entry.vnode, entry.digest(), entry.tombstone, index_entry);
            self.store.last_version = self.store.last_version.max(entry.version);
            self.note_seq(entry.vnode, entry.seq, entry.version);
            report.records += 1;
        }
        report.end_offset = hint.end_offset;
        self.reserve_tables(hint.end_offset, true);
        self.store.sealed_disk_bytes += hint.end_offset;
        self.store
            .sealed_segments
            .insert(hint.segment, hint.end_offset);
        Ok(report)
    }

    /// The recovered store, and the repairs to make before it serves.
    /// Everything recovered is durable (the shell syncs the newest segment first, see
    /// `RecoveryAction::Sync`). On a single node it is visible too; in a cluster reads of every
    /// vnode wait until the replication core releases them (`VnodeLog::read_floor`).
    pub fn finish(self, now_ms: u64) -> (Store, Vec<RecoveryAction>) {
        let mut store = self.store;
        store.set_bulk_load(false);
        store.last_sync_ms = now_ms;
        let durable_visible = store.config.visibility == crate::visibility::Visibility::Durable;
        for log in &mut store.vnode_logs {
            log.durable_seq = log.applied_seq;
            if durable_visible {
                log.visible_seq = log.applied_seq;
            } else {
                log.read_floor = None;
            }
        }
        (store, self.actions)
    }
}

/// The active chunk of a store that resumes appending at the end of `log` (the valid bytes of
/// the newest segment): it holds the last partial block, which the next flush rewrites.
fn resume_chunk(segment: u32, log: &[u8]) -> Chunk {
    let end = log.len() as u64;
    let base = align_down(end);
    let mut chunk = Chunk::new(segment);
    chunk.base = base;
    chunk.bytes = log[base as usize..].to_vec();
    chunk.written_end = end;
    chunk.synced_end = end;
    chunk.created = true;
    chunk
}
