//! One shard: an executor pinned to a core, owning a store, its segment files, its listeners and
//! its end of the channel mesh.
//!
//! Everything here runs on one thread; shared state is `Rc` + `RefCell` + `Cell`, and no
//! `RefCell` borrow is ever held across an await.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use tessera_core::replication::Now;
use tessera_schema::msg::{ShardStats, Topology};
use tessera_store::{Barrier, Store, StoreConfig};

use crate::budget::ShardBudget;
use crate::disk::Segments;
use crate::mesh::{MeshMsg, ShardReply};
use crate::pace::Pacer;

/// Most requests forwarded to one peer shard that may wait in its mesh channel; past it the
/// request is answered OVERLOADED. Generous, per PLATFORM.md, to keep clear of mesh deadlocks.
pub const MESH_CHANNEL_CAPACITY: usize = 4096;
/// How often the maintenance task looks for expired keys and compaction work.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(100);
/// Index entries the TTL sweep examines per tick (bounded work, ~10 K entries/s per shard).
const SWEEP_ENTRIES_PER_TICK: usize = 1000;
/// Bytes of a victim segment relocated per step between yields.
const COMPACTION_STEP_BYTES: usize = 16 * 1024;
/// The least compaction sleeps between relocation steps, whatever its rate limit: the shard's
/// requests get the core in between.
const COMPACTION_STEP_PAUSE: Duration = Duration::from_micros(50);
/// Bytes compaction may do at once after an idle spell, before its rate limit applies.
const COMPACTION_BURST_BYTES: u64 = 1024 * 1024;
/// Compaction pauses while this much of the log tail is unwritten.
const COMPACTION_MAX_UNFLUSHED_BYTES: u64 = 512 * 1024;
/// Longest a SIGTERM waits for in-flight requests before syncing and exiting anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every shard of the node knows, shared across threads.
pub struct NodeShared {
    pub shards: u16,
    /// The cluster's vnode count (fixed per data directory).
    pub vnodes: u32,
    pub vnode_shard: Vec<u16>,
    pub shard_port_base: u16,
    pub stopping: AtomicBool,
    /// Shards that finished draining; each exits once all have.
    pub drained: AtomicUsize,
    /// Each shard's compaction rate limit (`--compaction-mib-per-s`); `None`: no limit.
    pub compaction_bytes_per_s: Option<u64>,
    /// Each shard's bounds on the state transfers it sends (`--transfers-per-shard`,
    /// `--transfer-mib-per-s`).
    pub transfers: crate::transfer::TransferSettings,
    /// `--peer-buffer-per-shard`: what a shard's accepted peer connections may hold.
    pub peer_buffer_bytes: usize,
    /// TLS on the client and shard ports (`--tls-*`), reloaded on SIGHUP; `None`: plain TCP.
    pub client_tls: Option<std::sync::Arc<crate::tls::ClientTls>>,
    /// The users clients log in as (`--users`), reloaded on SIGHUP; `None`: no login needed.
    pub logins: Option<std::sync::Arc<crate::login::Logins>>,
    /// Mutual TLS on the peer ports (`--peer-tls-*`); `None`: plain TCP.
    pub peer_tls: Option<std::sync::Arc<crate::tls::PeerTls>>,
    /// Each shard's share of `--connection-memory` (`budget.rs`), by shard index.
    pub budgets: Vec<Arc<ShardBudget>>,
    /// Each shard's share of `--max-connections`.
    pub max_connections_per_shard: u64,
    /// `--frame-timeout-ms`: how long a frame may take to arrive, before a second per MiB.
    pub frame_grace_ms: u64,
    /// The node's cluster; `None` for a node that is not in one.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Per shard, bumped by its executor's control loop: the watchdog's proof that it runs.
    pub beats: Vec<std::sync::atomic::AtomicU64>,
    /// When the node started (uptime in STATS).
    pub started: std::time::Instant,
    /// The node's metric families (`metrics/`), served by `--metrics-listen`.
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// `--metrics-listen` is set: shards publish what they record (`metrics::publish`).
    pub publish_metrics: bool,
}

