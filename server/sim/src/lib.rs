//! tessera-sim: deterministic simulation of a whole cluster (DESIGN.md, "Simulation").
//!
//! N nodes, each a real `tessera-store` on an in-memory disk (`MemDisk`: a crash drops, keeps
//! or tears unsynced writes) and a real `tessera-core` replicator, in one thread, with seeded
//! generators and a virtual clock. The network delays messages, keeps each link FIFO and
//! interleaves links in any order; faults crash nodes and restart them after a while, cut
//! links (losing what was in flight on them), and more (`faults.rs`). Clients run operations
//! at every consistency level (`clients.rs`).
//!
//! After the run every fault heals and the cluster is left to settle; then:
//! - every vnode's replicas hold the same data and the same position (`converged`);
//! - no acknowledged write is lost outside its level's loss window (`loss.rs`);
//! - every `session` read showed the reader's own acknowledged writes;
//! - the `strong` history of the shared keys is linearizable (`tessera-lincheck`);
//! - no replica reached a state `invariants.rs` forbids (checked after every step);
//! - and a seed gives the same trace digest every time it runs.
//!
//! `cargo test -p tessera-sim` runs a fixed set of seeds; `cargo run --release -p tessera-sim
//! -- --seeds 500` runs more; a failing seed prints the command that replays it.

mod clients;
mod compaction;
pub mod faults;
mod invariants;
mod loss;
mod transfer;
mod ttl;
mod watch;
pub mod world;

use std::collections::BTreeMap;

use tessera_core::placement::NodeId;
use tessera_lincheck::Verdict;
use tessera_store::{TransferLimits, TransferNext, TransferSource};

use crate::clients::Clients;
pub use crate::faults::FaultModel;
use crate::world::World;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub vnodes: u32,
    pub replication: usize,
    pub clients: u32,
    pub shared_keys: u32,
    /// Milliseconds of client traffic (one step each).
    pub steps: u64,
    /// `--fsync always` (writes count once durable) or `interval`.
    pub fsync_always: bool,
    pub faults: bool,
    /// The richer faults (`faults.rs`), on top of `faults`.
    pub more: FaultModel,
    /// The longest a message may wait on its link (each seed picks 1, 4, 16 or this).
    pub max_delay_ms: u64,
    /// Print this vnode's messages (with the receiver's state), transfers, crashes and cuts
    /// to stderr: for reading a failing seed.
    pub watch_vnode: Option<u16>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            nodes: 3,
            vnodes: 8,
            replication: 3,
            clients: 6,
            shared_keys: 4,
            steps: 3_000,
            fsync_always: true,
            faults: true,
            more: FaultModel::ALL,
            max_delay_ms: 30,
            watch_vnode: None,
        }
    }
}

