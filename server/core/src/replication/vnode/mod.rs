//! One vnode's replication state on one replica: the state here, its handlers one per file.
//!
//! | file | input it handles |
//! |---|---|
//! | `append.rs` | the head's own writes, a predecessor's `Append` |
//! | `ack.rs` | a successor's `Ack`; the commit point; answering client writes |
//! | `catch_up.rs` | links up and down, a successor's `Position` |
//! | `transfer.rs` | state transfers sent and received, a recovering head's pull |
//! | `recovery.rs` | a restarted head's `Probe` answers; releasing reads |
//! | `stream.rs` | after every input: the stream to the successor |
//! | `invariants.rs` | states this replica must never reach, checked after every input in debug builds |

use std::collections::{BTreeMap, VecDeque};

use super::clock::Now;
use super::msg::{Body, Entry, Level, Outgoing, PeerMsg, Position, Watermarks};
use super::progress::{Progress, SuccessorLag};
use super::replicator::{Effect, Ticket, VnodeStore, WriteFailure};
use crate::placement::{Chain, NodeId};
use transfer::{InTransfer, OutTransfer, ReceivedPart};

mod ack;
mod append;
mod catch_up;
mod invariants;
mod recovery;
mod stream;
mod transfer;

#[cfg(test)]
mod ack_tests;
#[cfg(test)]
mod append_tests;
#[cfg(test)]
mod catch_up_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod transfer_tests;

/// Entries per `Append` message at most (bytes are bounded by the caller's batching too).
const APPEND_BATCH_BYTES: usize = 1 << 20;

/// A client write waiting for its ack point.
#[derive(Debug)]
struct Waiter {
    ticket: Ticket,
    level: Level,
    durable: bool,
    deadline_ms: u64,
}

/// The head's recovery after a restart: it asks every replica where it stands.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    answers: BTreeMap<NodeId, Position>,
    /// A pull from this replica is under way.
    pub pulling_from: Option<NodeId>,
}

/// What this replica knows of its successor.
#[derive(Debug)]
pub(super) struct Downstream {
    pub node: NodeId,
    /// The successor's own watermarks, and its and its successors'.
    own: Watermarks,
    suffix: Watermarks,
    /// The last entry sent (the stream goes on after it); `None`: wait for its `Position`.
    pub sent: Option<u64>,
    /// Entries the successor has not made durable yet, oldest first.
    pub queue: VecDeque<Entry>,
    pub queue_bytes: usize,
    /// The entry just before the queue's first: a successor at or after it can be resent to
    /// from the queue. `None`: the queue lost entries (it overflowed, or this replica
    /// restarted): a successor behind the queue needs a state transfer.
    pub base: Option<Position>,
    /// The state transfer to the successor (`transfer.rs`), until it says it applied it.
    pub transfer: Option<OutTransfer>,
    /// A transfer to the successor started and has not completed: its position is good only
    /// as the start of another transfer, never for a resend from the queue.
    pub needs_transfer: bool,
    /// The successor is ahead of this replica: stream once caught up past it.
    deferred: Option<Position>,
    /// The last position the successor reported (it is at least there).
    pub reported: Option<Position>,
    pub link_up: bool,
}

impl Downstream {
    /// A transfer to the successor is being sent: the stream waits.
    fn transferring(&self) -> bool {
        self.transfer.is_some_and(|t| t.sending())
    }

    /// Whether the queue can catch up a successor at `position` (entries right after it).
    fn covers(&self, position: Position) -> bool {
        !self.needs_transfer
            && self.base.is_some_and(|base| base.seq <= position.seq)
            && self.queue.front().is_none_or(|e| e.seq <= position.seq + 1)
    }

    fn new(node: NodeId, position: Position) -> Downstream {
        Downstream {
            node,
            own: Watermarks::NONE,
            suffix: Watermarks::NONE,
            sent: None,
            queue: VecDeque::new(),
            queue_bytes: 0,
            base: Some(position),
            transfer: None,
            needs_transfer: false,
            deferred: None,
            reported: None,
            link_up: false,
        }
    }
}

/// Bytes freed or taken by a change to a queue (the replicator keeps the shard's total).
pub(crate) type QueueDelta = isize;

#[derive(Debug)]
pub(crate) struct VnodeState {
    pub vnode: u16,
    pub chain: Chain,
    pub me: NodeId,
    /// What every replica from the head to the predecessor has (non-heads).
    prefix: Watermarks,
    /// This replica's own watermarks, as its store has them.
    pub own: Watermarks,
    pub own_version: u64,
    pub(super) down: Option<Downstream>,
    /// The commit point given to the store.
    pub committed: u64,
    /// A head that has not yet checked that no replica is ahead of it.
    pub(super) recovery: Option<Recovery>,
    /// The transfer being received, part by part (`transfer.rs`).
    pub(super) incoming: Option<InTransfer>,
    /// A transfer here started and none has completed since: acknowledgements claim no more
    /// than this (where this replica stood when the first started).
    pub(super) ack_cap: Option<u64>,
    /// The transfer a recovering head pulls from this replica.
    pub(super) serving_pull: Option<OutTransfer>,
    waiters: BTreeMap<u64, Vec<Waiter>>,
    /// An `Ack` is due to the predecessor, with these watermarks last sent.
    last_ack: Option<(Watermarks, Watermarks)>,
    /// The prefix and commit point last sent downstream (an empty `Append` carries a change
    /// on its own).
    last_prefix_sent: Option<Watermarks>,
    last_committed_sent: u64,
    /// A `Position` was sent upstream and no stream has answered it yet.
    pub(super) awaiting_stream: bool,
    /// The store's reads of this vnode are released (`VnodeStore::release_reads`).
    pub(super) clean: bool,
    /// The commit point the predecessor last told of.
    pub(super) upstream_committed: Option<u64>,
    /// Appends were refused (the shard's queues were full while this replica was behind its
    /// successor, or the store took no writes): ask the predecessor to resend once that has
    /// passed (`Replicator::resume_refused`).
    pub refused: bool,
}