impl NodeShared {
    pub fn topology(&self) -> Topology {
        let mut topology = Topology {
            shard_count: self.shards,
            shard_port_base: self.shard_port_base,
            vnode_shard: self.vnode_shard.clone(),
            ..Topology::default()
        };
        if let Some(cluster) = &self.cluster {
            let width = cluster.table.chains.first().map_or(0, |c| c.replicas.len());
            topology.cluster_id = cluster.id;
            topology.node_id = cluster.me;
            topology.members = cluster.member_infos();
            topology.chain_width = width as u16;
            topology.chain_replicas = cluster
                .table
                .chains
                .iter()
                .flat_map(|c| c.replicas.iter().copied())
                .collect();
            topology.chain_epochs = cluster.table.chains.iter().map(|c| c.epoch).collect();
        }
        topology
    }
}

/// Counters reported by STATS.
#[derive(Default)]
pub struct Counters {
    pub gets: Cell<u64>,
    pub puts: Cell<u64>,
    pub deletes: Cell<u64>,
    pub scans: Cell<u64>,
    pub forwarded_in: Cell<u64>,
    pub overloaded: Cell<u64>,
}

pub struct Shard {
    pub index: u16,
    pub node: Arc<NodeShared>,
    pub store: RefCell<Store>,
    pub segments: Segments,
    pub counters: Counters,
    pub mesh: Senders<MeshMsg>,
    pending: RefCell<HashMap<u64, oneshot::Sender<ShardReply>>>,
    next_forward_id: Cell<u64>,
    /// Writes waiting for `durable_seq` to reach their sequence number.
    sync_waiters: RefCell<BTreeMap<u64, Vec<DurableWaiter>>>,
    /// Answers waiting for a vnode's visible sequence number to reach theirs.
    visible_waiters: RefCell<BTreeMap<Barrier, Vec<DurableWaiter>>>,
    flush_kick: LocalSender<()>,
    flush_kicked: RefCell<Option<LocalReceiver<()>>>,
    /// Requests being served (from clients of this shard and forwarded from peers).
    pub inflight: Cell<u64>,
    /// Set when this shard stops taking new client requests (SIGTERM).
    pub stopping: Cell<bool>,
    /// Holds the segment being compacted; kept between compactions, because a fresh buffer's
    /// page faults (about 0.3 ms per MiB copied in) stalled the shard's requests.
    victim_buffer: RefCell<Vec<u8>>,
    /// What this shard's client connections hold (`budget.rs`).
    pub budget: Arc<ShardBudget>,
    /// This shard's part in its cluster; `None` for a node that is not in one.
    pub replica: Option<crate::replica::Replica>,
    /// Client connections open on this shard.
    pub connections: Cell<u64>,
    /// What this shard records for `--metrics-listen` (`metrics/record.rs`).
    pub metrics: crate::metrics::ShardMetrics,
}

/// How a durability failure message starts when the disk is full (exec.rs maps it to DISK_FULL).
pub const DISK_FULL_PREFIX: &str = "disk full: ";

/// Told when a write is durable, or why it never will be.
type DurableWaiter = oneshot::Sender<Result<(), String>>;

/// Wall time, Unix milliseconds: for values that mean a date (versions, expiries).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Monotonic milliseconds since the first call (early in startup): for deadlines and silences, which a
/// wall clock stepped by NTP would cut short or stretch.
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Now on both clocks, for the replication core.
pub fn now() -> Now {
    Now {
        mono_ms: mono_ms(),
        wall_ms: now_ms(),
    }
}

impl Shard {
    pub fn new(
        index: u16,
        node: Arc<NodeShared>,
        store: Store,
        segments: Segments,
        mesh: Senders<MeshMsg>,
        replica: Option<crate::replica::Replica>,
    ) -> Rc<Shard> {
        let (flush_kick, flush_kicked) = local_channel::new_bounded(1);
        Rc::new(Shard {
            index,
            store: RefCell::new(store),
            segments,
            counters: Counters::default(),
            mesh,
            pending: RefCell::new(HashMap::new()),
            next_forward_id: Cell::new(1),
            sync_waiters: RefCell::new(BTreeMap::new()),
            visible_waiters: RefCell::new(BTreeMap::new()),
            flush_kick,
            flush_kicked: RefCell::new(Some(flush_kicked)),
            inflight: Cell::new(0),
            stopping: Cell::new(false),
            victim_buffer: RefCell::new(Vec::new()),
            budget: node.budgets[usize::from(index)].clone(),
            replica,
            connections: Cell::new(0),
            metrics: crate::metrics::ShardMetrics::new(node.metrics.clone(), index),
            node,
        })
    }

