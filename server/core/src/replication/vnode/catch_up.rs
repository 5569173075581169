//! Links coming and going, and a successor's report of where it stands: how this replica goes
//! on with its successor (resend from the queue, a state transfer, or wait until it is ahead)
//! and tells its predecessor where it is.

use super::{Ctx, VnodeState};
use crate::placement::NodeId;
use crate::replication::msg::{Body, Position};

impl VnodeState {
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
        // A recovering head asks every replica whose link comes up, even while it pulls from
        // another: if that pull's link then breaks, the head needs every answer again, and it
        // would never ask a replica whose link came up during the pull (simulator seed 252,
        // with a full disk failing the pull).
        if self.recovery.is_some() && self.chain.position(node).is_some() {
            cx.send(node, self.vnode, epoch, Body::Probe);
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
    pub(super) fn handle_report(
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
}
