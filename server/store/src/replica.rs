//! The store as chain replication sees it (tessera-core's `VnodeStore` forwards to these), and
//! the snapshot a state transfer sends.
//!
//! A state transfer (`transfer.rs` reads it) sends each key's newest write of a vnode newer
//! than the receiver's position: writes already in the log tail come with it, the others are
//! read back from disk by the shell (`finish_state_read`). The receiver applies them in
//! version order and then drops every key the sender does not hold, range by range
//! (`drop_absent`): it writes a tombstone per dropped key, naming the key by its digest, since
//! the index keeps no keys and reading each one back would be I/O (`ondisk::FLAG_DIGEST_KEY`).

use std::collections::HashSet;

use crate::replicated::{Entry, KeepRange, Position};

use crate::index::{Digest, Entry as IndexEntry};
use crate::ondisk::{self, Parsed, RecordHeader};
use crate::store::{CorruptRecord, DiskRead, ReplicatedWrite, Store, WriteError};

/// One key of a state snapshot: its write, or where to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateItem {
    Ready(Entry),
    /// Read the record, then `finish_state_read`.
    OnDisk {
        digest: Digest,
        read: DiskRead,
    },
}

/// One replica of a vnode, as `tessera verify` compares them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnodeCheck {
    pub applied: u64,
    pub keys: u64,
    pub digest: u64,
}

impl Store {
    pub(crate) fn state_item(&self, digest: Digest, entry: &IndexEntry) -> StateItem {
        let (offset, len) = (u64::from(entry.offset), entry.record_len as usize);
        let in_tail = self
            .tail
            .record_bytes(entry.segment, offset, len)
            .and_then(|bytes| entry_of_record(bytes, entry.version, digest).ok());
        match in_tail {
            Some(entry) => StateItem::Ready(entry),
            None => StateItem::OnDisk {
                digest,
                read: DiskRead {
                    segment: entry.segment,
                    offset,
                    len,
                    version: entry.version,
                },
            },
        }
    }

    /// Where `digest`'s newest write in `vnode` is now, if its version is still `version` (a
    /// state transfer reading late looks again: compaction may have moved the record).
    pub fn locate(&self, vnode: u16, digest: Digest, version: u64) -> Option<StateItem> {
        let entry = self.entry(vnode, digest)?;
        (entry.version == version).then(|| self.state_item(digest, &entry))
    }

    /// What `tessera verify` compares between replicas: the vnode's applied sequence number,
    /// its live keys, and an order-independent digest of their (key digest, version, expiry).
    /// A walk of the vnode's index: no disk reads; values are covered by the records' CRCs,
    /// not by this digest.
    pub fn vnode_check(&self, vnode: u16, now_ms: u64) -> VnodeCheck {
        let mut check = VnodeCheck {
            applied: self.vnode_log(vnode).applied_seq,
            ..VnodeCheck::default()
        };
        for (digest, _) in self.indexes[usize::from(vnode)].iter_after(None) {
            let Some(entry) = self.entry(vnode, digest).filter(|e| e.is_live(now_ms)) else {
                continue;
            };
            let mut bytes = [0u8; 32];
            bytes[..16].copy_from_slice(&digest.to_le_bytes());
            bytes[16..24].copy_from_slice(&entry.version.to_le_bytes());
            bytes[24..].copy_from_slice(&entry.expiry_ms.to_le_bytes());
            check.keys += 1;
            check.digest = check
                .digest
                .wrapping_add(xxhash_rust::xxh3::xxh3_64(&bytes));
        }
        check
    }

    /// Raises the vnode's position to `through` (a state transfer brought it there).
    fn raise_position(&mut self, vnode: u16, through: Position) {
        let log = &mut self.vnode_logs[usize::from(vnode)];
        if through.seq > log.applied_seq {
            log.applied_seq = through.seq;
            log.applied_version = through.version;
        }
        self.last_version = self.last_version.max(through.version);
    }

