//! The simulated cluster: nodes with real stores on in-memory disks and real replicators,
//! a network of FIFO links with delays, and faults (crashes, restarts, cut links).
//!
//! One thread, seeded generators (the run's and the richer faults'), a virtual clock in
//! milliseconds: a seed replays exactly.
//! Each node runs one shard. A crash is a power loss (`MemDisk::crash`: unsynced writes are
//! kept, dropped or torn); a restart recovers the store from the disk and starts a fresh
//! replicator, as the real node does.

use std::collections::{BTreeMap, VecDeque};

use tessera_core::placement::{ChainTable, NodeId};
use tessera_core::replication::{
    Config, Effect, PeerMsg, Replicator, Ticket, VnodeStore, WriteFailure,
};
use tessera_store::testing::{MemDisk, Rng};
use tessera_store::{FsyncPolicy, Store, StoreConfig, Visibility};

use crate::SimConfig;

pub struct Running {
    pub store: Store,
    pub replicator: Replicator,
}

pub struct Node {
    pub id: NodeId,
    pub disk: MemDisk,
    pub running: Option<Running>,
    pub restart_at_ms: Option<u64>,
    /// Started before: its heads must ask their replicas before taking writes.
    pub started: bool,
    /// Stopped (SIGSTOP) until then: it handles nothing, and messages to it wait.
    pub paused_until_ms: Option<u64>,
    /// How far its wall clock is ahead of the simulation's (behind when negative).
    pub wall_skew_ms: i64,
    /// Links that broke while it was paused: it learns of them when it resumes.
    pub broken_while_paused: Vec<NodeId>,
}

#[derive(Default)]
pub(crate) struct Link {
    pub up: bool,
    /// Cut by a fault until then.
    pub cut_until_ms: u64,
    /// Stalled one way by a fault until then: nothing on it is delivered.
    pub held_until_ms: u64,
    pub queue: VecDeque<(u64, PeerMsg)>,
    /// Bytes of the messages in `queue` (what the sender's outbox holds unwritten).
    pub queued_bytes: usize,
}

/// A fault's later step (`faults.rs`).
pub(crate) enum Scheduled {
    /// Cut the link both ways for this long.
    Cut(NodeId, NodeId, u64),
    /// The node's peers drop their links to it.
    DropLinks(NodeId),
    /// The node (whose disk failed) is restarted.
    Restart(NodeId),
    /// The node's disk has room again.
    SpaceBack(NodeId),
}

/// A client write finished at a node.
pub struct Completion {
    pub node: NodeId,
    pub ticket: Ticket,
    pub result: Result<(), WriteFailure>,
    /// When the node answered (the client may hear of it after the node crashed).
    pub at_ms: u64,
}

pub struct World {
    pub now_ms: u64,
    pub rng: Rng,
    /// The richer faults' own generator (`faults.rs`).
    pub fault_rng: Rng,
    pub config: SimConfig,
    pub table: ChainTable,
    pub nodes: Vec<Node>,
    pub(crate) links: BTreeMap<(NodeId, NodeId), Link>,
    pub(crate) scheduled: Vec<(u64, Scheduled)>,
    /// State transfers being sent a part per step (`transfer.rs`).
    pub(crate) sending: Vec<crate::transfer::Sending>,
    pub completions: Vec<Completion>,
    /// A digest of everything that happened, in order: a seed must give the same one.
    pub trace: u64,
    pub messages_delivered: u64,
    /// Times a stream paused on a full outbox went on (flow control at work).
    pub streams_resumed: u64,
    pub crashes: u64,
    /// Every crash: when, and which node (`loss.rs` reads it).
    pub crash_log: Vec<(u64, NodeId)>,
    /// The richer faults injected, by name (`faults.rs`).
    pub injected: BTreeMap<&'static str, u64>,
    /// The replicators' retention-queue bound, per seed: a tiny one keeps queues full, so
    /// that replicas refuse appends and heads refuse writes (backpressure) all the time.
    queue_limit_bytes: usize,
}

fn store_config(config: &SimConfig) -> StoreConfig {
    StoreConfig {
        segment_size_bytes: match config.more.compaction {
            true => crate::compaction::SEGMENT_BYTES,
            false => 4 * 1024 * 1024,
        },
        fsync: match config.fsync_always {
            true => FsyncPolicy::Always,
            false => FsyncPolicy::Interval {
                interval_ms: 20,
                max_writes: 50,
            },
        },
        cache_bytes: 64 * 1024,
        vnodes: config.vnodes,
        visibility: Visibility::Committed,
        ..StoreConfig::default()
    }
}

