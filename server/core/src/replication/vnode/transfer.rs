//! State transfers: how a replica that the retention queue cannot catch up gets its
//! predecessor's state of a vnode, and how a restarted head pulls it from a replica ahead of it.
//!
//! The protocol (the sender's reading is `tessera-store`'s `TransferSource`):
//!
//! 1. The sender decides on a transfer from the receiver's position `since` and names it with
//!    an id (`Effect::ReadState`). Its stream to the receiver pauses.
//! 2. Parts go out in order, each paced by the link's flow control in the shell: first each
//!    live key's newest write newer than `since`, in version order; then the live key digests
//!    by digest range, each part read when it is built (`Body::State`, `keep`). The last part
//!    carries `caught_up_at`, the sender's applied sequence number when it read its last keep part.
//! 3. The receiver takes part 0 only at or past `since` (else it asks again from where it is),
//!    and from then on only the next part of the same transfer: a part out of order, from an
//!    abandoned transfer or after a store error ends the transfer there, and the receiver asks
//!    again from its position. Because values come in version order, whatever prefix it applied
//!    is a valid position for the next transfer (the resume point): nothing is skipped, and
//!    the keep list, sent whole again, brings every delete.
//! 4. Until a transfer completes, the receiver's acknowledgements claim no more than where it
//!    stood when the first one started (`ack_cap`, kept across a restart by the store's
//!    transfer marks, `VnodeStore::start_state` and `finish_state`): its position is good only as the start of
//!    another transfer, never for a resend from the queue (which does not carry the deletes
//!    that only the keep list brings), and a write in that window is not acknowledged on its
//!    account. It serves no read (`VnodeStore::hold_reads`) until the transfer completes and it
//!    has applied `caught_up_at`.
//! 5. On the last part, the receiver moves to `through` and answers `StateDone`; only then does
//!    the sender count the receiver as holding `through` and resend from its queue again
//!    (`needs_transfer`). The sender drops queue entries the transfer covers as parts go out,
//!    so a long transfer does not fill the shard's queues.
//!
//! A link that goes down abandons the transfer on both sides (what was in flight is lost); the
//! receiver's `Position` on the new link starts the next one from its position.

use super::{Ctx, QueueDelta, VnodeState};
use crate::placement::NodeId;
use crate::replication::msg::{Body, Entry, KeepRange, Position};
use crate::replication::replicator::{Effect, StatePart};

/// A transfer this replica sends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutTransfer {
    pub id: u64,
    pub since: Position,
    /// Parts handed to the link so far.
    pub parts: u32,
    /// The values went through this position (known from the first keep part).
    pub through: Position,
    /// Every part was sent: the stream goes on after `through`.
    pub last_sent: bool,
}

impl OutTransfer {
    pub(super) fn new(id: u64, since: Position) -> OutTransfer {
        OutTransfer {
            id,
            since,
            parts: 0,
            through: Position::default(),
            last_sent: false,
        }
    }

    /// Still sending: the stream to its receiver waits.
    pub fn sending(&self) -> bool {
        !self.last_sent
    }
}

/// A transfer this replica receives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InTransfer {
    pub from: NodeId,
    pub id: u64,
    pub next_part: u32,
}

/// A part of a transfer, as received.
pub(crate) struct ReceivedPart {
    pub transfer: u64,
    pub part: u32,
    pub since: Position,
    pub through: Position,
    pub entries: Vec<Entry>,
    pub keep: Option<KeepRange>,
    pub last: Option<u64>,
}

impl VnodeState {
    /// Starts a transfer to the successor from `since`, abandoning any other.
    pub(crate) fn start_transfer(&mut self, since: Position, cx: &mut Ctx<'_>) {
        let vnode = self.vnode;
        let down = self.down.as_mut().expect("a successor");
        let id = cx.new_transfer_id();
        down.transfer = Some(OutTransfer::new(id, since));
        down.needs_transfer = true;
        down.sent = None;
        let to = down.node;
        cx.effects.push_back(Effect::ReadState {
            vnode,
            to,
            since,
            transfer: id,
        });
        cx.count_catch_up(to, true);
    }

    /// A restarted head asks for this replica's state newer than `since`.
    pub(crate) fn serve_pull(&mut self, head: NodeId, since: Position, cx: &mut Ctx<'_>) {
        let id = cx.new_transfer_id();
        self.serving_pull = Some(OutTransfer::new(id, since));
        cx.effects.push_back(Effect::ReadState {
            vnode: self.vnode,
            to: head,
            since,
            transfer: id,
        });
    }

