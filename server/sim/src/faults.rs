//! The faults a run injects, and when.
//!
//! The classic set (`SimConfig::faults`): a crash of one node at a time (power loss, restart
//! after 50-550 ms) and a link cut both ways for 20-320 ms, losing what was in flight. The
//! richer set (`FaultModel`), each on its own switch so a run can take one at a time:
//! - `duplicate`: a message delivered twice on its link (stricter than production, where TCP
//!   never repeats a frame: a resend after a reconnect is the real case);
//! - `one_way`: a link stalls in one direction (TCP holds what is unacknowledged); past
//!   `SILENCE_MS` both ends give up on the link, as the shell's silence detection does;
//! - `long_cut`: a cut of 1-3 s, past the write timeout, so that queues overflow and writes
//!   time out while it lasts;
//! - `pause`: a node stops (SIGSTOP) for 20-600 ms with its memory intact: it handles nothing,
//!   messages to it wait, and past `SILENCE_MS` its peers drop their links to it;
//! - `two_down`: a second node crashes while one is down (under `interval` this may lose
//!   `session` writes, within the README's loss window that `loss.rs` checks);
//! - `disk`: an fdatasync that fails (EIO: the store refuses writes from then on, as the node's
//!   shard does, until the node is restarted `DISK_FAILED_RESTART_MS` later, as an operator
//!   would), and a disk full for 100-500 ms (a new segment cannot be preallocated: the store
//!   refuses writes DISK_FULL and retries; it shows only with `compaction`'s small segments,
//!   as a run with the default ones fills less than one);
//! - `slow_transfers`: a state transfer sends one part per step, interleaved with the live
//!   stream, client writes and every other fault, instead of all its parts at once;
//! - `compaction`: small segments, large values and compaction now and then (`compaction.rs`);
//! - `skew`: wall clocks up to 200 ms off and owned writes with TTLs (`ttl.rs`);
//! - `sizes`: 3 to 7 nodes per seed (replication factor 3), so that nodes are not in every chain;
//! - `cas_current`: compare-and-set against the version a client last saw, not only 0 or 1.
//!
//! The richer set draws from its own generator (`World::fault_rng`), so that with it off a
//! seed runs exactly as it did before it existed: the regression seeds stay what they were.

use tessera_core::placement::NodeId;

use crate::world::{Scheduled, World};

/// How long a peer waits on a silent link before dropping it (the shell's `PEER_SILENCE`,
/// scaled down as the simulation's other times are).
pub const SILENCE_MS: u64 = 150;

/// How long a node whose disk failed runs on (refusing writes) before it is restarted.
pub const DISK_FAILED_RESTART_MS: u64 = 300;

/// The richer faults, each on its own switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultModel {
    pub duplicate: bool,
    pub one_way: bool,
    pub long_cut: bool,
    pub pause: bool,
    pub two_down: bool,
    pub disk: bool,
    pub slow_transfers: bool,
    pub compaction: bool,
    pub skew: bool,
    pub sizes: bool,
    pub cas_current: bool,
}

impl FaultModel {
    pub const NONE: FaultModel = FaultModel {
        duplicate: false,
        one_way: false,
        long_cut: false,
        pause: false,
        two_down: false,
        disk: false,
        slow_transfers: false,
        compaction: false,
        skew: false,
        sizes: false,
        cas_current: false,
    };
    pub const ALL: FaultModel = FaultModel {
        duplicate: true,
        one_way: true,
        long_cut: true,
        pause: true,
        two_down: true,
        disk: true,
        slow_transfers: true,
        compaction: true,
        skew: true,
        sizes: true,
        cas_current: true,
    };
    pub const NAMES: [&'static str; 11] = [
        "duplicate",
        "one_way",
        "long_cut",
        "pause",
        "two_down",
        "disk",
        "slow_transfers",
        "compaction",
        "skew",
        "sizes",
        "cas_current",
    ];

