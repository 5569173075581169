//! One vnode's replication state on one replica.

use std::collections::{BTreeMap, VecDeque};

use super::msg::{Body, Entry, Level, Outgoing, PeerMsg, Position, Watermarks};
use super::progress::{Progress, SuccessorLag};
use super::replicator::{Effect, Ticket, VnodeStore, WriteFailure};
use super::transfer::{InTransfer, OutTransfer, ReceivedPart};
use crate::placement::{Chain, NodeId};

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
    /// Appends were refused while the shard's queues were full: ask the predecessor to resend
    /// once they have room (`resume_refused`).
    pub refused: bool,
}

/// What a handler needs around it: the store, the effects to emit, and settings.
pub(crate) struct Ctx<'a> {
    pub store: &'a mut dyn VnodeStore,
    pub effects: &'a mut VecDeque<Effect>,
    pub durable_commit: bool,
    pub now_ms: u64,
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
            own_version: position.version,
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

    // ------------------------------------------------------------------ links

    /// The connection to `node` came up: resume whatever this vnode does with it.
    pub fn handle_link_up(&mut self, node: NodeId, cx: &mut Ctx<'_>) {
        let epoch = self.chain.epoch;
        if self.chain.predecessor(self.me) == Some(node) {
            self.awaiting_stream = true;
            cx.send(node, self.vnode, epoch, self.position_report());
            // The predecessor may have restarted and forgotten what this replica has: tell it
            // again, even if nothing changed here (an idle vnode sends no other Ack, and a
            // restarted head or middle learns the commit point only from one).
            self.last_ack = None;
        }
        if let Some(recovery) = &self.recovery {
            if recovery.pulling_from.is_none() && self.chain.position(node).is_some() {
                cx.send(node, self.vnode, epoch, Body::Probe);
            }
        }
        let own = self.position();
        if let Some(down) = self.down.as_mut().filter(|d| d.node == node) {
            // Tell the successor where the chain stands even if nothing new is due: a
            // restarted successor learns the prefix and the commit point only from an Append.
            self.last_prefix_sent = None;
            down.link_up = true;
            // What was sent on the old connection may be lost: go on from what the successor
            // acknowledged (it skips what it has); anything else waits for its Position, which
            // it sends on every new link and which settles it either way.
            let acked = down.own.applied;
            let covered = down.covers(Position {
                seq: acked,
                version: 0,
            });
            down.sent = None;
            if acked <= own.seq && covered && down.reported.is_some() {
                down.sent = Some(acked);
            }
        }
    }

    /// The connection to `node` broke: what was in flight on it may be lost.
    pub fn handle_link_down(&mut self, node: NodeId) {
        if self.chain.predecessor(self.me) == Some(node) {
            self.last_ack = None; // an Ack made while the link is down is dropped
        }
        if let Some(down) = self.down.as_mut().filter(|d| d.node == node) {
            down.link_up = false;
            down.sent = None;
            down.transfer = None; // what was in flight is lost: it starts again from a Position
        }
        if self.incoming.is_some_and(|t| t.from == node) {
            self.incoming = None;
        }
        if self.chain.head() == node {
            self.serving_pull = None;
        }
        if let Some(recovery) = &mut self.recovery {
            if recovery.pulling_from == Some(node) {
                recovery.pulling_from = None;
            }
            recovery.answers.remove(&node);
        }
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

    fn handle_append(
        &mut self,
        after: u64,
        entries: Vec<Entry>,
        prefix: Watermarks,
        cx: &mut Ctx<'_>,
    ) -> QueueDelta {
        if self.refuses_appends(cx) {
            self.refused = true;
            return 0;
        }
        if after > self.own.applied {
            // A gap: the stream skipped something (a lost connection, a restart). Ask again,
            // once until something answers.
            if !self.awaiting_stream {
                self.awaiting_stream = true;
                let predecessor = self.chain.predecessor(self.me).expect("not the head");
                let report = self.position_report();
                cx.send(predecessor, self.vnode, self.chain.epoch, report);
            }
            return 0;
        }
        self.awaiting_stream = false;
        self.prefix = prefix;
        let mut delta = 0;
        for entry in entries {
            if entry.seq <= self.own.applied {
                continue; // already here: a resend overlapping what arrived before
            }
            if entry.seq != self.own.applied + 1 {
                break; // not contiguous: the next Append after a resync fills it
            }
            if cx
                .store
                .apply(self.vnode, &entry, self.chain.epoch, cx.now_ms)
                .is_err()
            {
                // The store cannot take it now (full disk, overload): ask the predecessor to
                // resend from here once it can (`resume_refused`); nothing else would, if the
                // vnode gets no later write to show the gap.
                self.awaiting_stream = false;
                self.refused = true;
                break;
            }
            self.own.applied = entry.seq;
            self.own_version = entry.version;
            delta += self.enqueue(entry);
        }
        delta
    }

    /// Whether appends wait for room: only a replica that has a successor to feed and is behind
    /// with it refuses, so a tail always takes its appends and every chain drains from its
    /// end (a shard-wide refusal could wait in a cycle: A's queue on B's, B's on C's, C's on A's).
    fn refuses_appends(&self, cx: &Ctx<'_>) -> bool {
        cx.congested && self.down.as_ref().is_some_and(|d| d.queue_bytes > 0)
    }

    /// The shard's queues have room again: ask the predecessor to resend what was refused.
    pub fn resume_refused(&mut self, cx: &mut Ctx<'_>) {
        if !std::mem::take(&mut self.refused) {
            return;
        }
        self.awaiting_stream = false;
        self.ask_again(cx);
    }

    /// Queues an entry for the successor (if any) and streams it when the stream is live.
    fn enqueue(&mut self, entry: Entry) -> QueueDelta {
        let Some(down) = &mut self.down else {
            return 0;
        };
        let bytes = entry.bytes();
        down.queue_bytes += bytes;
        down.queue.push_back(entry);
        bytes as isize
    }

    fn handle_ack(&mut self, own: Watermarks, suffix: Watermarks, _cx: &mut Ctx<'_>) -> QueueDelta {
        let down = self.down.as_mut().expect("acks come from a successor");
        down.own = Watermarks {
            applied: down.own.applied.max(own.applied),
            durable: down.own.durable.max(own.durable),
        };
        down.suffix = Watermarks {
            applied: down.suffix.applied.max(suffix.applied),
            durable: down.suffix.durable.max(suffix.durable),
        };
        // The successor has these durably: they will never be asked for again. (While a
        // transfer to it is incomplete its acks claim no more than where it started, and
        // `needs_transfer` keeps the queue from serving it anyway.)
        let mut freed = 0;
        while down
            .queue
            .front()
            .is_some_and(|e| e.seq <= down.own.durable)
        {
            let entry = down.queue.pop_front().expect("front");
            down.queue_bytes -= entry.bytes();
            freed += entry.bytes() as isize;
            if down.base.is_none_or(|b| b.seq < entry.seq) {
                down.base = Some(Position {
                    seq: entry.seq,
                    version: entry.version,
                });
            }
        }
        -freed
    }

    /// Decides how to go on with a successor at `position`; true when it is resent entries
    /// from the queue.
    pub(super) fn handle_successor_position(
        &mut self,
        position: Position,
        cx: &mut Ctx<'_>,
    ) -> bool {
        let own = self.position();
        let down = self.down.as_mut().expect("a successor");
        down.link_up = true;
        down.reported = Some(position);
        down.own.applied = position.seq;
        down.own.durable = down.own.durable.min(position.seq);
        if position.seq > own.seq {
            // It is ahead (this replica lost writes in a crash): stream once caught up.
            down.deferred = Some(position);
            down.sent = None;
            down.transfer = None;
            return false;
        }
        down.deferred = None;
        // Tell it where the chain stands even if nothing new is due.
        self.last_prefix_sent = None;
        let down = self.down.as_mut().expect("a successor");
        let covered = (position.seq == own.seq && !down.needs_transfer) || down.covers(position);
        if covered {
            down.sent = Some(position.seq);
            down.transfer = None;
            // A successor that says it is behind (it reconnected, or refused appends while
            // its queues were full) is resent from the queue.
            return position.seq < own.seq;
        }
        // A Position while a transfer is under way means the successor gave it up (a store
        // error, a part lost): start again from where it is, unless nothing was sent yet of
        // one from that very position.
        let unsent_from_here = down
            .transfer
            .is_some_and(|t| t.parts == 0 && t.since == position);
        if !unsent_from_here {
            self.start_transfer(position, cx);
        }
        false
    }

    /// Where a replica stands: an answer to a recovering head's probe, and (from the
    /// successor) how to go on with it; `partial`: only a transfer can bring it up to date.
    fn handle_report(
        &mut self,
        from: NodeId,
        from_successor: bool,
        position: Position,
        partial: bool,
        cx: &mut Ctx<'_>,
    ) {
        if self.recovery.is_some() {
            self.handle_probe_answer(from, position, cx);
        }
        if !from_successor {
            return;
        }
        if partial {
            self.down.as_mut().expect("a successor").needs_transfer = true;
        }
        if self.handle_successor_position(position, cx) {
            cx.count_catch_up(from, false);
        }
    }

    /// What this replica says of where it stands to its predecessor (`transfer.rs`).
    pub(super) fn position_report(&self) -> Body {
        match self.ack_cap {
            Some(_) => Body::ResumeTransfer(self.position()),
            None => Body::Position(self.position()),
        }
    }

    fn handle_probe_answer(&mut self, from: NodeId, position: Position, cx: &mut Ctx<'_>) {
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        recovery.answers.insert(from, position);
        self.check_recovered(cx);
    }

    /// A recovering head is done once every other replica answered and it pulled from the one
    /// furthest ahead, if any was ahead of it.
    fn check_recovered(&mut self, cx: &mut Ctx<'_>) {
        let own = self.position();
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        if recovery.pulling_from.is_some() {
            return;
        }
        let others = self.chain.replicas.len() - 1;
        if recovery.answers.len() < others {
            return;
        }
        let ahead = recovery
            .answers
            .iter()
            .filter(|(_, p)| p.seq > own.seq)
            .max_by_key(|(node, p)| (p.seq, std::cmp::Reverse(**node)));
        match ahead {
            Some((&node, _)) => {
                recovery.pulling_from = Some(node);
                cx.send(
                    node,
                    self.vnode,
                    self.chain.epoch,
                    Body::PullState { since: own },
                );
            }
            None => self.recovery = None,
        }
    }

    // ------------------------------------------------------------------ writes

    /// A client write the shell applied as head: stream it, and wait for its ack point.
    pub fn handle_head_write(
        &mut self,
        entry: Entry,
        waiter: Option<(Ticket, Level, bool, u64)>,
        durable_seq: u64,
    ) -> QueueDelta {
        self.own.applied = entry.seq;
        self.own.durable = durable_seq;
        self.own_version = entry.version;
        if let Some((ticket, level, durable, deadline_ms)) = waiter {
            self.waiters.entry(entry.seq).or_default().push(Waiter {
                ticket,
                level,
                durable,
                deadline_ms,
            });
        }
        self.enqueue(entry)
    }

    /// The store made writes durable through `seq`.
    pub fn handle_durable(&mut self, seq: u64) {
        self.own.durable = self.own.durable.max(seq);
    }

    // ------------------------------------------------------------------ output

    /// After any input: stream what is due, acknowledge upstream, move the commit point,
    /// answer writers.
    pub fn flush(&mut self, cx: &mut Ctx<'_>) {
        self.own.durable = self
            .own
            .durable
            .max(cx.store.durable_seq(self.vnode))
            .min(self.own.applied);
        self.stream(cx);
        self.acknowledge(cx);
        self.commit(cx);
        self.release_reads(cx);
        self.settle(cx);
    }

    /// Releases the store's reads of this vnode once its copy holds every committed write:
    /// at once when writes count only once durable everywhere (a crash loses none) or the
    /// chain is this replica alone; for a head once it has checked the others; for the rest
    /// once the predecessor's commit point is reached.
    fn release_reads(&mut self, cx: &mut Ctx<'_>) {
        if self.clean {
            return;
        }
        if self.ack_cap.is_some() {
            return; // a transfer here is incomplete: released when one completes
        }
        // A replica other than the head waits for its predecessor's word even when nothing
        // committed can have been lost: it may hold a transfer cut short by its restart, which
        // only its predecessor can tell (a stream answering its Position says it is whole).
        let floor = if self.chain.replicas.len() == 1 {
            Some(self.own.applied)
        } else if self.is_head() {
            self.recovery.is_none().then_some(self.own.applied)
        } else {
            self.upstream_committed.filter(|&c| self.own.applied >= c)
        };
        if let Some(floor) = floor {
            self.clean = true;
            cx.store.release_reads(self.vnode, floor);
        }
    }

    fn prefix_through_me(&self) -> Watermarks {
        if self.is_head() {
            self.own
        } else {
            self.prefix.min(self.claimed())
        }
    }

    /// What this replica may say it has: its own watermarks, or no more than where it stood
    /// when a transfer started, until one completes (`transfer.rs`).
    pub(super) fn claimed(&self) -> Watermarks {
        match self.ack_cap {
            Some(cap) => self.own.min(Watermarks {
                applied: cap,
                durable: cap,
            }),
            None => self.own,
        }
    }

    fn stream(&mut self, cx: &mut Ctx<'_>) {
        let prefix = self.prefix_through_me();
        let applied = self.own.applied;
        let committed = self.committed;
        let (vnode, epoch) = (self.vnode, self.chain.epoch);
        let Some(down) = &mut self.down else {
            return;
        };
        if let Some(deferred) = down.deferred.filter(|d| applied >= d.seq) {
            // Caught up past the successor: it is a prefix of this copy again.
            down.deferred = None;
            down.sent = None;
            if !down.covers(deferred) {
                self.start_transfer(deferred, cx);
                return;
            }
            down.sent = Some(deferred.seq);
        }
        let Some(mut sent) = down.sent.filter(|_| down.link_up && !down.transferring()) else {
            return;
        };
        let mut sent_prefix = false;
        loop {
            let mut batch = Vec::new();
            let mut bytes = 0;
            // A link whose outbox is full takes no entries until the shell reports it drained
            // (`Replicator::handle_outbox`); the prefix and commit point still go.
            // The queue is in seq order: find the first unsent entry by bisection. A scan
            // from the front cost O(queue) per message, and a full 64 MiB queue (300 K small
            // entries) held the shard for up to 1.6 s under load.
            let unsent = match cx.has_room(down.node) {
                true => down.queue.partition_point(|e| e.seq <= sent),
                false => down.queue.len(),
            };
            for entry in down.queue.range(unsent..) {
                if bytes >= APPEND_BATCH_BYTES {
                    break;
                }
                bytes += entry.bytes();
                batch.push(entry.clone());
            }
            let prefix_changed =
                self.last_prefix_sent != Some(prefix) || committed > self.last_committed_sent;
            if batch.is_empty() && (sent_prefix || !prefix_changed) {
                break;
            }
            let after = sent;
            if let Some(last) = batch.last() {
                sent = last.seq;
            }
            let body = Body::Append {
                after,
                entries: batch,
                prefix,
                committed,
            };
            cx.send(down.node, vnode, epoch, body);
            self.last_prefix_sent = Some(prefix);
            self.last_committed_sent = committed;
            sent_prefix = true;
        }
        down.sent = Some(sent);
    }

    fn acknowledge(&mut self, cx: &mut Ctx<'_>) {
        let Some(predecessor) = self.chain.predecessor(self.me) else {
            return;
        };
        let own = self.claimed();
        let suffix = match &self.down {
            Some(down) => own.min(down.suffix),
            None => own,
        };
        if self.last_ack == Some((own, suffix)) {
            return;
        }
        self.last_ack = Some((own, suffix));
        let body = Body::Ack { own, suffix };
        cx.send(predecessor, self.vnode, self.chain.epoch, body);
    }

    fn commit(&mut self, cx: &mut Ctx<'_>) {
        let prefix = self.prefix_through_me();
        let whole = match &self.down {
            Some(down) => prefix.min(down.suffix),
            None => prefix,
        };
        let committed = whole.pick(cx.durable_commit).min(self.own.applied);
        if committed > self.committed {
            self.committed = committed;
            cx.store.set_committed(self.vnode, committed);
        }
    }

    /// Answers the writes whose ack point was reached, and those whose deadline passed.
    fn settle(&mut self, cx: &mut Ctx<'_>) {
        if self.waiters.is_empty() {
            return;
        }
        let own = self.own;
        let next = self.down.as_ref().map(|d| (d.own, d.suffix));
        let reached = |level: Level, durable: bool, seq: u64| {
            let mine = own.pick(durable) >= seq;
            let (next_own, all) = match next {
                Some((next_own, suffix)) => {
                    (next_own.pick(durable) >= seq, suffix.pick(durable) >= seq)
                }
                None => (true, true),
            };
            match level {
                Level::Eventual => mine,
                Level::Session => mine && next_own,
                Level::Strong => mine && all,
            }
        };
        let mut done = Vec::new();
        for (&seq, waiters) in &mut self.waiters {
            waiters.retain(|w| {
                let result = if reached(w.level, w.durable, seq) {
                    Ok(())
                } else if cx.now_ms >= w.deadline_ms {
                    Err(WriteFailure::Timeout)
                } else {
                    return true;
                };
                done.push((w.ticket, result));
                false
            });
        }
        self.waiters.retain(|_, w| !w.is_empty());
        for (ticket, result) in done {
            cx.effects.push_back(Effect::WriteDone { ticket, result });
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
