//! Acknowledgements: what the successor and the replicas after it have, the `Ack` this replica
//! owes its predecessor, the commit point, and the client writes whose ack point is reached.

use super::{Ctx, QueueDelta, VnodeState};
use crate::replication::msg::{Body, Level, Position, Watermarks};
use crate::replication::replicator::{Effect, WriteFailure};

impl VnodeState {
    pub(super) fn handle_ack(
        &mut self,
        own: Watermarks,
        suffix: Watermarks,
        _cx: &mut Ctx<'_>,
    ) -> QueueDelta {
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

    pub(super) fn acknowledge(&mut self, cx: &mut Ctx<'_>) {
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

    pub(super) fn commit(&mut self, cx: &mut Ctx<'_>) {
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

    /// The earliest deadline of a write waiting here (monotonic ms).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.waiters.values().flatten().map(|w| w.deadline_ms).min()
    }

    /// Answers the writes whose ack point was reached, and those whose deadline passed.
    pub(super) fn settle(&mut self, cx: &mut Ctx<'_>) {
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
                } else if cx.now.mono_ms >= w.deadline_ms {
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
}
