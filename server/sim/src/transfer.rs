//! State transfers in the simulation: the sending side as the shell runs it (without its
//! pacing), in tiny parts so that a cut link or a crash can end one in the middle.

use tessera_core::placement::NodeId;
use tessera_core::replication::Now;
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

impl World {
    /// Serves a state transfer at once, in small parts (so that a cut link or a crash can
    /// end it in the middle): the sending side as the shell runs it, without its pacing.
    pub(crate) fn serve_state(
        &mut self,
        node: NodeId,
        vnode: u16,
        to: NodeId,
        since: tessera_core::replication::Position,
        transfer: u64,
    ) {
        let now = self.now_ms;
        let slot = &mut self.nodes[node as usize];
        let running = slot.running.as_mut().expect("up");
        if self.config.watch_vnode == Some(vnode) {
            eprintln!("{now} state read at {node} for {to} since {since:?}");
        }
        let mut source = TransferSource::new(vnode, since, SIM_TRANSFER_LIMITS);
        loop {
            match source.next(&running.store, now) {
                TransferNext::Read(items) => {
                    for item in items {
                        source.push(read_item(&slot.disk, item));
                    }
                }
                TransferNext::Yield => {}
                TransferNext::Send(part) => {
                    let replicator = &mut running.replicator;
                    if !replicator.handle_state_part(
                        vnode,
                        to,
                        transfer,
                        part,
                        &mut running.store,
                        Now::both(now),
                    ) {
                        return;
                    }
                }
                TransferNext::Done => return,
            }
        }
    }
}
