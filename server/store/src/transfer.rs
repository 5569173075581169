//! The sending side of a state transfer, sans-IO: which writes and which key digests go in
//! each part, read from the store a bounded piece at a time. The shell (and the simulator)
//! drive it: `TransferSource::next` says what to do next, the driver reads records from disk
//! where asked and hands back their writes, and sends each part it is given.
//!
//! Why this shape (the receiver's side is in `tessera-core`'s `replication/vnode/transfer.rs`):
//!
//! - **Values in version order, in passes.** The receiver applies writes in sequence order,
//!   and a vnode's writes have growing versions and sequence numbers together, so sending each
//!   live key's newest write in version order keeps every prefix of the transfer a valid
//!   position: a transfer cut anywhere resumes from the receiver's position (its last applied
//!   write) with nothing skipped. Sorting a whole vnode by version would hold 24 bytes per key
//!   (58 MB for the brief's 2.4 M keys per vnode), so each pass walks the index and keeps only
//!   the `keys_per_pass` oldest versions after the last one sent (a bounded max-heap), then
//!   reads and sends them. A pass walks the index a step at a time (`Next::Yield` between
//!   steps, so a vnode of millions of keys does not stall the shard) and takes only keys no
//!   newer than the vnode's position when it began: a write made during the walk is left to
//!   the next pass, or after the last pass to the live stream, which resumes after that
//!   position. A key rewritten before its value is read is left out the same way (the
//!   receiver serves no read until it has applied `caught_up_at`).
//! - **Deletes as digest ranges.** After the values, the live key digests go in parts of
//!   `keep_per_part`, each naming its range, read from the index when the part is built. The
//!   receiver drops every key of the range that is not listed: a delete made before the part
//!   was read, however old, reaches it without the sender keeping tombstones. A key deleted
//!   after the values were read and before its range was listed is dropped too, and its delete
//!   also comes in the stream; one created meanwhile is listed and comes in the stream. So is
//!   one deleted before `through` and written again meanwhile, while the receiver still holds
//!   its value from before the delete: `caught_up_at` is the sender's applied sequence number
//!   when it read its last keep part, not its last value, and the receiver serves no read
//!   until it has applied that far.
//!
//! Memory: one pass of `(version, digest)` pairs and one part of values.

use std::collections::{BinaryHeap, VecDeque};

use crate::replicated::{Entry, KeepRange, Position, StatePart};

use crate::index::Digest;
use crate::replica::StateItem;
use crate::store::Store;

/// How much a transfer reads and sends at a time.
#[derive(Clone, Copy, Debug)]
pub struct TransferLimits {
    /// Keys whose values one pass collects.
    pub keys_per_pass: usize,
    /// A part is sent once its values reach this many bytes.
    pub part_bytes: usize,
    /// Key digests per part of the keep list.
    pub keep_per_part: usize,
    /// Index entries a pass walks between yields.
    pub walk_step: usize,
    /// Records read at once (and at most about `part_bytes` of them): reads one at a time
    /// went at the disk's latency, 8 K keys/s.
    pub reads_at_once: usize,
}

impl TransferLimits {
    /// What the server uses: 1 MiB parts, 64 Ki keys per pass (1.5 MiB of pairs), and 64 Ki
    /// digests (1 MiB) per keep part.
    pub const DEFAULT: TransferLimits = TransferLimits {
        keys_per_pass: 64 * 1024,
        part_bytes: 1 << 20,
        keep_per_part: 64 * 1024,
        walk_step: 16 * 1024,
        reads_at_once: 64,
    };
}

/// What the driver does next.
#[derive(Debug)]
pub enum Next {
    /// Resolve these keys' writes (read from disk those that are not `Ready`, at once) and
    /// `push` them in this order, leaving out any rewritten since; abort the transfer if a
    /// record is unreadable.
    Read(Vec<StateItem>),
    /// Send this part.
    Send(StatePart),
    /// A step of an index walk is done: let the shard's other work run, then go on.
    Yield,
    /// The transfer is complete.
    Done,
}