    /// The model with only the named parts on (`all` and `none` too).
    pub fn parse(list: &str) -> Result<FaultModel, String> {
        let mut model = FaultModel::NONE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => model = FaultModel::ALL,
                "none" => model = FaultModel::NONE,
                "duplicate" => model.duplicate = true,
                "one_way" => model.one_way = true,
                "long_cut" => model.long_cut = true,
                "pause" => model.pause = true,
                "two_down" => model.two_down = true,
                "disk" => model.disk = true,
                "slow_transfers" => model.slow_transfers = true,
                "compaction" => model.compaction = true,
                "skew" => model.skew = true,
                "sizes" => model.sizes = true,
                "cas_current" => model.cas_current = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}: expected all, none or some of {}",
                        FaultModel::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(model)
    }

    /// The names of the parts that are on, comma-separated (`none` when none).
    pub fn names(&self) -> String {
        let on = [
            self.duplicate,
            self.one_way,
            self.long_cut,
            self.pause,
            self.two_down,
            self.disk,
            self.slow_transfers,
            self.compaction,
            self.skew,
            self.sizes,
            self.cas_current,
        ];
        let names: Vec<&str> = FaultModel::NAMES
            .iter()
            .zip(on)
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect();
        match names.is_empty() {
            true => "none".into(),
            false => names.join(","),
        }
    }
}

/// Now and then: a classic fault (from the run's generator), then a richer one (from its own).
pub fn inject(world: &mut World) {
    if !world.config.faults {
        return;
    }
    inject_classic(world);
    inject_richer(world);
}

/// Crash a node (only while all run: one failure at a time), or cut a link.
fn inject_classic(world: &mut World) {
    let nodes = world.nodes.len() as u64;
    match world.rng.below(1000) {
        0 | 1 => {
            let all_up = (0..nodes as NodeId).all(|n| world.is_up(n));
            if all_up {
                let node = world.rng.below(nodes) as NodeId;
                let down_ms = 50 + world.rng.below(500);
                world.crash(node, down_ms);
            }
        }
        2 | 3 => {
            let (a, b) = two_nodes(world.rng.below(nodes), world.rng.below(nodes - 1), nodes);
            let ms = 20 + world.rng.below(300);
            world.cut(a, b, ms);
        }
        _ => {}
    }
}

fn inject_richer(world: &mut World) {
    let model = world.config.more;
    let nodes = world.nodes.len() as u64;
    let roll = world.fault_rng.below(4000);
    let (pick_a, pick_b) = (
        world.fault_rng.below(nodes),
        world.fault_rng.below(nodes - 1),
    );
    let (a, b) = two_nodes(pick_a, pick_b, nodes);
    let span = world.fault_rng.below(1000);
    let name = match roll {
        0..=2 if model.one_way => {
            world.stall(a, b, 20 + span * 38 / 100);
            "one_way"
        }
        3 if model.long_cut => {
            world.cut(a, b, 1_000 + span * 2);
            "long_cut"
        }
        4..=5 if model.pause && world.is_up(a) => {
            world.pause(a, 20 + span * 58 / 100);
            "pause"
        }
        // Often, as it can only strike while another node is down.
        6..=15 if model.two_down => {
            let down = (0..nodes as NodeId).filter(|&n| !world.is_up(n)).count();
            if down != 1 || !world.is_up(a) {
                return;
            }
            world.crash(a, 50 + span / 2);
            "two_down"
        }
        16 if model.disk && world.is_up(a) => {
            world.nodes[a as usize].disk.fail_next_sync = true;
            "eio"
        }
        17..=40 if model.disk && world.is_up(a) => {
            world.nodes[a as usize].disk.disk_full = true;
            let until = world.now_ms + 100 + span * 4 / 10;
            world.scheduled.push((until, Scheduled::SpaceBack(a)));
            "disk_full"
        }
        _ => return,
    };
    *world.injected.entry(name).or_default() += 1;
}

/// Two distinct nodes from two draws (`second` below `nodes - 1`).
fn two_nodes(first: u64, second: u64, nodes: u64) -> (NodeId, NodeId) {
    let a = first as NodeId;
    let b = ((first + 1 + second) % nodes) as NodeId;
    (a, b)
}

impl World {
    /// Holds what `from` sends `to` for `ms` (a one-way stall); past `SILENCE_MS` both ends
    /// drop the link then, and it stays cut for the rest of the stall.
    pub fn stall(&mut self, from: NodeId, to: NodeId, ms: u64) {
        self.note(&[7, u64::from(from), u64::from(to), ms]);
        self.watch_event(format_args!("stall {from}->{to} for {ms} ms"));
        let now = self.now_ms;
        let link = self.links.entry((from, to)).or_default();
        link.held_until_ms = now + ms.min(SILENCE_MS);
        if ms >= SILENCE_MS {
            let rest_ms = (ms - SILENCE_MS).max(1);
            self.scheduled
                .push((now + SILENCE_MS, Scheduled::Cut(from, to, rest_ms)));
        }
    }

