//! State transfers in the simulation: the sending side as the shell runs it (without its
//! pacing), in tiny parts so that a cut link or a crash can end one in the middle.

use tessera_core::placement::NodeId;
use tessera_store::testing::MemDisk;
use tessera_store::{finish_state_read, StateItem, TransferLimits, TransferNext, TransferSource};

use crate::world::World;

/// Small transfer parts, passes and walk steps, so that transfers come in many parts.
const SIM_TRANSFER_LIMITS: TransferLimits = TransferLimits {
    keys_per_pass: 4,
    part_bytes: 256,
    keep_per_part: 4,
    walk_step: 8,
    reads_at_once: 3,
};

/// A transfer's item, read from the simulated disk where it is not in memory.
pub(crate) fn read_item(disk: &MemDisk, item: StateItem) -> tessera_core::replication::Entry {
    match item {
        StateItem::Ready(entry) => entry,
        StateItem::OnDisk { digest, read } => {
            finish_state_read(&read, digest, &disk.read(&read)).expect("intact records")
        }
    }
}

/// A state transfer being sent a part at a time (`FaultModel::slow_transfers`).
pub(crate) struct Sending {
    node: NodeId,
    vnode: u16,
    to: NodeId,
    transfer: u64,
    source: TransferSource,
}

/// What one step of a transfer did.
enum Stepped {
    /// A part went out (or it waits for reads): more to come.
    Going,
    /// Done, abandoned, or its sender is gone.
    Over,
}

impl World {
    /// Serves a state transfer: at once, in small parts (so that a cut link or a crash can end
    /// it in the middle), or with `slow_transfers` one part per step, interleaved with the
    /// live stream, writes, faults and restarts. The sending side as the shell runs it,
    /// without its pacing.
    pub(crate) fn serve_state(
        &mut self,
        node: NodeId,
        vnode: u16,
        to: NodeId,
        since: tessera_core::replication::Position,
        transfer: u64,
    ) {
        if self.config.watch_vnode == Some(vnode) {
            eprintln!(
                "{} state read at {node} for {to} since {since:?}",
                self.now_ms
            );
        }
        let mut sending = Sending {
            node,
            vnode,
            to,
            transfer,
            source: TransferSource::new(vnode, since, SIM_TRANSFER_LIMITS),
        };
        if self.config.more.slow_transfers {
            self.sending.push(sending);
            return;
        }
        while let Stepped::Going = self.step_transfer(&mut sending) {}
    }

    /// Each transfer under way sends its next part.
    pub(crate) fn advance_transfers(&mut self) {
        if self.sending.is_empty() {
            return;
        }
        let mut sending = std::mem::take(&mut self.sending);
        sending.retain_mut(|one| matches!(self.step_transfer(one), Stepped::Going));
        // Transfers started meanwhile (by the drains) go after these.
        sending.append(&mut self.sending);
        self.sending = sending;
        for node in 0..self.nodes.len() as NodeId {
            self.drain(node);
        }
    }

    /// The sender's crash ends its transfers (a restarted replicator numbers them afresh).
    pub(crate) fn drop_transfers_of(&mut self, node: NodeId) {
        self.sending.retain(|one| one.node != node);
    }

    /// Runs `one` until it sends a part or ends.
    fn step_transfer(&mut self, one: &mut Sending) -> Stepped {
        let clock = self.clock(one.node);
        let paused = self.is_paused(one.node);
        let slot = &mut self.nodes[one.node as usize];
        let Some(running) = slot.running.as_mut().filter(|_| !paused) else {
            return match paused {
                true => Stepped::Going,
                false => Stepped::Over,
            };
        };
        loop {
            match one.source.next(&running.store, clock.wall_ms) {
                TransferNext::Read(items) => {
                    for item in items {
                        one.source.push(read_item(&slot.disk, item));
                    }
                }
                TransferNext::Yield => {}
                TransferNext::Send(part) => {
                    let sent = running.replicator.handle_state_part(
                        one.vnode,
                        one.to,
                        one.transfer,
                        part,
                        &mut running.store,
                        clock,
                    );
                    return match sent {
                        true => Stepped::Going,
                        false => Stepped::Over,
                    };
                }
                TransferNext::Done => return Stepped::Over,
            }
        }
    }
}
