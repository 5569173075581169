//! A restarted head's recovery (it asks every replica where it stands and pulls from the one
//! furthest ahead before it takes writes), and when a replica's reads are released.

use super::{Ctx, VnodeState};
use crate::placement::NodeId;
use crate::replication::msg::{Body, Position};
use crate::replication::replicator::Effect;

impl VnodeState {
    pub(super) fn handle_probe_answer(
        &mut self,
        from: NodeId,
        position: Position,
        cx: &mut Ctx<'_>,
    ) {
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        recovery.answers.insert(from, position);
        self.check_recovered(cx);
    }

    /// A recovering head is done once every other replica answered and it pulled from the one
    /// furthest ahead, if any was ahead of it (or, with a transfer of its own cut short, in any
    /// case).
    pub(super) fn check_recovered(&mut self, cx: &mut Ctx<'_>) {
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
        // A head whose own pull was cut short by a restart (`ack_cap`) pulls again from the
        // replica furthest ahead even if none is ahead of it: only a transfer's keep list brings
        // the deletes it may lack, and one from a replica behind it drops only keys no newer
        // than that replica's position, which that replica holds whole (a pull from `own`
        // sends no values, so nothing of this copy's newer writes is lost).
        let partial = self.ack_cap.is_some();
        let ahead = recovery
            .answers
            .iter()
            .filter(|(_, p)| partial || p.seq > own.seq)
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
            None => {
                self.recovery = None;
                cx.effects
                    .push_back(Effect::TakesWrites { vnode: self.vnode });
            }
        }
    }

    /// Releases the store's reads of this vnode once its copy holds every committed write:
    /// at once when the chain is this replica alone; for a head once it has checked the
    /// others; for the rest once the predecessor's commit point is reached.
    ///
    /// The floor is everything this replica holds then: what it recovered from its disk is
    /// not among the store's unsettled writes, so a read would show it at once, committed or
    /// not. Reads wait until the commit point passes it (seed 95 of the richer faults: a middle
    /// restarted while its tail was cut off showed a `strong` reader a delete the tail did not
    /// have, and the tail then showed the value it had deleted).
    pub(super) fn release_reads(&mut self, cx: &mut Ctx<'_>) {
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
            let caught_up = self
                .upstream_committed
                .is_some_and(|c| self.own.applied >= c);
            caught_up.then_some(self.own.applied)
        };
        if let Some(floor) = floor {
            self.clean = true;
            cx.store.release_reads(self.vnode, floor);
        }
    }
}
