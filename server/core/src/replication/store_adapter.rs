//! The replication core's view of a shard's store (`VnodeStore`) over `tessera-store`: each
//! call forwards to the store's own method of that job (`tessera_store::replica`).

use tessera_store::Store;

use super::msg::{Entry, KeepRange, Position};
use super::replicator::VnodeStore;

impl VnodeStore for Store {
    fn position(&self, vnode: u16) -> Position {
        self.vnode_position(vnode)
    }

    fn durable_seq(&self, vnode: u16) -> u64 {
        self.vnode_log(vnode).durable_seq
    }

    fn apply(&mut self, vnode: u16, entry: &Entry, epoch: u64, wall_ms: u64) -> Result<(), String> {
        self.apply_replicated(vnode, entry, epoch, wall_ms)
    }

    fn drop_absent(
        &mut self,
        vnode: u16,
        keep: &KeepRange,
        through: Position,
        epoch: u64,
    ) -> Result<(), String> {
        Store::drop_absent(self, vnode, keep, through, epoch)
    }

    fn start_state(&mut self, vnode: u16, seq: u64) -> Result<(), String> {
        self.mark_transfer_started(vnode, seq)
            .map_err(|e| e.to_string())
    }

    fn finish_state(&mut self, vnode: u16, through: Position) -> Result<(), String> {
        self.finish_transfer(vnode, through)
    }

    fn transfer_cut_short(&self, vnode: u16) -> Option<u64> {
        Store::transfer_cut_short(self, vnode)
    }

    fn hold_reads(&mut self, vnode: u16) {
        Store::hold_reads(self, vnode);
    }

    fn accepts_writes(&self) -> bool {
        Store::accepts_writes(self)
    }

    fn set_committed(&mut self, vnode: u16, seq: u64) {
        Store::set_committed(self, vnode, seq);
    }

    fn release_reads(&mut self, vnode: u16, floor: u64) {
        Store::release_reads(self, vnode, floor);
    }
}
