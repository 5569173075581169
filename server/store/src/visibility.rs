//! Visibility: which writes an answer may reveal.
//!
//! The store applies a write to its index the moment it is appended, long before the write is
//! durable (or, in a cluster, committed by its chain). An answer built from that state (a GET's
//! value, a compare-and-set's VERSION_MISMATCH, a NOT_FOUND after a DELETE) would show a client
//! a write that a crash can still take back: the client sees `v2`, the node is killed, and the
//! key holds `v1` again.
//!
//! The rule: **a write is visible once its vnode's visibility watermark has passed its sequence
//! number in that vnode.** On a single node the watermark is the vnode's durable sequence number
//! ("visible once durable through seq S"); in a cluster the replication core sets it to the
//! chain's committed sequence number ("visible to `strong` reads once committed through seq
//! S", `Visibility::Committed`), without changing the readers. A reader that finds a key whose
//! newest write is beyond the watermark waits until the watermark reaches it, and then answers
//! with what it read (the state as of its own arrival, so a key written without pause cannot
//! starve it).
//!
//! Why wait rather than answer from the last visible version: the store keeps one entry per key,
//! so the older version's location is gone once a write replaces it; keeping it would cost an
//! entry per pending write plus the value-cache bookkeeping, to save a wait of at most one group
//! commit (a fraction of a millisecond on these disks). Waiting is also what keeps reads
//! linearizable: the answer leaves after the write it shows can no longer be lost.
//!
//! Cost: [`Unsettled`] holds only the writes beyond the watermarks: a map from key digest to the
//! key's newest such write, the same writes per vnode in sequence order (so that raising a
//! watermark drops them from the front), and, until each is durable, in the store's append
//! order (so that the store learns each vnode's durable sequence number as fdatasyncs complete).
//! A read of a key with no unsettled write costs one probe of a small map, or nothing when the
//! map is empty, and never waits.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::RangeInclusive;

use crate::fasthash::Fold;
use crate::index::Digest;

/// An answer may leave once `vnode`'s visible sequence number reaches `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Barrier {
    pub vnode: u16,
    pub seq: u64,
}

/// How a vnode's visibility watermark moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Visibility {
    /// With its durability: a single node.
    #[default]
    Durable,
    /// As the replication core says (`Store::set_committed`): a cluster.
    Committed,
}

/// A vnode's sequence numbers on this store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VnodeLog {
    /// The newest write applied, and its version.
    pub applied_seq: u64,
    pub applied_version: u64,
    /// Every write up to this one is durable here.
    pub durable_seq: u64,
    /// Every write up to this one may be shown.
    pub visible_seq: u64,
    /// In a cluster, every read of the vnode waits until `visible_seq` reaches this floor;
    /// `None`: reads wait until the replication core sets one (`Store::release_reads`). After
    /// a restart a replica may hold writes that are not committed yet, and (when writes count
    /// before they are durable) may have lost committed ones that its chain still has: only
    /// the core can tell when its copy is whole again. On a single node this stays `Some(0)`.
    pub read_floor: Option<u64>,
}

impl Default for VnodeLog {
    fn default() -> VnodeLog {
        VnodeLog {
            applied_seq: 0,
            applied_version: 0,
            durable_seq: 0,
            visible_seq: 0,
            read_floor: Some(0),
        }
    }
}

/// A barrier that passes once its vnode's reads are released and its floor is visible.
pub const FLOOR: u64 = u64::MAX;

/// The writes that are not yet visible, by key, per vnode, and in the store's append order.
#[derive(Debug, Default)]
pub struct Unsettled {
    /// The newest unsettled write per key: (vnode, seq in the vnode).
    newest: HashMap<Digest, Barrier, Fold>,
    /// Unsettled writes per vnode, oldest first: (seq in the vnode, key).
    by_vnode: HashMap<u16, VecDeque<(u64, Digest)>, Fold>,
    /// Writes not yet durable, in append order: (store sequence number, vnode, seq in vnode).
    not_durable: VecDeque<(u64, u16, u64)>,
    /// Vnodes whose durable or visible sequence number moved since `take_changes`.
    changed: BTreeSet<u16>,
}

impl Unsettled {
    /// A write to `digest` took store sequence number `store_seq` and sequence number `seq` in
    /// `vnode` (both only grow).
    pub fn record(&mut self, store_seq: u64, digest: Digest, vnode: u16, seq: u64) {
        self.newest.insert(digest, Barrier { vnode, seq });
        self.by_vnode
            .entry(vnode)
            .or_default()
            .push_back((seq, digest));
        self.not_durable.push_back((store_seq, vnode, seq));
    }

