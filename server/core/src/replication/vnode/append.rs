//! Writes arriving: the head's own (applied by the shell, then streamed) and a predecessor's
//! `Append`s, taken in sequence order, with backpressure when the shard's queues are full.

use super::{Ctx, QueueDelta, VnodeState, Waiter};
use crate::replication::msg::{Entry, Level, Watermarks};
use crate::replication::replicator::Ticket;

impl VnodeState {
    pub(super) fn handle_append(
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
                .apply(self.vnode, &entry, self.chain.epoch, cx.now.wall_ms)
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
    pub(super) fn refuses_appends(&self, cx: &Ctx<'_>) -> bool {
        cx.congested && self.behind_successor()
    }

    /// This replica holds entries its successor has not made durable.
    pub fn behind_successor(&self) -> bool {
        self.down.as_ref().is_some_and(|d| d.queue_bytes > 0)
    }

    /// This replica takes appends again: ask the predecessor to resend what was refused.
    pub fn resume_refused(&mut self, cx: &mut Ctx<'_>) {
        if !std::mem::take(&mut self.refused) {
            return;
        }
        self.awaiting_stream = false;
        self.ask_again(cx);
    }

    /// Queues an entry for the successor (if any) and streams it when the stream is live.
    pub(super) fn enqueue(&mut self, entry: Entry) -> QueueDelta {
        let Some(down) = &mut self.down else {
            return 0;
        };
        let bytes = entry.bytes();
        down.queue_bytes += bytes;
        down.queue.push_back(entry);
        bytes as isize
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
}