/// What a handler needs around it: the store, the effects to emit, and settings.
pub(crate) struct Ctx<'a> {
    pub store: &'a mut dyn VnodeStore,
    pub effects: &'a mut VecDeque<Effect>,
    pub durable_commit: bool,
    pub now: Now,
    /// Bytes handed to each link and not yet written by the shell (as last reported, plus
    /// what was sent since), and the most a link may hold before streams to it pause.
    pub outbox: &'a mut BTreeMap<NodeId, usize>,
    pub outbox_limit: usize,
    /// The shard's retention queues are full: replicas with a successor to feed take no more
    /// appends (the backpressure reaches the head, whose writes get OVERLOADED).
    pub congested: bool,
    pub progress: &'a mut Progress,
    /// Names the next state transfer sent.
    pub next_transfer: &'a mut u64,
}

impl Ctx<'_> {
    pub(super) fn new_transfer_id(&mut self) -> u64 {
        let id = *self.next_transfer;
        *self.next_transfer += 1;
        id
    }

    /// Whether the link to `node` takes more of a stream now.
    fn has_room(&self, node: NodeId) -> bool {
        self.outbox.get(&node).copied().unwrap_or(0) < self.outbox_limit
    }

    /// Counts a vnode's catch-up of a successor: every state transfer started, and every
    /// resend from the queue that a `Position` message asked for (a re-decision from a
    /// position already known, at a link-up or after a transfer, is not a new catch-up).
    pub(super) fn count_catch_up(&mut self, to: NodeId, transfer: bool) {
        let counts = self.progress.catch_ups.entry(to).or_default();
        match transfer {
            true => counts.transfers += 1,
            false => counts.from_queue += 1,
        }
    }

    pub(super) fn send(&mut self, to: NodeId, vnode: u16, epoch: u64, body: Body) {
        *self.outbox.entry(to).or_default() += body.bytes();
        self.effects.push_back(Effect::Send(Outgoing {
            to,
            msg: PeerMsg { vnode, epoch, body },
        }));
    }
}

impl VnodeState {
    pub fn new(
        vnode: u16,
        chain: Chain,
        me: NodeId,
        store: &dyn VnodeStore,
        fresh: bool,
    ) -> VnodeState {
        let position = store.position(vnode);
        let own = Watermarks {
            applied: position.seq,
            durable: store.durable_seq(vnode),
        };
        let mut state = VnodeState::at(vnode, chain, me, own, position.version, fresh);
        // A transfer cut short by the restart: what the copy holds past where it started may
        // lack deletes, so claim no more than that until another transfer completes
        // (`transfer.rs`; simulator seed 647).
        state.ack_cap = store
            .transfer_cut_short(vnode)
            .map(|cap| cap.min(own.applied));
        state
    }

    /// A replica whose store stands at `own` (the newest write's version `own_version`);
    /// `fresh`: a new cluster, so a head has nothing to recover.
    fn at(
        vnode: u16,
        chain: Chain,
        me: NodeId,
        own: Watermarks,
        own_version: u64,
        fresh: bool,
    ) -> VnodeState {
        let position = Position {
            seq: own.applied,
            version: own_version,
        };
        let down = chain
            .successor(me)
            .map(|node| Downstream::new(node, position));
        let recovery =
            (!fresh && chain.head() == me && chain.replicas.len() > 1).then(Recovery::default);
        VnodeState {
            vnode,
            me,
            prefix: Watermarks::NONE,
            own,
            own_version,
            down,
            committed: 0,
            recovery,
            incoming: None,
            ack_cap: None,
            serving_pull: None,
            waiters: BTreeMap::new(),
            last_ack: None,
            last_prefix_sent: None,
            last_committed_sent: 0,
            awaiting_stream: false,
            clean: false,
            upstream_committed: None,
            refused: false,
            chain,
        }
    }

    pub fn is_head(&self) -> bool {
        self.chain.head() == self.me
    }

    /// The head takes writes: it has checked that no replica is ahead of it.
    pub fn takes_writes(&self) -> bool {
        self.is_head() && self.recovery.is_none()
    }

    pub fn position(&self) -> Position {
        Position {
            seq: self.own.applied,
            version: self.own_version,
        }
    }

