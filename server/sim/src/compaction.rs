//! Compaction in the simulation (`FaultModel::compaction`): segments as small as the store
//! allows, values of 8-40 KiB on owned keys (so that a run fills several segments with
//! overwritten versions), and now and then each running node compacts one segment whole:
//! its live records are copied to the log's head, synced, and the segment deleted, while
//! streams, transfers and crashes go on around it.

use tessera_core::placement::NodeId;
use tessera_store::ondisk::{BLOCK_BYTES, MAX_RECORD_BYTES};

use crate::world::World;

/// The smallest segment the store takes: two records of the largest size, in whole blocks.
pub const SEGMENT_BYTES: u64 = (2 * MAX_RECORD_BYTES as u64).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;

/// Steps between compaction passes over the nodes.
const EVERY_STEPS: u64 = 50;

impl World {
    /// Every `EVERY_STEPS`, each running node compacts a segment if one is due.
    pub(crate) fn compact_some(&mut self, step: u64) {
        if !self.config.more.compaction || !step.is_multiple_of(EVERY_STEPS) {
            return;
        }
        for node in 0..self.nodes.len() as NodeId {
            if self.is_paused(node) {
                continue;
            }
            let wall_ms = self.clock(node).wall_ms;
            let slot = &mut self.nodes[node as usize];
            let Some(running) = slot.running.as_mut() else {
                continue;
            };
            let done = slot.disk.compact(&mut running.store, wall_ms);
            if let Ok(Some(victim)) = done {
                self.note(&[11, u64::from(node), u64::from(victim)]);
                *self.injected.entry("compaction").or_default() += 1;
            }
            self.after_disk_work(node, done.map(|_| ()));
        }
    }

    /// An owned key's value: padded to 8-40 KiB with compaction on, so that segments fill.
    pub(crate) fn owned_value(&mut self, text: String) -> Vec<u8> {
        let mut value = text.into_bytes();
        if self.config.more.compaction {
            let size = 8 * 1024 + self.fault_rng.below(32 * 1024) as usize;
            value.resize(size.max(value.len()), b'.');
        }
        value
    }
}
