//! The stream to the successor: after any input, what is due goes out in `Append`s of up to
//! `APPEND_BATCH_BYTES`, paced by the link's outbox.

use super::{Ctx, VnodeState, APPEND_BATCH_BYTES};
use crate::replication::msg::{Body, Watermarks};

impl VnodeState {
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

    pub(super) fn prefix_through_me(&self) -> Watermarks {
        if self.is_head() {
            self.own
        } else {
            self.prefix.min(self.claimed())
        }
    }

    /// What this replica may say it has: its own watermarks, or no more than where it stood
    /// when a transfer started, until one completes (`transfer.rs`).
    pub(crate) fn claimed(&self) -> Watermarks {
        match self.ack_cap {
            Some(cap) => self.own.min(Watermarks {
                applied: cap,
                durable: cap,
            }),
            None => self.own,
        }
    }

    pub(super) fn stream(&mut self, cx: &mut Ctx<'_>) {
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
}