    /// Writes a tombstone of `digest` that names it by digest (see the module header).
    fn drop_by_digest(
        &mut self,
        vnode: u16,
        digest: Digest,
        entry: IndexEntry,
        seq: u64,
        epoch: u32,
    ) {
        let key = digest.to_le_bytes();
        let header = RecordHeader::tombstone(vnode, key.len(), entry.version, (seq, epoch), true);
        self.append(&header, &key, digest, &[]);
        self.apply_to_index(vnode, digest, true, entry);
        self.cache.remove(digest);
        self.seq += 1;
        self.unsettled.record(self.seq, digest, vnode, seq);
    }
}

/// The write a record holds, checked against the index's version and digest.
fn entry_of_record(bytes: &[u8], version: u64, digest: Digest) -> Result<Entry, &'static str> {
    let Parsed::Record { header, key, value } = ondisk::parse_record(bytes) else {
        return Err("not a whole record");
    };
    if header.version != version
        || header.tombstone
        || ondisk::record_digest(&header, key) != digest
    {
        return Err("record does not match the index");
    }
    Ok(Entry {
        seq: header.seq,
        version: header.version,
        expiry_ms: header.expiry_ms,
        key: key.to_vec(),
        value: Some(value.to_vec()),
    })
}

/// Checks a record read for a `StateItem::OnDisk` and returns its write.
pub fn finish_state_read(
    read: &DiskRead,
    digest: Digest,
    bytes: &[u8],
) -> Result<Entry, CorruptRecord> {
    entry_of_record(bytes, read.version, digest).map_err(|reason| CorruptRecord {
        segment: read.segment,
        offset: read.offset,
        reason: reason.to_string(),
    })
}

impl Store {
    /// The vnode's newest applied write: its sequence number and version.
    pub fn vnode_position(&self, vnode: u16) -> Position {
        let log = self.vnode_log(vnode);
        Position {
            seq: log.applied_seq,
            version: log.applied_version,
        }
    }

    /// Applies a write of the vnode's head as it is; one already here (a resend overlapping a
    /// transfer) is nothing to do.
    pub fn apply_replicated(
        &mut self,
        vnode: u16,
        entry: &Entry,
        epoch: u64,
        wall_ms: u64,
    ) -> Result<(), String> {
        let write = ReplicatedWrite {
            vnode,
            key: &entry.key,
            value: entry.value.as_deref(),
            version: entry.version,
            expiry_ms: entry.expiry_ms,
            seq: entry.seq,
            epoch: epoch as u32,
        };
        match self.handle_replicated_write(write, wall_ms) {
            Ok(_) => Ok(()),
            Err(WriteError::OutOfOrder { .. }) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// A part of a state transfer lists the sender's live keys of a digest range: drops every
    /// key of that range not listed (and not written after `through`).
    pub fn drop_absent(
        &mut self,
        vnode: u16,
        keep: &KeepRange,
        through: Position,
        epoch: u64,
    ) -> Result<(), String> {
        if let Some(reason) = self.failure() {
            return Err(reason.to_string());
        }
        let listed: HashSet<u128> = keep.digests.iter().copied().collect();
        let absent: Vec<(Digest, IndexEntry)> = self.indexes[usize::from(vnode)]
            .iter_after(keep.after)
            .take_while(|(digest, _)| *digest <= keep.upto)
            .filter(|(digest, entry)| !listed.contains(digest) && entry.version <= through.version)
            .collect();
        // The tombstones carry the vnode's position, not `through`: a restart in the middle
        // of the keep list must not find the vnode further than its values went.
        let seq = self.vnode_log(vnode).applied_seq;
        for (digest, _) in absent {
            let entry = self.entry(vnode, digest).expect("listed just now");
            self.drop_by_digest(vnode, digest, entry, seq, epoch as u32);
        }
        Ok(())
    }

    /// Ends a state transfer: marks it done (`marks.rs`) and moves the position to `through`.
    pub fn finish_transfer(&mut self, vnode: u16, through: Position) -> Result<(), String> {
        if let Some(reason) = self.failure() {
            return Err(reason.to_string());
        }
        self.mark_transfer_done(vnode, through)
            .map_err(|e| e.to_string())?;
        self.raise_position(vnode, through);
        Ok(())
    }

    /// Whether a replicated write would be taken now (no full or failed disk, room in the
    /// write buffer).
    pub fn accepts_writes(&self) -> bool {
        self.check_writable().is_ok()
    }
}
