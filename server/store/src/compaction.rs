//! Compaction and TTL expiry: giving back the space of overwritten, deleted and expired records.
//!
//! Every segment's live bytes are counted as the index changes. When the log holds more than
//! `space_factor` times the live bytes, `poll_compaction` picks the sealed segment with the most
//! garbage per byte (the one that reclaims the most space per byte copied), the shell reads it,
//! and `relocate` copies its still-live records to the head of the log in small steps (the shell
//! runs them in a low-priority task queue and yields between steps). Once those copies are
//! durable, `poll_segment_delete` hands the segment to the shell to delete.
//!
//! Correctness rules:
//! - A record is copied only if the index still points at it; anything written meanwhile is
//!   newer and already elsewhere. Copies keep their version, and recovery never lets an older
//!   copy replace a newer one (`recovery.rs`), so a crash at any point leaves the newest copy.
//! - A tombstone is dropped only when no older segment exists: an older segment could still hold
//!   a record of its key, which the tombstone keeps dead. Otherwise it is copied forward.
//! - An expired record is dropped; if older segments exist it is replaced by a tombstone of the
//!   same version, so that an older, unexpired version cannot come back when this segment is
//!   deleted. That holds whether the index still had the key or the TTL sweep had dropped it.
//! - The segment is deleted only after `durable_seq` covers every copy.
//!
//! The TTL sweep (`sweep_expired`) walks the keys that have an expiry (`Store::expiries`, kept
//! beside the index) from a cursor, a bounded number per call, and drops expired keys from
//! memory (their bytes become garbage for compaction). Keys without an expiry cost it nothing.

use std::collections::BTreeSet;
use std::ops::Bound;

use crate::index::{Digest, Entry};
use crate::ondisk::{parse_record, Parsed, RecordHeader};
use crate::store::{CorruptRecord, Store};

/// Compaction skips segments with less garbage than this share of their bytes: copying a mostly
/// live segment costs nearly a segment of writes to gain little.
const MIN_GARBAGE_SHARE: f64 = 0.25;

#[derive(Debug, Default)]
pub struct CompactionState {
    /// The segment being relocated.
    victim: Option<u32>,
    /// Segments whose live records were all copied: delete each once `durable_seq >= seq`.
    pending_deletes: Vec<(u32, u64)>,
    /// Segments that cannot be compacted (a corrupt record was found in them).
    skipped: BTreeSet<u32>,
    pub runs: u64,
    pub bytes_reclaimed: u64,
    pub expired_keys: u64,
    /// Where the TTL sweep goes on from.
    sweep_after: Option<Digest>,
}

impl Store {
    /// The segment to compact now, if the log has outgrown its live data.
    pub fn poll_compaction(&mut self) -> Option<u32> {
        let state = &self.compaction;
        if state.victim.is_some() || !state.pending_deletes.is_empty() || self.failed.is_some() {
            return None;
        }
        let disk_bytes = self.stats().disk_bytes as f64;
        if disk_bytes <= self.config.space_factor * self.stats.live_bytes as f64 {
            return None;
        }
        let victim = self
            .sealed_segments
            .iter()
            .filter(|(id, _)| !state.skipped.contains(id))
            .filter(|(id, _)| !self.tail.chunks.iter().any(|c| c.segment == **id))
            .map(|(&id, &size)| {
                let live = self.segment_live.get(&id).copied().unwrap_or(0);
                (id, size, size.saturating_sub(live))
            })
            .filter(|&(_, size, garbage)| garbage as f64 >= MIN_GARBAGE_SHARE * size.max(1) as f64)
            .max_by(|a, b| {
                let share =
                    |&(_, size, garbage): &(u32, u64, u64)| garbage as f64 / size.max(1) as f64;
                share(a).total_cmp(&share(b)).then(b.0.cmp(&a.0))
            })?
            .0;
        self.compaction.victim = Some(victim);
        Some(victim)
    }

    /// Copies the live records of `victim` (whose whole contents are `bytes`) starting at
    /// `from`, up to about `budget_bytes` of the segment. Returns where to resume, or `None` when
    /// the segment is done.
    pub fn relocate(
        &mut self,
        victim: u32,
        bytes: &[u8],
        from: usize,
        budget_bytes: usize,
        now_ms: u64,
    ) -> Result<Option<usize>, CorruptRecord> {
        assert_eq!(
            self.compaction.victim,
            Some(victim),
            "relocate the polled victim"
        );
        let mut offset = from;
        while offset < from + budget_bytes {
            match parse_record(&bytes[offset..]) {
                Parsed::Record { header, key, .. } if header.transfer_mark => {
                    self.relocate_mark(victim, offset, &header, key[0]);
                    offset += header.record_len();
                }
                Parsed::Record { header, key, value } => {
                    self.relocate_record(victim, offset, &header, key, value, now_ms);
                    offset += header.record_len();
                }
                Parsed::End => return Ok(self.finish_victim(victim)),
                Parsed::Corrupt(reason) => {
                    self.compaction.victim = None;
                    self.compaction.skipped.insert(victim);
                    return Err(CorruptRecord {
                        segment: victim,
                        offset: offset as u64,
                        reason: reason.to_string(),
                    });
                }
            }
        }
        Ok(Some(offset))
    }