impl World {
    pub fn new(seed: u64, mut config: SimConfig) -> World {
        // Seeds differ in how slow the network is, up to the configured bound: a slow one
        // keeps a restarted replica behind its chain for longer.
        let mut rng = Rng::new(seed);
        config.max_delay_ms =
            [1, 4, 16, config.max_delay_ms][rng.below(4) as usize].min(config.max_delay_ms);
        let queue_limit_bytes = [256, 4096, 256 * 1024][rng.below(3) as usize];
        let mut fault_rng = Rng::new(seed ^ 0xA5A5_5A5A_F00D_CAFE);
        if config.more.sizes {
            config.nodes = 3 + fault_rng.below(5) as usize;
        }
        let members: Vec<tessera_core::placement::Member> = (0..config.nodes as NodeId)
            .map(|id| tessera_core::placement::Member {
                id,
                weight: 1,
                zone: None,
            })
            .collect();
        let table = tessera_core::placement::plan(&members, config.vnodes, config.replication)
            .expect("a valid plan");
        let mut world = World {
            now_ms: 1_000_000,
            rng,
            fault_rng,
            nodes: (0..config.nodes as NodeId)
                .map(|id| Node {
                    id,
                    disk: MemDisk::new(),
                    running: None,
                    restart_at_ms: None,
                    started: false,
                    paused_until_ms: None,
                    wall_skew_ms: 0,
                    broken_while_paused: Vec::new(),
                })
                .collect(),
            config,
            table,
            links: BTreeMap::new(),
            scheduled: Vec::new(),
            sending: Vec::new(),
            completions: Vec::new(),
            trace: 0xcbf2_9ce4_8422_2325,
            messages_delivered: 0,
            streams_resumed: 0,
            crashes: 0,
            crash_log: Vec::new(),
            injected: BTreeMap::new(),
            queue_limit_bytes,
        };
        crate::ttl::skew_clocks(&mut world);
        for node in 0..world.nodes.len() as NodeId {
            world.start(node);
        }
        world.connect_all();
        world
    }

    /// A fault or restart, printed when a vnode is watched.
    pub(crate) fn watch_event(&self, event: std::fmt::Arguments<'_>) {
        if self.config.watch_vnode.is_some() {
            eprintln!("{} {event}", self.now_ms);
        }
    }