    pub fn owner_of(&self, vnode: u16) -> u16 {
        self.node.vnode_shard[usize::from(vnode)]
    }

    /// Tells the store a flush was performed; counts the writes its sync made durable.
    fn flush_done(&self, plan: &tessera_store::FlushPlan) {
        let mut store = self.store.borrow_mut();
        let synced_before = store.synced_writes();
        store.handle_flush_done(plan, now_ms());
        let synced = store.synced_writes() - synced_before;
        if plan.sync && synced > 0 {
            self.metrics.group_commit(synced);
        }
    }

    /// Wakes the flusher: a write wants a sync, or the tail grew.
    pub fn kick_flusher(&self) {
        let _ = self.flush_kick.try_send(());
    }

    /// Resolves once the write with sequence `seq` is durable, or with the store's failure.
    pub fn wait_durable(&self, seq: u64) -> oneshot::Receiver<Result<(), String>> {
        let (sender, receiver) = oneshot::channel();
        if self.store.borrow().durable_seq() >= seq {
            let _ = sender.send(Ok(()));
        } else {
            self.sync_waiters
                .borrow_mut()
                .entry(seq)
                .or_default()
                .push(sender);
        }
        self.kick_flusher();
        receiver
    }

    /// Resolves once `barrier` is visible (asking for the sync that makes it so), or with the
    /// store's failure.
    pub fn wait_visible(&self, barrier: Barrier) -> oneshot::Receiver<Result<(), String>> {
        let (sender, receiver) = oneshot::channel();
        let mut store = self.store.borrow_mut();
        if store.is_visible(barrier) {
            let _ = sender.send(Ok(()));
        } else {
            store.want_visible(barrier);
            self.visible_waiters
                .borrow_mut()
                .entry(barrier)
                .or_default()
                .push(sender);
        }
        drop(store);
        self.kick_flusher();
        receiver
    }

    /// Answers the readers whose vnodes' visible sequence numbers moved past their barriers
    /// (`changed`: the vnodes whose numbers moved), and, when the disk failed or is full,
    /// every reader still waiting on a single node (visibility follows durability there, and
    /// none can come now).
    pub fn wake_visible(&self, changed: &[u16]) {
        let store = self.store.borrow();
        let mut waiters = self.visible_waiters.borrow_mut();
        for &vnode in changed {
            let start = Barrier { vnode, seq: 0 };
            let end = Barrier {
                vnode,
                seq: u64::MAX,
            };
            let ready: Vec<Barrier> = waiters
                .range(start..=end)
                .map(|(b, _)| *b)
                .filter(|b| store.is_visible(*b))
                .collect();
            for barrier in ready {
                for sender in waiters.remove(&barrier).into_iter().flatten() {
                    let _ = sender.send(Ok(()));
                }
            }
        }
        if self.replica.is_some() {
            return; // in a cluster, commits go on while this disk is refused
        }
        let failure = match (store.failure(), store.disk_full_reason()) {
            (Some(reason), _) => format!("the disk failed: {reason}"),
            (None, Some(reason)) => format!("{DISK_FULL_PREFIX}{reason}"),
            (None, None) => return,
        };
        for sender in std::mem::take(&mut *waiters).into_values().flatten() {
            let _ = sender.send(Err(failure.clone()));
        }
    }

    /// After a flush: feeds the store's durability changes to replication (in a cluster) and
    /// wakes the readers they release.
    fn after_flush(self: &Rc<Self>) {
        self.wake_durable();
        if self.replica.is_some() {
            crate::replica::pump(self);
        } else {
            let changed = self.store.borrow_mut().take_log_changes();
            self.wake_visible(&changed);
        }
    }

    /// Answers the writes that are now durable, and, when the disk failed or is full, the ones
    /// that cannot become durable now (a full disk's writes are kept and written once space
    /// returns, but their callers are told now rather than left waiting).
    fn wake_durable(&self) {
        let store = self.store.borrow();
        let mut waiters = self.sync_waiters.borrow_mut();
        let not_durable = waiters.split_off(&(store.durable_seq() + 1));
        for sender in std::mem::replace(&mut *waiters, not_durable)
            .into_values()
            .flatten()
        {
            let _ = sender.send(Ok(()));
        }
        let failure = match (store.failure(), store.disk_full_reason()) {
            (Some(reason), _) => format!("the disk failed: {reason}"),
            (None, Some(reason)) => format!("{DISK_FULL_PREFIX}{reason}"),
            (None, None) => return,
        };
        for sender in std::mem::take(&mut *waiters).into_values().flatten() {
            let _ = sender.send(Err(failure.clone()));
        }
    }