    fn finish_victim(&mut self, victim: u32) -> Option<usize> {
        self.compaction.victim = None;
        // The copies must be durable before the segment goes: wait for a sync past them.
        self.seq += 1;
        self.sync_wanted_seq = self.seq;
        self.compaction.pending_deletes.push((victim, self.seq));
        None
    }

    fn oldest_segment(&self) -> u32 {
        let active = self.tail.active_ref().segment;
        self.sealed_segments
            .keys()
            .next()
            .copied()
            .unwrap_or(active)
            .min(active)
    }

    fn relocate_record(
        &mut self,
        victim: u32,
        offset: usize,
        header: &RecordHeader,
        key: &[u8],
        value: &[u8],
        now_ms: u64,
    ) {
        let digest = crate::ondisk::record_digest(header, key);
        // The newest record of its vnode holds the vnode's sequence number for recovery: it is
        // never dropped, only turned into a tombstone if its value is gone.
        let keep_as_tombstone = self.oldest_segment() < victim || self.holds_vnode_seq(header);
        let current = self.entry(header.vnode, digest);
        if header.tombstone {
            if current.is_none() && keep_as_tombstone {
                self.append(header, key, digest, &[]);
            }
            return;
        }
        let Some(entry) = current else {
            // No entry: deleted (a newer tombstone exists elsewhere) or expired and swept from
            // memory. In the second case nothing else keeps an older version dead.
            let expired = header.expiry_ms != 0 && now_ms >= header.expiry_ms;
            if expired && keep_as_tombstone {
                let tombstone = RecordHeader {
                    tombstone: true,
                    value_len: 0,
                    expiry_ms: 0,
                    ..*header
                };
                self.append(&tombstone, key, digest, &[]);
            }
            return;
        };
        if entry.segment != victim || u64::from(entry.offset) != offset as u64 {
            return; // superseded: the newest record of this key lives elsewhere
        }
        if !entry.is_live(now_ms) {
            let tombstone = keep_as_tombstone.then_some((key, header.seq, header.epoch));
            self.expire(header.vnode, digest, entry, tombstone);
            return;
        }
        let (segment, new_offset, record_len) = self.append(header, key, digest, value);
        let moved = Entry {
            segment,
            offset: new_offset as u32,
            record_len,
            ..entry
        };
        self.apply_to_index(header.vnode, digest, false, moved);
    }

    /// Whether a record is its vnode's newest (it carries the vnode's sequence number).
    fn holds_vnode_seq(&self, header: &RecordHeader) -> bool {
        header.seq != 0 && header.seq >= self.vnode_logs[usize::from(header.vnode)].applied_seq
    }

    /// Drops an expired key from the index; with `tombstone` (key, seq, epoch), first logs a
    /// tombstone of its version so that an older version cannot come back.
    fn expire(
        &mut self,
        vnode: u16,
        digest: Digest,
        entry: Entry,
        tombstone: Option<(&[u8], u64, u32)>,
    ) {
        if let Some((key, seq, epoch)) = tombstone {
            let tombstone =
                RecordHeader::tombstone(vnode, key.len(), entry.version, (seq, epoch), false);
            self.append(&tombstone, key, digest, &[]);
        }
        self.apply_to_index(vnode, digest, true, entry);
        self.cache.remove(digest);
        self.compaction.expired_keys += 1;
    }

    /// A compacted segment whose copies are durable: the shell deletes its file. Accounting
    /// moves it out of the disk usage.
    pub fn poll_segment_delete(&mut self) -> Option<u32> {
        let durable = self.durable_seq;
        let position = self
            .compaction
            .pending_deletes
            .iter()
            .position(|&(_, seq)| seq <= durable)?;
        let (segment, _) = self.compaction.pending_deletes.remove(position);
        let size = self.sealed_segments.remove(&segment).unwrap_or(0);
        self.sealed_hints.retain(|h| h.segment != segment);
        self.sealed_disk_bytes -= size;
        self.segment_live.remove(&segment);
        self.compaction.runs += 1;
        self.compaction.bytes_reclaimed += size;
        Some(segment)
    }

    /// Examines up to `max_entries` keys that have an expiry, going on from where the last call
    /// stopped, and drops the expired ones from the index. Returns how many it dropped.
    pub fn sweep_expired(&mut self, now_ms: u64, max_entries: usize) -> u64 {
        let start = match self.compaction.sweep_after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut examined = 0;
        let mut last = None;
        let mut expired = Vec::new();
        for (&digest, &(expiry_ms, vnode)) in self
            .expiries
            .range((start, Bound::Unbounded))
            .take(max_entries)
        {
            examined += 1;
            last = Some(digest);
            if now_ms >= expiry_ms {
                expired.push((digest, vnode));
            }
        }
        // At the end of the keys the next call starts over: one pass per call at most.
        self.compaction.sweep_after = if examined == max_entries { last } else { None };
        let dropped = expired.len() as u64;
        for (digest, vnode) in expired {
            let entry = self
                .entry(vnode, digest)
                .expect("keys with an expiry are indexed");
            // Memory only: the expired record stays on disk (and is dropped by compaction), so
            // no older version can come back.
            self.expire(vnode, digest, entry, None);
        }
        dropped
    }
}