    pub fn note(&mut self, words: &[u64]) {
        for word in words {
            self.trace = (self.trace ^ word).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn replicator_config(&self, me: NodeId, fresh: bool) -> Config {
        Config {
            me,
            durable_commit: self.config.fsync_always,
            queue_limit_bytes: self.queue_limit_bytes,
            write_timeout_ms: 2_000,
            // Small, so that streams pause and resume (flow control) in every run.
            outbox_limit_bytes: 512,
            fresh,
        }
    }

    /// Starts (or restarts) a node from its disk.
    fn start(&mut self, node: NodeId) {
        self.watch_event(format_args!("start node {node}"));
        let config = store_config(&self.config);
        let wall_ms = self.clock(node).wall_ms;
        let disk = &mut self.nodes[node as usize].disk;
        let (store, _) = disk.recover(config, false, wall_ms).expect("recovery");
        let held: Vec<(u16, tessera_core::placement::Chain)> = (0..self.config.vnodes)
            .filter(|&v| self.table.chain(v).position(node).is_some())
            .map(|v| (v as u16, self.table.chain(v).clone()))
            .collect();
        let fresh = !self.nodes[node as usize].started;
        let replicator = Replicator::new(self.replicator_config(node, fresh), held, &store);
        let slot = &mut self.nodes[node as usize];
        slot.started = true;
        slot.running = Some(Running { store, replicator });
        slot.restart_at_ms = None;
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes[node as usize].running.is_some()
    }

    /// Whether `node` runs and is not paused: it answers clients now.
    pub fn serves(&self, node: NodeId) -> bool {
        self.is_up(node) && !self.is_paused(node)
    }

    pub fn is_paused(&self, node: NodeId) -> bool {
        self.nodes[node as usize].paused_until_ms.is_some()
    }

    /// Brings up every link whose ends run and that no fault cuts.
    pub fn connect_all(&mut self) {
        let n = self.nodes.len() as NodeId;
        for a in 0..n {
            for b in 0..n {
                if a < b {
                    self.try_link_up(a, b);
                }
            }
        }
    }

    fn try_link_up(&mut self, a: NodeId, b: NodeId) {
        let now = self.now_ms;
        let both_up = self.serves(a) && self.serves(b);
        let link = self.links.entry((a, b)).or_default();
        if link.up || link.cut_until_ms > now || !both_up {
            return;
        }
        link.up = true;
        self.links.entry((b, a)).or_default().up = true;
        self.note(&[1, u64::from(a), u64::from(b)]);
        for (me, other) in [(a, b), (b, a)] {
            let clock = self.clock(me);
            let running = self.nodes[me as usize].running.as_mut().expect("up");
            running
                .replicator
                .handle_link_up(other, &mut running.store, clock);
            self.drain(me);
        }
    }

    /// Cuts the link between `a` and `b` (both directions) for `ms`: what was in flight is lost.
    pub fn cut(&mut self, a: NodeId, b: NodeId, ms: u64) {
        let until = self.now_ms + ms;
        self.note(&[2, u64::from(a), u64::from(b), ms]);
        self.watch_event(format_args!("cut {a}-{b} for {ms} ms"));
        for (me, other) in [(a, b), (b, a)] {
            let link = self.links.entry((me, other)).or_default();
            link.cut_until_ms = until;
            let was_up = std::mem::take(&mut link.up);
            link.queue.clear();
            link.queued_bytes = 0;
            if was_up {
                self.link_down_at(me, other);
            }
        }
    }

    /// Takes every link of `node` down both ways, losing what was in flight on them; returns
    /// the (end, other end) pairs that were up.
    pub(crate) fn take_links_down(&mut self, node: NodeId) -> Vec<(NodeId, NodeId)> {
        let n = self.nodes.len() as NodeId;
        let mut were_up = Vec::new();
        for other in (0..n).filter(|&o| o != node) {
            for (me, them) in [(node, other), (other, node)] {
                let link = self.links.entry((me, them)).or_default();
                link.queue.clear();
                link.queued_bytes = 0;
                if std::mem::take(&mut link.up) {
                    were_up.push((me, them));
                }
            }
        }
        were_up
    }

    /// Power loss of `node`; it restarts after `down_ms`.
    pub fn crash(&mut self, node: NodeId, down_ms: u64) {
        self.note(&[3, u64::from(node), down_ms]);
        self.watch_event(format_args!("crash node {node} for {down_ms} ms"));
        self.crashes += 1;
        self.crash_log.push((self.now_ms, node));
        self.drop_transfers_of(node);
        for (me, them) in self.take_links_down(node) {
            if me != node {
                self.link_down_at(me, them); // the crashed node's replicator goes anyway
            }
        }
        let slot = &mut self.nodes[node as usize];
        slot.running = None;
        slot.paused_until_ms = None;
        slot.broken_while_paused.clear();
        slot.disk.crash(&mut self.rng);
        slot.restart_at_ms = Some(self.now_ms + down_ms);
    }

    /// Restarts nodes whose time has come, heals cuts whose time has come.
    pub fn heal_due(&mut self) {
        self.run_scheduled();
        let now = self.now_ms;
        for node in 0..self.nodes.len() as NodeId {
            if self.nodes[node as usize]
                .restart_at_ms
                .is_some_and(|at| at <= now)
            {
                self.note(&[4, u64::from(node)]);
                self.start(node);
            }
        }
        self.connect_all();
    }

    /// Restarts every node and heals every cut now.
    pub fn heal_all(&mut self) {
        for node in 0..self.nodes.len() {
            if self.nodes[node].restart_at_ms.is_some() {
                self.nodes[node].restart_at_ms = Some(self.now_ms);
            }
        }
        for link in self.links.values_mut() {
            link.cut_until_ms = 0;
            link.held_until_ms = 0;
        }
        self.scheduled.clear();
        for node in 0..self.nodes.len() as NodeId {
            if self.is_paused(node) {
                self.resume(node);
            }
            self.nodes[node as usize].disk.fail_next_sync = false;
            self.nodes[node as usize].disk.disk_full = false;
            let failed = self.nodes[node as usize].running.as_ref();
            if failed.is_some_and(|r| r.store.failure().is_some()) {
                self.crash(node, 0); // its disk failed: restarted now rather than later
            }
        }
        self.heal_due();
    }

    /// Takes a node's replication effects: messages onto links, state reads served.
    pub fn drain(&mut self, node: NodeId) {
        loop {
            let Some(running) = self.nodes[node as usize].running.as_mut() else {
                return;
            };
            let Some(effect) = running.replicator.poll_effect() else {
                return;
            };
            match effect {
                Effect::Send(out) => self.send(node, out.to, out.msg),
                Effect::ReadState {
                    vnode,
                    to,
                    since,
                    transfer,
                } => self.serve_state(node, vnode, to, since, transfer),
                // The simulator's clients try writes again on their own steps.
                Effect::TakesWrites { .. } => {}
                Effect::WriteDone { ticket, result } => {
                    self.note(&[5, u64::from(node), ticket, u64::from(result.is_ok())]);
                    self.completions.push(Completion {
                        node,
                        ticket,
                        result,
                        at_ms: self.now_ms,
                    });
                }
            }
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: PeerMsg) {
        let delay = self.rng.below(self.config.max_delay_ms + 1);
        let now = self.now_ms;
        let link = self.links.entry((from, to)).or_default();
        if !link.up {
            return;
        }
        // FIFO per link: never before what was sent on it earlier.
        let after = link.queue.back().map_or(0, |(at, _)| *at);
        let at = (now + delay).max(after);
        if self.config.more.duplicate && self.fault_rng.below(50) == 0 {
            *self.injected.entry("duplicate").or_default() += 1;
            link.queued_bytes += msg.body.bytes();
            link.queue.push_back((at, msg.clone()));
        }
        link.queued_bytes += msg.body.bytes();
        link.queue.push_back((at, msg));
    }

    /// Delivers, on every link in a random order, the first message that is due.
    pub fn deliver_due(&mut self) {
        let now = self.now_ms;
        let mut due: Vec<(NodeId, NodeId)> = self
            .links
            .iter()
            .filter(|(&(_, to), l)| {
                let due = l.queue.front().is_some_and(|(at, _)| *at <= now);
                l.up && due && l.held_until_ms <= now && !self.is_paused(to)
            })
            .map(|(&k, _)| k)
            .collect();
        // Shuffle (Fisher-Yates): links interleave in any order; each link stays FIFO.
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        for (from, to) in due {
            let Some(link) = self.links.get_mut(&(from, to)) else {
                continue;
            };
            let Some((_, msg)) = link.queue.pop_front() else {
                continue;
            };
            link.queued_bytes -= msg.body.bytes();
            let unwritten = link.queued_bytes;
            let sender_paused = self.is_paused(from);
            let (sender_clock, receiver_clock) = (self.clock(from), self.clock(to));
            if let Some(sender) = self.nodes[from as usize]
                .running
                .as_mut()
                .filter(|_| !sender_paused)
            {
                if sender
                    .replicator
                    .handle_outbox(to, unwritten, &mut sender.store, sender_clock)
                {
                    self.streams_resumed += 1;
                }
                self.drain(from);
            }
            self.messages_delivered += 1;
            if self.config.watch_vnode == Some(msg.vnode) {
                let receiver = self.nodes[to as usize].running.as_ref();
                crate::watch::delivery(now, from, to, &msg, receiver.map(|r| &r.replicator));
            }
            self.note(&[6, u64::from(from), u64::from(to), u64::from(msg.vnode)]);
            let Some(running) = self.nodes[to as usize].running.as_mut() else {
                continue;
            };
            running
                .replicator
                .handle_message(from, msg, &mut running.store, receiver_clock);
            self.drain(to);
        }
    }

    /// Runs each node's flusher (with some probability, so that syncs take a few steps) and
    /// tells replication what became durable.
    pub fn flush(&mut self, always: bool) {
        for node in 0..self.nodes.len() as NodeId {
            if !always && self.rng.below(2) == 0 || self.is_paused(node) {
                continue;
            }
            let wall_ms = self.clock(node).wall_ms;
            let slot = &mut self.nodes[node as usize];
            let Some(running) = slot.running.as_mut() else {
                continue;
            };
            let flushed = slot.disk.flush_due(&mut running.store, wall_ms);
            self.after_disk_work(node, flushed);
        }
    }

    /// Tells replication what became durable on `node`, and handles a failed flush.
    pub(crate) fn after_disk_work(&mut self, node: NodeId, done: Result<(), String>) {
        let clock = self.clock(node);
        if let Some(running) = self.nodes[node as usize].running.as_mut() {
            let changed = running.store.take_log_changes();
            if !changed.is_empty() {
                running
                    .replicator
                    .handle_durable(&changed, &mut running.store, clock);
                self.drain(node);
            }
        }
        if let Err(reason) = done {
            self.flush_failed(node, &reason);
        }
    }

    /// Time passes for every replicator (write deadlines).
    pub fn tick(&mut self) {
        for node in 0..self.nodes.len() as NodeId {
            if self.is_paused(node) {
                continue;
            }
            let clock = self.clock(node);
            if let Some(running) = self.nodes[node as usize].running.as_mut() {
                running.replicator.handle_tick(&mut running.store, clock);
            }
            self.drain(node);
        }
    }

    /// Whether no message is in flight.
    pub fn quiet(&self) -> bool {
        self.sending.is_empty() && self.links.values().all(|l| l.queue.is_empty())
    }

    pub fn running(&mut self, node: NodeId) -> Option<&mut Running> {
        self.nodes[node as usize].running.as_mut()
    }

    /// Every replica of `vnode` that runs: (node, its position).
    pub fn positions(&self, vnode: u16) -> Vec<(NodeId, u64)> {
        self.table
            .chain(u32::from(vnode))
            .replicas
            .iter()
            .filter_map(|&n| {
                let running = self.nodes[n as usize].running.as_ref()?;
                Some((n, running.store.position(vnode).seq))
            })
            .collect()
    }
}