/// A pass being collected: the oldest keys newer than `after_version` and no newer than
/// `position`, the vnode's position when the walk began.
#[derive(Debug)]
struct Walk {
    position: Position,
    /// Digests after this one are still to walk (`None`: from the first).
    cursor: Option<Digest>,
    oldest: BinaryHeap<(u64, Digest)>,
    newer: usize,
}

#[derive(Debug)]
enum Phase {
    Values,
    Collect(Walk),
    /// Listing digests after this one (`None`: from the first).
    Keep {
        after: Option<Digest>,
    },
    Done,
}

/// One state transfer of one vnode, as it is read.
#[derive(Debug)]
pub struct TransferSource {
    vnode: u16,
    limits: TransferLimits,
    /// Values are sent for versions after this one (it grows pass by pass).
    after_version: u64,
    /// The current pass: keys still to read, in version order.
    pending: VecDeque<(u64, Digest)>,
    /// The current pass took every key newer than `after_version`: the last one.
    last_pass: bool,
    /// The vnode's position when the current pass began.
    pass_position: Position,
    started: bool,
    phase: Phase,
    entries: Vec<Entry>,
    entries_bytes: usize,
    /// Set when the values are done: where they were sent through, and the sender's applied
    /// sequence number then, raised as each keep part is read.
    through: Position,
    caught_up_at: u64,
    /// Progress, for operators.
    pub keys_sent: u64,
    pub bytes_sent: u64,
}

impl TransferSource {
    /// A transfer of `vnode`'s state newer than `since`.
    pub fn new(vnode: u16, since: Position, limits: TransferLimits) -> TransferSource {
        TransferSource {
            vnode,
            limits,
            after_version: since.version,
            pending: VecDeque::new(),
            last_pass: false,
            pass_position: Position::default(),
            started: false,
            phase: Phase::Values,
            entries: Vec::new(),
            entries_bytes: 0,
            through: Position::default(),
            caught_up_at: 0,
            keys_sent: 0,
            bytes_sent: 0,
        }
    }

    pub fn vnode(&self) -> u16 {
        self.vnode
    }

    /// The next step, reading `store` as it is now.
    pub fn next(&mut self, store: &Store, now_ms: u64) -> Next {
        loop {
            match self.phase {
                Phase::Values => {
                    if self.entries_bytes >= self.limits.part_bytes {
                        return Next::Send(self.values_part());
                    }
                    if !self.pending.is_empty() {
                        let items = self.next_reads(store);
                        if !items.is_empty() {
                            return Next::Read(items);
                        }
                        continue; // all rewritten since the pass: they come later
                    }
                    if self.started && self.last_pass {
                        let log = store.vnode_log(self.vnode);
                        self.through = self.pass_position;
                        self.caught_up_at = log.applied_seq;
                        self.phase = Phase::Keep { after: None };
                        if !self.entries.is_empty() {
                            return Next::Send(self.values_part());
                        }
                        continue;
                    }
                    let log = store.vnode_log(self.vnode);
                    self.phase = Phase::Collect(Walk {
                        position: Position {
                            seq: log.applied_seq,
                            version: log.applied_version,
                        },
                        cursor: None,
                        oldest: BinaryHeap::new(),
                        newer: 0,
                    });
                }
                Phase::Collect(_) => {
                    if self.walk(store, now_ms) {
                        return Next::Yield;
                    }
                }
                Phase::Keep { after } => return Next::Send(self.keep_part(store, after, now_ms)),
                Phase::Done => return Next::Done,
            }
        }
    }