    /// The group-commit loop: performs the store's flush plans as they come due.
    pub async fn run_flusher(self: Rc<Self>) {
        let kicked = self
            .flush_kicked
            .borrow_mut()
            .take()
            .expect("one flusher per shard");
        // Segments recovery had to scan get their hints now, for a faster next restart.
        self.write_hints().await;
        loop {
            let now = now_ms();
            let plan = self.store.borrow_mut().poll_flush(now);
            if let Some(plan) = plan {
                match self.segments.perform(&self.store, &plan).await {
                    Ok(()) => {
                        self.flush_done(&plan);
                        self.delete_compacted_segments().await;
                        self.write_hints().await;
                    }
                    Err(failure) if failure.disk_full => {
                        tracing::warn!(
                            shard = self.index,
                            "disk full, new writes refused until space returns: {}",
                            failure.reason
                        );
                        self.store
                            .borrow_mut()
                            .handle_disk_full(&plan, failure.reason, now_ms());
                    }
                    Err(failure) => {
                        tracing::error!(
                            shard = self.index,
                            "disk failure, writes stop: {}",
                            failure.reason
                        );
                        self.store
                            .borrow_mut()
                            .handle_flush_failed(&plan, failure.reason);
                    }
                }
                self.after_flush();
                continue;
            }
            // A sync with nothing left to write is settled without a plan; compacted segments
            // waiting for it can go now.
            self.delete_compacted_segments().await;
            self.after_flush();
            let deadline = self.store.borrow().next_flush_deadline_ms();
            let wait = deadline.map(|at| Duration::from_millis(at.saturating_sub(now).max(1)));
            match wait {
                Some(wait) => {
                    futures_lite::future::or(
                        async {
                            kicked.recv().await;
                        },
                        glommio::timer::sleep(wait),
                    )
                    .await
                }
                None => {
                    kicked.recv().await;
                }
            }
        }
    }

    /// Writes the hints of sealed, synced segments.
    async fn write_hints(&self) {
        loop {
            let hint = self.store.borrow_mut().poll_hint();
            let Some(hint) = hint else { return };
            self.segments.write_hint(hint).await;
        }
    }

    async fn delete_compacted_segments(&self) {
        loop {
            let segment = self.store.borrow_mut().poll_segment_delete();
            let Some(segment) = segment else { return };
            if let Err(error) = self.segments.delete(segment).await {
                tracing::warn!(shard = self.index, "compacted segment left behind: {error}");
            }
        }
    }