    pub(super) fn out_transfer(&mut self, to: NodeId, id: u64) -> Option<&mut OutTransfer> {
        let to_successor = self
            .down
            .as_mut()
            .filter(|d| d.node == to && d.link_up)
            .and_then(|d| d.transfer.as_mut());
        match to_successor {
            Some(out) => Some(out),
            None => self.serving_pull.as_mut(),
        }
        .filter(|t| t.id == id)
    }

    /// Whether transfer `id` to `to` still has parts to send.
    pub fn sending_transfer(&self, to: NodeId, id: u64) -> bool {
        let down = self
            .down
            .as_ref()
            .filter(|d| d.node == to && d.link_up)
            .and_then(|d| d.transfer);
        let pull = self.serving_pull.filter(|_| self.chain.head() == to);
        down.or(pull).is_some_and(|t| t.id == id && t.sending())
    }

    /// Sends one part of transfer `id` to `to`; false when that transfer is no longer wanted.
    /// Returns the queue bytes freed: entries the part's values cover are never resent.
    pub(crate) fn send_state_part(
        &mut self,
        to: NodeId,
        id: u64,
        part: StatePart,
        cx: &mut Ctx<'_>,
    ) -> (bool, QueueDelta) {
        let (vnode, epoch) = (self.vnode, self.chain.epoch);
        let Some(out) = self.out_transfer(to, id).filter(|t| t.sending()) else {
            return (false, 0);
        };
        if part.keep.is_some() {
            out.through = part.through;
        }
        let covered_version = part.entries.last().map(|e| e.version);
        let body = Body::State {
            transfer: id,
            part: out.parts,
            since: out.since,
            through: part.through,
            entries: part.entries,
            keep: part.keep,
            last: part.last,
        };
        out.parts += 1;
        out.last_sent = part.last.is_some();
        let through = out.through;
        cx.send(to, vnode, epoch, body);
        let Some(down) = self.down.as_mut().filter(|d| d.node == to) else {
            return (true, 0);
        };
        if part.last.is_some() {
            down.sent = Some(through.seq);
        }
        // A queued write at or below the values sent is in the transfer, superseded by a
        // newer write of its key that is, or a delete the keep list brings.
        let mut freed = 0;
        while let Some(version) = covered_version {
            if down.queue.front().is_none_or(|e| e.version > version) {
                break;
            }
            let entry = down.queue.pop_front().expect("front");
            down.queue_bytes -= entry.bytes();
            freed += entry.bytes() as isize;
        }
        (true, -freed)
    }

    /// Transfer `id` to `to` cannot be read: abandoned (nothing more is sent; the receiver
    /// asks again when its link comes back).
    pub(crate) fn abandon_transfer(&mut self, to: NodeId, id: u64) {
        if let Some(down) = self.down.as_mut().filter(|d| d.node == to) {
            if down.transfer.is_some_and(|t| t.id == id) {
                down.transfer = None;
                down.sent = None;
            }
        }
        if self.serving_pull.is_some_and(|t| t.id == id) {
            self.serving_pull = None;
        }
    }

    /// The receiver applied every part of transfer `id`.
    pub(crate) fn handle_state_done(&mut self, from: NodeId, id: u64) -> QueueDelta {
        if self.serving_pull.is_some_and(|t| t.id == id) && self.chain.head() == from {
            self.serving_pull = None;
            return 0;
        }
        let Some(down) = self.down.as_mut().filter(|d| d.node == from) else {
            return 0;
        };
        let Some(out) = down.transfer.filter(|t| t.id == id && t.last_sent) else {
            return 0;
        };
        down.transfer = None;
        down.needs_transfer = false;
        // The successor holds `through`, and the queue holds every write after it.
        let mut freed = 0;
        while down.queue.front().is_some_and(|e| e.seq <= out.through.seq) {
            let entry = down.queue.pop_front().expect("front");
            down.queue_bytes -= entry.bytes();
            freed += entry.bytes() as isize;
        }
        down.base = Some(match down.base {
            Some(base) if base.seq > out.through.seq => base,
            _ => out.through,
        });
        -freed
    }