    /// The next keys of the pass to read, still as the pass found them (a key rewritten
    /// since is left out: its newer write comes later).
    fn next_reads(&mut self, store: &Store) -> Vec<StateItem> {
        let mut items = Vec::new();
        let mut bytes = 0;
        while items.len() < self.limits.reads_at_once.max(1) && bytes < self.limits.part_bytes {
            let Some((version, digest)) = self.pending.pop_front() else {
                break;
            };
            let Some(item) = store.locate(self.vnode, digest, version) else {
                continue;
            };
            bytes += match &item {
                StateItem::Ready(entry) => entry.bytes(),
                StateItem::OnDisk { read, .. } => read.len,
            };
            items.push(item);
        }
        items
    }

    /// The write of an item given by `Next::Read`, in the order given.
    pub fn push(&mut self, entry: Entry) {
        self.after_version = self.after_version.max(entry.version);
        self.entries_bytes += entry.bytes();
        self.keys_sent += 1;
        self.bytes_sent += entry.bytes() as u64;
        self.entries.push(entry);
    }

    /// Walks a step of the index for the pass being collected; true when more remains.
    fn walk(&mut self, store: &Store, now_ms: u64) -> bool {
        let Phase::Collect(walk) = &mut self.phase else {
            return false;
        };
        let limit = self.limits.keys_per_pass.max(1);
        let mut walked = 0;
        let mut last = None;
        for (digest, _) in store.indexes[usize::from(self.vnode)].iter_after(walk.cursor) {
            if walked == self.limits.walk_step.max(1) {
                break;
            }
            walked += 1;
            last = Some(digest);
            let Some(entry) = store
                .entry(self.vnode, digest)
                .filter(|e| e.is_live(now_ms))
            else {
                continue;
            };
            if entry.version <= self.after_version || entry.version > walk.position.version {
                continue; // sent already, or newer than the pass (the next one takes it)
            }
            walk.newer += 1;
            if walk.oldest.len() < limit {
                walk.oldest.push((entry.version, digest));
            } else if walk
                .oldest
                .peek()
                .is_some_and(|&(top, _)| entry.version < top)
            {
                walk.oldest.pop();
                walk.oldest.push((entry.version, digest));
            }
        }
        if walked == self.limits.walk_step.max(1) {
            walk.cursor = last;
            return true;
        }
        let walk = std::mem::replace(&mut self.phase, Phase::Values);
        let Phase::Collect(walk) = walk else {
            unreachable!("collecting")
        };
        self.pass_position = walk.position;
        self.started = true;
        self.last_pass = walk.newer <= limit;
        self.pending = walk.oldest.into_sorted_vec().into();
        false
    }

    fn values_part(&mut self) -> StatePart {
        self.entries_bytes = 0;
        StatePart {
            entries: std::mem::take(&mut self.entries),
            through: Position::default(),
            keep: None,
            last: None,
        }
    }

    fn keep_part(&mut self, store: &Store, after: Option<Digest>, now_ms: u64) -> StatePart {
        // A key deleted by then and written again since is listed as live: the receiver keeps
        // its copy from before the delete until the new write arrives in the stream, so it
        // must serve no read before it has applied what this part saw (seed 1077).
        let applied = store.vnode_log(self.vnode).applied_seq;
        self.caught_up_at = self.caught_up_at.max(applied);
        let limit = self.limits.keep_per_part.max(1);
        let mut digests = Vec::new();
        let mut more = false;
        for (digest, _) in store.indexes[usize::from(self.vnode)].iter_after(after) {
            let Some(_) = store
                .entry(self.vnode, digest)
                .filter(|e| e.is_live(now_ms))
            else {
                continue;
            };
            if digests.len() == limit {
                more = true;
                break;
            }
            digests.push(digest);
        }
        let upto = match more {
            true => *digests.last().expect("a full part"),
            false => u128::MAX,
        };
        self.bytes_sent += digests.len() as u64 * 16;
        self.phase = match more {
            true => Phase::Keep { after: Some(upto) },
            false => Phase::Done,
        };
        StatePart {
            entries: Vec::new(),
            through: self.through,
            keep: Some(KeepRange {
                after,
                upto,
                digests,
            }),
            last: (!more).then_some(self.caught_up_at),
        }
    }
}