    /// Client writes wait here for their ack point (the clock matters to them).
    pub fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// The successor a stream waits on for room in its outbox: entries are due to it and
    /// were not sent.
    pub fn paused_on(&self) -> Option<NodeId> {
        let down = self.down.as_ref()?;
        let sent = down.sent.filter(|_| down.link_up && !down.transferring())?;
        down.queue
            .back()
            .filter(|e| e.seq > sent)
            .map(|_| down.node)
    }

    pub fn successor_link_up(&self) -> bool {
        self.down.as_ref().is_some_and(|d| d.link_up)
    }

    /// The successor, and how far it is behind this replica in this vnode: writes, and the
    /// version of the oldest one it lacks if the queue still holds it. Nothing until the
    /// successor has said where it stands (after a restart, its position is not known).
    pub fn successor_lag(&self) -> Option<(NodeId, SuccessorLag)> {
        let down = self.down.as_ref()?;
        down.reported?;
        let acked = down.own.applied;
        let writes = self.own.applied.saturating_sub(acked);
        let mut lag = SuccessorLag::default();
        if writes > 0 {
            let queued = down.queue.front().filter(|front| front.seq <= acked + 1);
            let oldest = queued.and_then(|front| down.queue.get((acked + 1 - front.seq) as usize));
            lag.writes = writes;
            lag.oldest_missing_version = oldest.map(|e| e.version);
            lag.unqueued = oldest.is_none();
        }
        Some((down.node, lag))
    }

    // ------------------------------------------------------------------ messages

    pub fn handle_message(&mut self, from: NodeId, body: Body, cx: &mut Ctx<'_>) -> QueueDelta {
        let from_predecessor = self.chain.predecessor(self.me) == Some(from);
        let from_successor = self.down.as_ref().is_some_and(|d| d.node == from);
        match body {
            Body::Append {
                after,
                entries,
                prefix,
                committed,
            } if from_predecessor => {
                let delta = self.handle_append(after, entries, prefix, cx);
                if after <= self.own.applied {
                    let known = self.upstream_committed.unwrap_or(0);
                    self.upstream_committed = Some(known.max(committed));
                }
                delta
            }
            Body::Ack { own, suffix } if from_successor => self.handle_ack(own, suffix, cx),
            Body::Position(position) => {
                self.handle_report(from, from_successor, position, false, cx);
                0
            }
            Body::ResumeTransfer(position) => {
                self.handle_report(from, from_successor, position, true, cx);
                0
            }
            Body::Probe if self.chain.head() == from => {
                cx.send(
                    from,
                    self.vnode,
                    self.chain.epoch,
                    Body::Position(self.position()),
                );
                0
            }
            Body::State {
                transfer,
                part,
                since,
                through,
                entries,
                keep,
                last,
            } => {
                let part = ReceivedPart {
                    transfer,
                    part,
                    since,
                    through,
                    entries,
                    keep,
                    last,
                };
                self.handle_state(from, part, cx)
            }
            Body::StateDone { transfer } => self.handle_state_done(from, transfer),
            Body::PullState { since } if self.chain.head() == from => {
                self.serve_pull(from, since, cx);
                0
            }
            // A message from a replica that has no business sending it (a stale chain).
            _ => 0,
        }
    }

    pub fn describe(&self) -> String {
        let down = self.down.as_ref().map(|d| {
            format!(
                "down(node {} up {} sent {:?} base {:?} queue {}..{} ({} entries) transfer {:?} needs {} deferred {:?} own {:?} suffix {:?})",
                d.node,
                d.link_up,
                d.sent,
                d.base,
                d.queue.front().map_or(0, |e| e.seq),
                d.queue.back().map_or(0, |e| e.seq),
                d.queue.len(),
                d.transfer,
                d.needs_transfer,
                d.deferred,
                d.own,
                d.suffix
            )
        });
        format!(
            "vnode {} epoch {} chain {:?} me {} own {:?} version {} prefix {:?} committed {} recovery {:?} awaiting {} incoming {:?} cap {:?} waiters {} {}",
            self.vnode,
            self.chain.epoch,
            self.chain.replicas,
            self.me,
            self.own,
            self.own_version,
            self.prefix,
            self.committed,
            self.recovery,
            self.awaiting_stream,
            self.incoming,
            self.ack_cap,
            self.waiters.len(),
            down.unwrap_or_default()
        )
    }

    /// Drops the retention queue (its successor is down and the shard's queues are full): the
    /// successor gets a state transfer when it returns. Returns the bytes freed.
    pub fn drop_queue(&mut self) -> usize {
        let Some(down) = &mut self.down else {
            return 0;
        };
        let freed = down.queue_bytes;
        down.queue.clear();
        down.queue_bytes = 0;
        down.base = None;
        freed
    }

    /// Fails every waiting write (the store failed, the node stops).
    pub fn fail_waiters(&mut self, failure: WriteFailure, cx: &mut Ctx<'_>) {
        for waiter in std::mem::take(&mut self.waiters).into_values().flatten() {
            cx.effects.push_back(Effect::WriteDone {
                ticket: waiter.ticket,
                result: Err(failure.clone()),
            });
        }
    }
}