    /// Background maintenance in a low-priority task queue: the TTL sweep and compaction.
    /// Compaction copies a victim's live records in steps of `COMPACTION_STEP_BYTES`, yielding
    /// between steps and pausing while the log tail is far ahead of the disk, so that
    /// foreground requests keep their latency.
    pub async fn run_maintenance(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(MAINTENANCE_INTERVAL).await;
            if self.stopping.get() {
                return;
            }
            self.store
                .borrow_mut()
                .sweep_expired(now_ms(), SWEEP_ENTRIES_PER_TICK);
            let victim = self.store.borrow_mut().poll_compaction();
            if let Some(victim) = victim {
                let started = Instant::now();
                match self.compact(victim).await {
                    Ok(victim_bytes) => tracing::info!(
                        shard = self.index,
                        segment = victim,
                        victim_bytes,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "compacted a segment"
                    ),
                    Err(error) => tracing::error!(
                        shard = self.index,
                        segment = victim,
                        "compaction stopped: {error}"
                    ),
                }
            }
        }
    }

    /// Relocates a victim segment's live records; returns the victim's size.
    async fn compact(&self, victim: u32) -> Result<usize, String> {
        let mut bytes = self.victim_buffer.take();
        let result = self.relocate_victim(victim, &mut bytes).await;
        let victim_bytes = bytes.len();
        self.victim_buffer.replace(bytes);
        result.map(|()| victim_bytes)
    }

    async fn relocate_victim(&self, victim: u32, bytes: &mut Vec<u8>) -> Result<(), String> {
        let mut pacer = Pacer::new(self.node.compaction_bytes_per_s, COMPACTION_BURST_BYTES);
        self.segments
            .read_segment(victim, bytes, &mut pacer)
            .await?;
        let mut offset = 0;
        loop {
            while self.store.borrow().unflushed_bytes() > COMPACTION_MAX_UNFLUSHED_BYTES {
                self.kick_flusher();
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            let unflushed_before = self.store.borrow().unflushed_bytes();
            let step = self.store.borrow_mut().relocate(
                victim,
                bytes,
                offset,
                COMPACTION_STEP_BYTES,
                now_ms(),
            );
            // What the step appended: the copies the flusher is about to write.
            let copied = self.store.borrow().unflushed_bytes() - unflushed_before;
            self.kick_flusher();
            match step.map_err(|e| e.to_string())? {
                Some(next) => offset = next,
                None => return Ok(()),
            }
            let wait = pacer.charge(copied, Instant::now());
            glommio::timer::sleep(wait.max(COMPACTION_STEP_PAUSE)).await;
        }
    }

    /// Flushes and syncs everything appended so far (used at shutdown).
    pub async fn sync_all(&self) -> Result<(), String> {
        let seq = self.store.borrow_mut().request_sync();
        match self.wait_durable(seq).await {
            Ok(result) => result,
            Err(_) => Err("flusher stopped".into()),
        }
    }

    /// Sends `op` to shard `target` and awaits its reply; OVERLOADED when its queue is full.
    pub async fn forward(&self, target: u16, op: crate::mesh::ShardOp) -> Option<ShardReply> {
        let id = self.next_forward_id.get();
        self.next_forward_id.set(id + 1);
        let (sender, receiver) = oneshot::channel();
        self.pending.borrow_mut().insert(id, sender);
        if self
            .mesh
            .try_send_to(usize::from(target), MeshMsg::Request { id, op })
            .is_err()
        {
            self.pending.borrow_mut().remove(&id);
            self.counters
                .overloaded
                .set(self.counters.overloaded.get() + 1);
            return None;
        }
        receiver.await.ok()
    }

    fn handle_reply(&self, id: u64, reply: ShardReply) {
        if let Some(sender) = self.pending.borrow_mut().remove(&id) {
            let _ = sender.send(reply);
        }
    }

    /// Receives from every peer; requests run in their own tasks so this loop never blocks.
    pub fn spawn_mesh_receivers(self: &Rc<Self>, mut receivers: Receivers<MeshMsg>) {
        for (peer, stream) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = stream.recv().await {
                    // A peer's flood must not hold this shard's other work off the core.
                    glommio::executor().yield_if_needed().await;
                    match msg {
                        MeshMsg::Reply { id, reply } => shard.handle_reply(id, reply),
                        MeshMsg::Request { id, op } => {
                            let shard = shard.clone();
                            glommio::spawn_local(async move {
                                shard
                                    .counters
                                    .forwarded_in
                                    .set(shard.counters.forwarded_in.get() + 1);
                                let reply = crate::exec::run_shard_op(&shard, op).await;
                                let _ =
                                    shard.mesh.send_to(peer, MeshMsg::Reply { id, reply }).await;
                            })
                            .detach();
                        }
                    }
                }
            })
            .detach();
        }
    }

    pub fn stats(&self) -> ShardStats {
        let store = self.store.borrow().stats();
        let c = &self.counters;
        ShardStats {
            shard: self.index,
            keys: store.keys,
            live_bytes: store.live_bytes,
            disk_bytes: store.disk_bytes,
            segments: store.segments,
            gets: c.gets.get(),
            puts: c.puts.get(),
            deletes: c.deletes.get(),
            scans: c.scans.get(),
            fsyncs: store.fsyncs,
            bytes_written: store.bytes_written,
            forwarded_in: c.forwarded_in.get(),
            overloaded: c.overloaded.get(),
            cache_bytes: store.cache_bytes,
            cache_hits: store.cache_hits,
            cache_misses: store.cache_misses,
            index_bytes: store.index_bytes,
            compactions: store.compactions,
            bytes_reclaimed: store.bytes_reclaimed,
            expired_keys: store.expired_keys,
            synced_writes: store.synced_writes,
            uptime_ms: self.node.started.elapsed().as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").to_string(),
            transfers: self
                .replica
                .as_ref()
                .map(|r| r.transfers.stats())
                .unwrap_or_default(),
        }
    }
}

/// Settings each shard starts with.
#[derive(Clone)]
pub struct ShardSettings {
    pub store: StoreConfig,
    pub repair: bool,
}
