//! Each level's loss window, as the README states it, and the check that nothing acknowledged
//! was lost outside it.
//!
//! | level | `--fsync always` | `--fsync interval` |
//! |---|---|---|
//! | `eventual` | kept (only the head's disk dying loses it; never simulated) | may be lost if its head crashed after acknowledging it |
//! | `session` | kept (two disks dying) | may be lost if its head and middle both crashed after acknowledging it |
//! | `strong` | kept (three disks dying) | kept: all three replicas would have to crash within the sync window, and the simulation has at most two down at once, each back only after 50 ms |
//!
//! "Crashed after acknowledging it" is looser than the README's "before the write is synced":
//! the simulation does not tell when each copy was synced, so a crash later than the sync
//! window still excuses a loss. Everything outside these windows must survive.

use tessera_core::placement::NodeId;
use tessera_core::replication::Level;

use crate::world::World;

/// A write its owner issued.
#[derive(Debug)]
pub struct Issued {
    pub version: Option<u64>,
    /// `None`: a delete.
    pub value: Option<Vec<u8>>,
    pub level: Level,
    /// The vnode's head and middle when it was issued.
    pub head: NodeId,
    pub middle: Option<NodeId>,
    /// When it was acknowledged, if it was.
    pub acked_ms: Option<u64>,
    /// When it expires on its head's wall clock (0: never).
    pub expiry_ms: u64,
}

impl Issued {
    /// Whether this write must be on its key at the end: acknowledged, and no crash of the
    /// README's window for its level came after.
    pub fn must_survive(&self, world: &World) -> bool {
        let Some(acked_ms) = self.acked_ms else {
            return false;
        };
        if world.config.fsync_always {
            return true;
        }
        let crashed_after = |node: NodeId| {
            world
                .crash_log
                .iter()
                .any(|&(at_ms, crashed)| crashed == node && at_ms >= acked_ms)
        };
        match self.level {
            Level::Strong => true,
            Level::Session => !(crashed_after(self.head) && self.middle.is_some_and(crashed_after)),
            Level::Eventual => !crashed_after(self.head),
        }
    }

    /// Whether the key's final state is this write (absent, once it may have expired).
    pub fn is(&self, found: Option<&(Vec<u8>, u64)>, world: &World) -> bool {
        match (found, &self.value) {
            (Some((value, version)), Some(mine)) => value == mine && Some(*version) == self.version,
            (None, None) => true,
            (None, Some(_)) => world.may_have_expired(self.expiry_ms),
            _ => false,
        }
    }
}

/// What is wrong with a key's final state, if anything: it must hold the last write that had
/// to survive, or one issued after it.
pub fn violation(
    key: &[u8],
    writes: &[Issued],
    found: Option<&(Vec<u8>, u64)>,
    world: &World,
) -> Option<String> {
    let last = writes.iter().rposition(|w| w.must_survive(world))?;
    if writes[last..].iter().any(|w| w.is(found, world)) {
        return None;
    }
    let shown = |value: Option<&Vec<u8>>| value.map(|v| String::from_utf8_lossy(v).into_owned());
    Some(format!(
        "{}: holds {:?}, but a write acknowledged at {:?} outside its loss window was {:?} (version {:?})",
        String::from_utf8_lossy(key),
        found.map(|(v, ver)| (shown(Some(v)), *ver)),
        writes[last].level,
        shown(writes[last].value.as_ref()),
        writes[last].version,
    ))
}
