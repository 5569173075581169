//! States the cluster must never reach, checked after every step of a run: each replica's own
//! (`tessera-core`'s `vnode/invariants.rs`: applied past durable, a sequence gap in a queue, a
//! stream to a replica that is not the successor) and one that needs every replica's view:
//! two replicas heading one vnode in one epoch.

use std::collections::BTreeMap;

use tessera_core::placement::NodeId;

use crate::world::World;

/// The first broken invariant in the running replicas, if any.
pub fn violation(world: &World) -> Option<String> {
    let mut heads: BTreeMap<(u16, u64), NodeId> = BTreeMap::new();
    for node in &world.nodes {
        let Some(running) = &node.running else {
            continue;
        };
        if let Some(violation) = running.replicator.invariant_violation() {
            return Some(violation);
        }
        for (vnode, epoch) in running.replicator.heads() {
            if let Some(other) = heads.insert((vnode, epoch), node.id) {
                return Some(format!(
                    "vnode {vnode} has two heads in epoch {epoch}: nodes {other} and {}",
                    node.id
                ));
            }
        }
    }
    None
}