    /// Stops `node` for `ms` with its state intact; past `SILENCE_MS` its peers drop their
    /// links to it.
    pub fn pause(&mut self, node: NodeId, ms: u64) {
        self.note(&[8, u64::from(node), ms]);
        self.watch_event(format_args!("pause node {node} for {ms} ms"));
        let now = self.now_ms;
        self.nodes[node as usize].paused_until_ms = Some(now + ms);
        if ms >= SILENCE_MS {
            self.scheduled
                .push((now + SILENCE_MS, Scheduled::DropLinks(node)));
        }
    }

    /// Runs the scheduled fault steps that are due, and resumes paused nodes whose time came.
    pub(crate) fn run_scheduled(&mut self) {
        let now = self.now_ms;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.scheduled)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.scheduled = later;
        for (_, step) in due {
            match step {
                Scheduled::Cut(a, b, ms) => self.cut(a, b, ms),
                Scheduled::DropLinks(node) => self.drop_links(node),
                Scheduled::Restart(node) => self.restart_failed(node),
                Scheduled::SpaceBack(node) => self.nodes[node as usize].disk.disk_full = false,
            }
        }
        for node in 0..self.nodes.len() as NodeId {
            if self.nodes[node as usize]
                .paused_until_ms
                .is_some_and(|at| at <= now)
            {
                self.resume(node);
            }
        }
    }

    /// A paused node runs again: it learns which links broke and what its links wrote while
    /// it was stopped.
    pub(crate) fn resume(&mut self, node: NodeId) {
        self.note(&[9, u64::from(node)]);
        self.watch_event(format_args!("resume node {node}"));
        self.nodes[node as usize].paused_until_ms = None;
        for them in std::mem::take(&mut self.nodes[node as usize].broken_while_paused) {
            if let Some(running) = self.nodes[node as usize].running.as_mut() {
                running.replicator.handle_link_down(them);
            }
        }
        let clock = self.clock(node);
        let unwritten: Vec<(NodeId, usize)> = self
            .links
            .iter()
            .filter(|((from, _), link)| *from == node && link.up)
            .map(|((_, to), link)| (*to, link.queued_bytes))
            .collect();
        if let Some(running) = self.nodes[node as usize].running.as_mut() {
            for (to, bytes) in unwritten {
                if running
                    .replicator
                    .handle_outbox(to, bytes, &mut running.store, clock)
                {
                    self.streams_resumed += 1;
                }
            }
        }
        self.drain(node);
    }

    /// Every link of `node` goes down both ways, losing what was in flight (its peers gave up
    /// on a silent node); they come back once both ends run.
    pub(crate) fn drop_links(&mut self, node: NodeId) {
        self.note(&[10, u64::from(node)]);
        for ((from, to), link) in self.links.iter_mut() {
            if *from == node || *to == node {
                link.held_until_ms = 0;
            }
        }
        for (me, them) in self.take_links_down(node) {
            self.link_down_at(me, them);
        }
    }
}

impl World {
    /// The node whose disk failed is restarted, if it still runs on that disk, once no other
    /// node is down: a third node down at once would take down every chain of three nodes,
    /// past what `loss.rs` holds the cluster to.
    fn restart_failed(&mut self, node: NodeId) {
        let failed = self.nodes[node as usize].running.as_ref();
        if failed.is_none_or(|r| r.store.failure().is_none()) {
            return; // restarted meanwhile: its disk works again
        }
        let others_down = (0..self.nodes.len() as NodeId).any(|n| n != node && !self.is_up(n));
        if others_down {
            let at = self.now_ms + 50;
            self.scheduled.push((at, Scheduled::Restart(node)));
            return;
        }
        self.crash(node, 50);
    }

    /// `me` learns that its link to `them` broke: at once, or when it resumes if it is paused
    /// (a stopped process sees its closed sockets only once it runs again).
    pub(crate) fn link_down_at(&mut self, me: NodeId, them: NodeId) {
        if self.is_paused(me) {
            self.nodes[me as usize].broken_while_paused.push(them);
            return;
        }
        if let Some(running) = self.nodes[me as usize].running.as_mut() {
            running.replicator.handle_link_down(them);
        }
    }

    /// A flush failed on `node`: after EIO the store refuses writes for good, and the node is
    /// restarted a while later.
    pub(crate) fn flush_failed(&mut self, node: NodeId, reason: &str) {
        self.watch_event(format_args!("node {node}: {reason}"));
        let running = self.nodes[node as usize].running.as_ref();
        if running.is_some_and(|r| r.store.failure().is_some()) {
            let at = self.now_ms + DISK_FAILED_RESTART_MS;
            self.scheduled.push((at, Scheduled::Restart(node)));
        }
    }
}