    /// A part of a transfer from `from` (the predecessor, or the replica a recovering head
    /// pulls from).
    pub(crate) fn handle_state(
        &mut self,
        from: NodeId,
        part: ReceivedPart,
        cx: &mut Ctx<'_>,
    ) -> QueueDelta {
        let pulling = self
            .recovery
            .as_ref()
            .is_some_and(|r| r.pulling_from == Some(from));
        if !pulling && self.chain.predecessor(self.me) != Some(from) {
            return 0;
        }
        if part.part == 0 {
            if part.since.seq > self.own.applied {
                // Sent for a position this replica no longer has (it restarted and lost
                // writes that were not durable): applying it would leave a hole.
                self.incoming = None;
                self.ask_again(cx);
                return 0;
            }
            if self.ack_cap.is_none() {
                // Durable before any part lands, so a restart knows the copy is not whole.
                if cx.store.start_state(self.vnode, self.own.applied).is_err() {
                    self.abort_incoming(cx);
                    return 0;
                }
                self.ack_cap = Some(self.own.applied);
            }
            self.incoming = Some(InTransfer {
                from,
                id: part.transfer,
                next_part: 0,
            });
            self.clean = false;
            cx.store.hold_reads(self.vnode);
        }
        let Some(incoming) = self
            .incoming
            .as_mut()
            .filter(|t| t.from == from && t.id == part.transfer)
        else {
            return 0; // a part of a transfer this replica gave up
        };
        if incoming.next_part != part.part {
            self.abort_incoming(cx);
            return 0;
        }
        incoming.next_part += 1;
        if self.apply_part(&part, cx).is_err() {
            self.abort_incoming(cx);
            return 0;
        }
        match part.last {
            Some(caught_up_at) => self.finish_incoming(from, &part, caught_up_at, cx),
            None => 0,
        }
    }

    pub(super) fn apply_part(
        &mut self,
        part: &ReceivedPart,
        cx: &mut Ctx<'_>,
    ) -> Result<(), String> {
        let epoch = self.chain.epoch;
        for entry in &part.entries {
            if entry.seq <= self.own.applied {
                continue;
            }
            cx.store.apply(self.vnode, entry, epoch, cx.now.wall_ms)?;
            self.own.applied = entry.seq;
            self.own_version = entry.version;
        }
        if let Some(keep) = &part.keep {
            cx.store
                .drop_absent(self.vnode, keep, part.through, epoch)?;
        }
        if part.last.is_some() {
            cx.store.finish_state(self.vnode, part.through)?;
        }
        Ok(())
    }

    /// A store error or a part out of order: the transfer ends here; this replica asks again
    /// from its position once its shard can take writes (`resume_refused`).
    pub(super) fn abort_incoming(&mut self, _cx: &mut Ctx<'_>) {
        self.incoming = None;
        self.refused = true;
    }

    /// Asks the sender of a transfer (the predecessor, or the replica pulled from) to start
    /// again from this replica's position, once until something answers.
    pub(crate) fn ask_again(&mut self, cx: &mut Ctx<'_>) {
        let pulling_from = self.recovery.as_ref().and_then(|r| r.pulling_from);
        let (to, body) = match pulling_from {
            Some(node) => (
                node,
                Body::PullState {
                    since: self.position(),
                },
            ),
            None => match self.chain.predecessor(self.me) {
                Some(node) if !self.awaiting_stream => (node, self.position_report()),
                _ => return,
            },
        };
        self.awaiting_stream = true;
        cx.send(to, self.vnode, self.chain.epoch, body);
    }

    pub(super) fn finish_incoming(
        &mut self,
        from: NodeId,
        part: &ReceivedPart,
        caught_up_at: u64,
        cx: &mut Ctx<'_>,
    ) -> QueueDelta {
        let through = part.through;
        self.own.applied = self.own.applied.max(through.seq);
        self.own_version = self.own_version.max(through.version);
        self.incoming = None;
        self.ack_cap = None;
        self.awaiting_stream = false;
        self.clean = true;
        cx.store
            .release_reads(self.vnode, caught_up_at.max(through.seq));
        cx.send(
            from,
            self.vnode,
            self.chain.epoch,
            Body::StateDone {
                transfer: part.transfer,
            },
        );
        if self
            .recovery
            .as_ref()
            .is_some_and(|r| r.pulling_from == Some(from))
        {
            self.recovery = None;
            cx.effects
                .push_back(Effect::TakesWrites { vnode: self.vnode });
        }
        // The copy equals the sender's as of `through`, which holds every write the sender
        // knew committed.
        let known = self.upstream_committed.unwrap_or(0);
        self.upstream_committed = Some(known.max(through.seq));
        let (delta, resync) = self.restart_successor();
        if let Some(reported) = resync {
            let _ = self.handle_successor_position(reported, cx);
        }
        delta
    }

    /// What the successor had queued before a transfer here no longer lines up with this copy,
    /// which now stands at `through`: a successor there is in step, one behind needs a
    /// transfer of its own.
    /// Returns the queue bytes freed, and where the successor last said it was, if it is
    /// connected (decide again from there).
    pub(super) fn restart_successor(&mut self) -> (QueueDelta, Option<Position>) {
        let through_here = self.position();
        let Some(down) = &mut self.down else {
            return (0, None);
        };
        let delta = -(down.queue_bytes as isize);
        down.queue.clear();
        down.queue_bytes = 0;
        down.base = Some(through_here);
        down.transfer = None;
        down.sent = None;
        (delta, down.reported.filter(|_| down.link_up))
    }
}
