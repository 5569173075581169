//! Expiry under skewed clocks (`FaultModel::skew`): each node's wall clock is off the
//! simulation's by up to `MAX_SKEW_MS` either way, and some owned writes carry a TTL. The
//! replication core runs deadlines on the monotonic clock and the stores expire keys on their
//! own wall clocks, so replicas may disagree about a key only within the skew of its expiry.
//!
//! What is checked: a key whose write expired may read as absent (a `session` read, the end
//! state) once any node's clock may have passed its expiry; replicas are compared as of a time
//! past every node's clock, so a key some store already dropped as expired counts as absent on
//! all of them; nothing else changes.

use tessera_core::placement::NodeId;
use tessera_core::replication::Now;

use crate::world::World;

/// The most a node's wall clock is off the simulation's.
pub const MAX_SKEW_MS: u64 = 200;

/// Gives each node its skew, with `FaultModel::skew` (none otherwise).
pub fn skew_clocks(world: &mut World) {
    if !world.config.more.skew {
        return;
    }
    for node in 0..world.nodes.len() {
        let skew = world.fault_rng.below(2 * MAX_SKEW_MS + 1) as i64 - MAX_SKEW_MS as i64;
        world.nodes[node].wall_skew_ms = skew;
    }
}

impl World {
    /// `node`'s clocks now: the simulation's as its monotonic clock, its own wall clock.
    pub fn clock(&self, node: NodeId) -> Now {
        let skew = self.nodes[node as usize].wall_skew_ms;
        Now {
            mono_ms: self.now_ms,
            wall_ms: self.now_ms.saturating_add_signed(skew),
        }
    }

    /// A TTL for an owned write: with `skew`, one write in three lives 50-600 ms.
    pub fn owned_ttl_ms(&mut self) -> u64 {
        if !self.config.more.skew || self.fault_rng.below(3) != 0 {
            return 0;
        }
        *self.injected.entry("ttl").or_default() += 1;
        50 + self.fault_rng.below(551)
    }

    /// A time past every node's wall clock: what is expired there is expired everywhere.
    pub fn past_every_clock_ms(&self) -> u64 {
        self.now_ms + MAX_SKEW_MS + 1
    }

    /// Whether a write expiring at `expiry_ms` (0: never) may read as absent now on some node.
    pub fn may_have_expired(&self, expiry_ms: u64) -> bool {
        expiry_ms != 0 && expiry_ms <= self.past_every_clock_ms()
    }
}