    /// Every write up to store sequence number `store_seq` is durable: raises the durable
    /// sequence numbers of their vnodes in `logs`, and returns those vnodes.
    pub fn durable_through(&mut self, store_seq: u64, logs: &mut [VnodeLog]) -> Vec<u16> {
        let mut advanced = Vec::new();
        while let Some(&(oldest, vnode, seq)) = self.not_durable.front() {
            if oldest > store_seq {
                break;
            }
            self.not_durable.pop_front();
            let log = &mut logs[usize::from(vnode)];
            if seq > log.durable_seq {
                log.durable_seq = seq;
                self.changed.insert(vnode);
                advanced.push(vnode);
            }
        }
        advanced.sort_unstable();
        advanced.dedup();
        advanced
    }

    /// `vnode`'s writes up to `seq` are visible.
    pub fn settle(&mut self, vnode: u16, seq: u64) {
        let Some(queue) = self.by_vnode.get_mut(&vnode) else {
            return;
        };
        while let Some(&(oldest, digest)) = queue.front() {
            if oldest > seq {
                break;
            }
            queue.pop_front();
            // A newer write to the same key keeps it unsettled.
            if self.newest.get(&digest) == Some(&Barrier { vnode, seq: oldest }) {
                self.newest.remove(&digest);
            }
        }
        if queue.is_empty() {
            self.by_vnode.remove(&vnode);
        }
        self.changed.insert(vnode);
    }

    /// What a reader of `digest` must wait for, if the key's newest write is not visible.
    pub fn barrier(&self, digest: Digest) -> Option<Barrier> {
        if self.newest.is_empty() {
            return None;
        }
        self.newest.get(&digest).copied()
    }

    /// For a reader of every key in `vnodes` (SCAN: a listing reveals new keys and deleted ones
    /// alike): the newest unsettled write of each vnode in the range that has one.
    pub fn vnodes_barriers(&self, vnodes: RangeInclusive<u16>) -> Vec<Barrier> {
        let mut barriers: Vec<Barrier> = self
            .by_vnode
            .iter()
            .filter(|(vnode, _)| vnodes.contains(vnode))
            .filter_map(|(&vnode, queue)| queue.back().map(|&(seq, _)| Barrier { vnode, seq }))
            .collect();
        barriers.sort_unstable();
        barriers
    }

    /// Something about `vnode`'s readers changed (its reads were released).
    pub fn mark_changed(&mut self, vnode: u16) {
        self.changed.insert(vnode);
    }

    /// Vnodes whose durable or visible sequence number moved since the last call.
    pub fn take_changes(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// Writes not yet visible.
    pub fn len(&self) -> usize {
        self.by_vnode.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_unsettled_until_its_newest_write_is_visible() {
        let mut unsettled = Unsettled::default();
        unsettled.record(1, 10, 0, 1);
        unsettled.record(2, 20, 1, 1);
        unsettled.record(3, 10, 0, 2);
        assert_eq!(unsettled.barrier(10), Some(Barrier { vnode: 0, seq: 2 }));
        assert_eq!(unsettled.barrier(20), Some(Barrier { vnode: 1, seq: 1 }));
        assert_eq!(unsettled.barrier(30), None);
        unsettled.settle(0, 1);
        assert_eq!(
            unsettled.barrier(10),
            Some(Barrier { vnode: 0, seq: 2 }),
            "seq 2 is newer"
        );
        unsettled.settle(1, 1);
        assert_eq!(unsettled.barrier(20), None);
        unsettled.settle(0, 2);
        assert_eq!(unsettled.barrier(10), None);
        assert!(unsettled.is_empty());
        assert_eq!(unsettled.take_changes(), vec![0, 1]);
        assert!(unsettled.take_changes().is_empty());
    }

    #[test]
    fn durability_is_learned_per_vnode_in_append_order() {
        let mut unsettled = Unsettled::default();
        let mut logs = vec![VnodeLog::default(); 4];
        unsettled.record(1, 10, 2, 7);
        unsettled.record(2, 20, 3, 1);
        unsettled.record(3, 30, 2, 8);
        unsettled.durable_through(2, &mut logs);
        assert_eq!((logs[2].durable_seq, logs[3].durable_seq), (7, 1));
        unsettled.durable_through(3, &mut logs);
        assert_eq!(logs[2].durable_seq, 8);
        assert_eq!(unsettled.take_changes(), vec![2, 3]);
    }

    #[test]
    fn a_vnode_range_waits_for_the_newest_unsettled_write_of_each_vnode() {
        let mut unsettled = Unsettled::default();
        unsettled.record(1, 10, 4, 1);
        unsettled.record(2, 20, 9, 1);
        unsettled.record(3, 30, 4, 2);
        assert_eq!(
            unsettled.vnodes_barriers(0..=9),
            vec![Barrier { vnode: 4, seq: 2 }, Barrier { vnode: 9, seq: 1 }]
        );
        assert_eq!(unsettled.vnodes_barriers(5..=8), vec![]);
        unsettled.settle(4, 2);
        unsettled.settle(9, 1);
        assert!(unsettled.vnodes_barriers(0..=255).is_empty());
    }
}