impl SimConfig {
    /// The fault model before the richer faults (three nodes, crashes of one node at a time,
    /// cuts): the regression seeds found under it replay as they were found.
    pub fn classic() -> SimConfig {
        SimConfig {
            more: FaultModel::NONE,
            ..SimConfig::default()
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub trace: u64,
    pub violations: Vec<String>,
    pub acked_writes: u64,
    pub reads: u64,
    pub strong_ops: usize,
    pub crashes: u64,
    pub messages: u64,
    pub streams_resumed: u64,
    /// Nodes in the cluster (3 to 7 per seed with `FaultModel::sizes`).
    pub nodes: usize,
    /// The richer faults injected, by name.
    pub injected: BTreeMap<&'static str, u64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The command that replays this run.
    pub fn replay(&self, config: &SimConfig) -> String {
        format!(
            "cargo run --release -p tessera-sim -- --seed {} --steps {} --faults {}{}{}",
            self.seed,
            config.steps,
            config.more.names(),
            if config.fsync_always {
                ""
            } else {
                " --interval"
            },
            if config.faults { "" } else { " --no-faults" }
        )
    }
}

/// Runs one seed and checks it.
pub fn run(seed: u64, config: &SimConfig) -> Report {
    let mut world = World::new(seed, config.clone());
    let mut clients = Clients::new(config.clients, config.shared_keys);
    let mut broken = None;
    for step in 0..config.steps {
        world.now_ms += 1;
        world.heal_due();
        world.deliver_due();
        world.advance_transfers();
        world.flush(false);
        world.compact_some(step);
        if step % 10 == 0 {
            world.tick();
        }
        clients.progress(&mut world);
        clients.start_some(&mut world);
        faults::inject(&mut world);
        broken = invariants::violation(&world);
        if let Some(what) = &mut broken {
            *what = format!("at {} ms: {what}", world.now_ms);
            break;
        }
    }
    clients.stop();
    world.heal_all();
    let settled = settle(&mut world, &mut clients);
    let mut violations = std::mem::take(&mut clients.violations);
    violations.extend(broken);
    violations.extend(invariants::violation(&world).map(|what| format!("after settling: {what}")));
    if !settled {
        violations.push("the cluster did not settle within 60 s of healing".into());
        for vnode in 0..config.vnodes as u16 {
            let positions = world.positions(vnode);
            if positions.windows(2).all(|w| w[0].1 == w[1].1) {
                continue;
            }
            for node in world.table.chain(u32::from(vnode)).replicas.clone() {
                if let Some(running) = world.running(node) {
                    let state = running.replicator.describe(vnode).unwrap_or_default();
                    violations.push(format!("  node {node}: {state}"));
                }
            }
        }
    }
    violations.extend(converged(&mut world));
    let finals = owned_values(&mut world);
    clients.check_nothing_lost(&finals, &world);
    violations.extend(std::mem::take(&mut clients.violations));
    match tessera_lincheck::check(&clients.history) {
        Verdict::Linearizable { .. } => {}
        Verdict::Violation { key, report } => violations.push(format!(
            "strong operations on {} are not linearizable:\n{report}",
            String::from_utf8_lossy(&key)
        )),
        Verdict::TooHard { key } => violations.push(format!(
            "the linearizability check gave up on {}",
            String::from_utf8_lossy(&key)
        )),
    }
    Report {
        seed,
        trace: world.trace,
        violations,
        acked_writes: clients.acked_writes,
        reads: clients.reads,
        strong_ops: clients.history.len(),
        crashes: world.crashes,
        messages: world.messages_delivered,
        streams_resumed: world.streams_resumed,
        nodes: world.nodes.len(),
        injected: world.injected,
    }
}

/// Lets the healed cluster run until every replica of every vnode stands at the same
/// position with nothing in flight.
fn settle(world: &mut World, clients: &mut Clients) -> bool {
    for step in 0..60_000u64 {
        world.now_ms += 1;
        world.heal_due();
        world.deliver_due();
        world.advance_transfers();
        world.flush(true);
        if step % 10 == 0 {
            world.tick();
        }
        clients.progress(world);
        let all_up = (0..world.nodes.len() as NodeId).all(|n| world.is_up(n));
        if step % 50 == 0 && all_up && world.quiet() && all_positions_equal(world) {
            return true;
        }
    }
    false
}

fn all_positions_equal(world: &World) -> bool {
    (0..world.config.vnodes as u16).all(|vnode| {
        let positions = world.positions(vnode);
        positions.windows(2).all(|w| w[0].1 == w[1].1)
    })
}

/// A replica's copy of a vnode: key -> (value, version).
fn contents(world: &mut World, node: NodeId, vnode: u16) -> BTreeMap<Vec<u8>, (Vec<u8>, u64)> {
    // As of a time past every node's clock: a key one store already dropped as expired is
    // expired on all of them (`ttl.rs`).
    let now = world.past_every_clock_ms();
    let slot = &mut world.nodes[node as usize];
    let running = slot.running.as_mut().expect("healed");
    // Every live key's newest write, read the way a state transfer from nothing reads them.
    let everything = TransferLimits {
        keys_per_pass: usize::MAX,
        part_bytes: usize::MAX,
        keep_per_part: usize::MAX,
        walk_step: usize::MAX,
        reads_at_once: usize::MAX,
    };
    let mut source = TransferSource::new(vnode, Default::default(), everything);
    let mut copy = BTreeMap::new();
    loop {
        match source.next(&running.store, now) {
            TransferNext::Read(items) => {
                for item in items {
                    source.push(transfer::read_item(&slot.disk, item));
                }
            }
            TransferNext::Yield => {}
            TransferNext::Send(part) => {
                for entry in part.entries {
                    copy.insert(entry.key, (entry.value.unwrap_or_default(), entry.version));
                }
                continue;
            }
            TransferNext::Done => return copy,
        }
    }
}

/// Every vnode's replicas hold the same keys, values and versions.
fn converged(world: &mut World) -> Vec<String> {
    let mut violations = Vec::new();
    for vnode in 0..world.config.vnodes as u16 {
        let replicas = world.table.chain(u32::from(vnode)).replicas.clone();
        let head = contents(world, replicas[0], vnode);
        for &node in &replicas[1..] {
            let copy = contents(world, node, vnode);
            if copy != head {
                let differing: Vec<String> = head
                    .keys()
                    .chain(copy.keys())
                    .filter(|k| head.get(*k) != copy.get(*k))
                    .take(3)
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect();
                violations.push(format!(
                    "vnode {vnode}: node {node} differs from its head node {} on {differing:?}",
                    replicas[0]
                ));
            }
        }
    }
    violations
}

/// The values of every key, as the heads hold them.
fn owned_values(world: &mut World) -> BTreeMap<Vec<u8>, (Vec<u8>, u64)> {
    let mut values = BTreeMap::new();
    for vnode in 0..world.config.vnodes as u16 {
        let head = world.table.chain(u32::from(vnode)).head();
        values.extend(contents(world, head, vnode));
    }
    values
}
