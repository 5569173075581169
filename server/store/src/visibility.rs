//! Visibility: which writes an answer may reveal.
//!
//! The store applies a write to its index the moment it is appended, long before the write is
//! durable. An answer built from that state (a GET's value, a compare-and-set's
//! VERSION_MISMATCH, a NOT_FOUND after a DELETE) would show a client a write that a crash can
//! still take back: the client sees `v2`, the node is killed, and the key holds `v1` again.
//!
//! The rule: **a write is visible once the store's visibility watermark has passed its sequence
//! number.** On a single node the watermark is `durable_seq` (visible once durable through seq
//! S); chain replication raises the bar to "committed through seq S" by holding the watermark
//! back, without changing the readers. A reader that finds a key whose newest write is beyond
//! the watermark waits until the watermark reaches it, and then answers with what it read (the
//! state as of its own arrival, so a key written without pause cannot starve it).
//!
//! Why wait rather than answer from the last visible version: the store keeps one entry per key,
//! so the older version's location is gone once a write replaces it; keeping it would cost an
//! entry per pending write plus the value-cache bookkeeping, to save a wait of at most one group
//! commit (a fraction of a millisecond on these disks). Waiting is also what keeps reads
//! linearizable: the answer leaves after the write it shows can no longer be lost.
//!
//! Cost: [`Unsettled`] holds only the writes beyond the watermark (at most a group commit's
//! worth under `--fsync always`, an interval's worth otherwise): a map from key digest to the
//! key's newest such sequence number, and the same writes in sequence order, so that raising the
//! watermark drops them from the front. A read of a key with no unsettled write costs one probe
//! of a small map, or nothing when the map is empty, and never waits.

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;

use crate::fasthash::Fold;
use crate::index::Digest;

/// The writes that are not yet visible, by key and in sequence order.
#[derive(Debug, Default)]
pub struct Unsettled {
    /// The newest unsettled write's sequence number, per key.
    newest_seq: HashMap<Digest, u64, Fold>,
    /// Every unsettled write, oldest first: (seq, key digest, vnode).
    order: VecDeque<(u64, Digest, u16)>,
}

impl Unsettled {
    /// A write to `digest` in `vnode` took sequence number `seq` (sequence numbers only grow).
    pub fn record(&mut self, seq: u64, digest: Digest, vnode: u16) {
        debug_assert!(self.order.back().is_none_or(|&(last, ..)| last < seq));
        self.newest_seq.insert(digest, seq);
        self.order.push_back((seq, digest, vnode));
    }

    /// Every write up to `seq` is now visible.
    pub fn settle_through(&mut self, seq: u64) {
        while let Some(&(oldest, digest, _)) = self.order.front() {
            if oldest > seq {
                return;
            }
            self.order.pop_front();
            // A newer write to the same key keeps it unsettled.
            if self.newest_seq.get(&digest) == Some(&oldest) {
                self.newest_seq.remove(&digest);
            }
        }
    }

    /// The sequence number a reader of `digest` must see visible before it answers, if the
    /// key's newest write is not yet visible.
    pub fn barrier(&self, digest: Digest) -> Option<u64> {
        if self.order.is_empty() {
            return None;
        }
        self.newest_seq.get(&digest).copied()
    }

    /// The barrier for a reader of every key in `vnodes` (SCAN: a listing reveals new keys and
    /// deleted ones alike): the newest unsettled write among them.
    pub fn vnodes_barrier(&self, vnodes: RangeInclusive<u16>) -> Option<u64> {
        self.order
            .iter()
            .rev()
            .find(|(_, _, vnode)| vnodes.contains(vnode))
            .map(|&(seq, ..)| seq)
    }

    /// Writes not yet visible.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_unsettled_until_its_newest_write_is_visible() {
        let mut unsettled = Unsettled::default();
        unsettled.record(1, 10, 0);
        unsettled.record(2, 20, 1);
        unsettled.record(3, 10, 0);
        assert_eq!(unsettled.barrier(10), Some(3));
        assert_eq!(unsettled.barrier(20), Some(2));
        assert_eq!(unsettled.barrier(30), None);
        unsettled.settle_through(2);
        assert_eq!(unsettled.barrier(10), Some(3), "its newest write is seq 3");
        assert_eq!(unsettled.barrier(20), None);
        unsettled.settle_through(3);
        assert_eq!(unsettled.barrier(10), None);
        assert!(unsettled.is_empty());
    }

    #[test]
    fn a_vnode_range_waits_for_its_newest_unsettled_write() {
        let mut unsettled = Unsettled::default();
        unsettled.record(1, 10, 4);
        unsettled.record(2, 20, 9);
        unsettled.record(3, 30, 4);
        assert_eq!(unsettled.vnodes_barrier(0..=5), Some(3));
        assert_eq!(unsettled.vnodes_barrier(5..=9), Some(2));
        assert_eq!(unsettled.vnodes_barrier(10..=20), None);
        unsettled.settle_through(3);
        assert_eq!(unsettled.vnodes_barrier(0..=255), None);
    }
}
