//! Prometheus metrics: the node's registry, and what each shard records into it.
//!
//! Off the hot path: a shard records into its own unsynchronised counters and histograms
//! (the prometheus crate's `Local*` types: plain adds on the shard's core, nothing shared with
//! another core) and publishes them into the node's registry every `PUBLISH_INTERVAL` from its
//! control loop, together with its store's and its replication's figures (`publish`). The
//! metrics thread (`metrics_http.rs`) only reads the registry, so a scrape never runs on a
//! shard nor waits for one; what it shows is up to `PUBLISH_INTERVAL` old.
//!
//! Labels: `shard`, `operation`, `level`, `status`, `peer` (a member's node id) and `kind`;
//! never a key or a vnode. `level` is the consistency level a data operation asked for
//! (`strong` when it named none, as the node applies it) and `none` for ping, stats, topology
//! and verify. A request refused before it was decoded (an oversized or malformed frame)
//! counts under its frame's operation, or `unknown`, with no duration. Names and units follow
//! Prometheus' conventions (seconds, bytes, `_total` on counters): ops/README.md lists them.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};
use tessera_core::placement::NodeId;
use tessera_schema::msg::{Level, Opcode, Request, Status};

use crate::shard::{now_ms, Shard};

/// How often a shard publishes what it recorded.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// `operation` label values, by opcode (0: a frame whose opcode is not known).
const OPERATIONS: [&str; 10] = [
    "unknown", "ping", "get", "put", "delete", "batch", "scan", "stats", "topology", "verify",
];
/// `level` label values.
const LEVELS: [&str; 4] = ["none", "eventual", "session", "strong"];
/// Request durations, in seconds: 25 us (an in-memory read) to 5 s (past the client's timeout).
const DURATION_BUCKETS_S: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 5.0,
];
/// Writes made durable by one fdatasync.
const GROUP_COMMIT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The node's life: `starting` until every shard serves (logs recovered, cluster joined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Starting,
    Serving,
    Stopping,
}

impl NodeState {
    const ALL: [NodeState; 3] = [NodeState::Starting, NodeState::Serving, NodeState::Stopping];

    fn name(self) -> &'static str {
        match self {
            NodeState::Starting => "starting",
            NodeState::Serving => "serving",
            NodeState::Stopping => "stopping",
        }
    }
}

/// Every metric family of the node.
pub struct NodeMetrics {
    registry: Registry,
    started: Instant,
    uptime: Gauge,
    state: IntGaugeVec,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    received_bytes: IntCounterVec,
    sent_bytes: IntCounterVec,
    connections: IntGaugeVec,
    connections_refused: IntCounterVec,
    keys: IntGaugeVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_bytes: IntGaugeVec,
    index_bytes: IntGaugeVec,
    disk_bytes: IntGaugeVec,
    live_bytes: IntGaugeVec,
    disk_written_bytes: IntCounterVec,
    compactions: IntCounterVec,
    reclaimed_bytes: IntCounterVec,
    expired_keys: IntCounterVec,
    fsyncs: IntCounterVec,
    group_commit: HistogramVec,
    peer_sent_bytes: IntCounterVec,
    peer_lag_writes: IntGaugeVec,
    peer_lag_seconds: GaugeVec,
    peer_link_up: IntGaugeVec,
    catch_ups: IntCounterVec,
    queue_bytes: IntGaugeVec,
    chain_changes: IntCounterVec,
}

/// A family's registration failed: only a name used twice or an invalid one (a bug).
fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric families have distinct, valid names");
    c
}

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            registered(&r, HistogramVec::new(opts, labels).expect("valid"))
        };
        let shard = &["shard"];
        let peer = &["shard", "peer"];
        let metrics = NodeMetrics {
            started: Instant::now(),
            uptime: registered(
                &r,
                Gauge::new("tessera_uptime_seconds", "Seconds since the node started.")
                    .expect("valid"),
            ),
            state: gauge(
                "tessera_node_state",
                "1 for the node's state (starting, serving, stopping), 0 for the others.",
                &["state"],
            ),
            requests: counter(
                "tessera_requests_total",
                "Client requests answered, by operation, consistency level and status.",
                &["shard", "operation", "level", "status"],
            ),
            request_seconds: histogram(
                "tessera_request_duration_seconds",
                "Time from a request's decoding to its answer being queued, by operation and level.",
                &DURATION_BUCKETS_S,
                &["shard", "operation", "level"],
            ),
            received_bytes: counter(
                "tessera_client_received_bytes_total",
                "Bytes read from client connections.",
                shard,
            ),
            sent_bytes: counter(
                "tessera_client_sent_bytes_total",
                "Bytes of answers queued to client connections.",
                shard,
            ),
            connections: gauge("tessera_client_connections", "Open client connections.", shard),
            connections_refused: counter(
                "tessera_client_connections_refused_total",
                "Client connections refused on arrival, by the status they were told \
                 (UNAVAILABLE: --max-connections; OVERLOADED: --connection-memory).",
                &["shard", "status"],
            ),
            keys: gauge("tessera_keys", "Live keys held.", shard),
            cache_hits: counter(
                "tessera_cache_hits_total",
                "Reads answered from the value cache.",
                shard,
            ),
            cache_misses: counter(
                "tessera_cache_misses_total",
                "Reads of a value on disk that the value cache did not hold.",
                shard,
            ),
            cache_bytes: gauge("tessera_cache_bytes", "Bytes held by the value cache.", shard),
            index_bytes: gauge("tessera_index_bytes", "Memory of the in-memory index.", shard),
            disk_bytes: gauge("tessera_disk_bytes", "Bytes of log segments on disk.", shard),
            live_bytes: gauge(
                "tessera_live_bytes",
                "Bytes of the log that hold live records.",
                shard,
            ),
            disk_written_bytes: counter(
                "tessera_disk_written_bytes_total",
                "Bytes written to the log.",
                shard,
            ),
            compactions: counter(
                "tessera_compactions_total",
                "Segments compacted.",
                shard,
            ),
            reclaimed_bytes: counter(
                "tessera_compaction_reclaimed_bytes_total",
                "Disk bytes freed by compaction.",
                shard,
            ),
            expired_keys: counter(
                "tessera_expired_keys_total",
                "Keys dropped when their TTL ran out.",
                shard,
            ),
            fsyncs: counter("tessera_fsyncs_total", "fdatasync calls on the log.", shard),
            group_commit: histogram(
                "tessera_group_commit_writes",
                "Writes made durable by one fdatasync (group commit).",
                &GROUP_COMMIT_BUCKETS,
                shard,
            ),
            peer_sent_bytes: counter(
                "tessera_replication_sent_bytes_total",
                "Bytes of replication messages written to a member.",
                peer,
            ),
            peer_lag_writes: gauge(
                "tessera_replication_lag_writes",
                "Writes this node applied that its successor (peer) has not, over the vnodes \
                 they share.",
                peer,
            ),
            peer_lag_seconds: registered(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "tessera_replication_lag_seconds",
                        "Age of the oldest write the successor (peer) lacks, over the vnodes \
                         they share; 0 when it lacks none.",
                    ),
                    peer,
                )
                .expect("valid"),
            ),
            peer_link_up: gauge(
                "tessera_replication_link_up",
                "1 while the replication link to the member is up.",
                peer,
            ),
            catch_ups: counter(
                "tessera_replication_catch_ups_total",
                "Successors caught up, by kind: resent from the retention queue, or a state \
                 transfer.",
                &["shard", "peer", "kind"],
            ),
            queue_bytes: gauge(
                "tessera_replication_queue_bytes",
                "Bytes held in retention queues for successors.",
                shard,
            ),
            chain_changes: counter(
                "tessera_chain_changes_total",
                "Chain changes (new epochs) applied to vnodes held here.",
                shard,
            ),
            registry: r,
        };
        metrics
            .build_info()
            .expect("the build info family registers once");
        metrics.set_state(NodeState::Starting);
        metrics
    }

    fn build_info(&self) -> prometheus::Result<()> {
        let opts = Opts::new(
            "tessera_build_info",
            "1, labelled with the server's version.",
        );
        let info = IntGaugeVec::new(opts, &["version"])?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        self.registry.register(Box::new(info))
    }

    pub fn set_state(&self, state: NodeState) {
        for each in NodeState::ALL {
            let value = i64::from(each == state);
            self.state.with_label_values(&[each.name()]).set(value);
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# encoding failed: {error}\n"))
    }
}

/// What a request was, for its labels.
#[derive(Clone, Copy, Debug)]
pub struct RequestKind {
    operation: usize,
    level: usize,
}

impl RequestKind {
    pub fn of(request: &Request, level: Level) -> RequestKind {
        let operation = request.opcode() as usize;
        let data = matches!(
            request,
            Request::Get { .. }
                | Request::Put(_)
                | Request::Delete(_)
                | Request::Batch(_)
                | Request::Scan(_)
        );
        let level = match (data, level) {
            (false, _) => 0,
            (true, Level::Eventual) => 1,
            (true, Level::Session) => 2,
            (true, Level::Strong | Level::Default) => 3,
        };
        RequestKind { operation, level }
    }

    /// A frame refused before its body was decoded.
    fn refused(opcode: u8) -> RequestKind {
        let operation = Opcode::from_wire(opcode).map_or(0, |op| op as usize);
        RequestKind {
            operation,
            level: 0,
        }
    }
}

/// A counter of the registry kept in step with a total counted elsewhere (the store's).
struct Mirror {
    counter: IntCounter,
    last: Cell<u64>,
}

impl Mirror {
    fn new(counter: IntCounter) -> Mirror {
        Mirror {
            counter,
            last: Cell::new(0),
        }
    }

    fn sync(&self, total: u64) {
        let last = self.last.replace(total);
        self.counter.inc_by(total.saturating_sub(last));
    }
}

/// One member as seen by this shard's metrics.
struct PeerMetrics {
    sent: LocalIntCounter,
    /// When the oldest write the successor lacked was made (ms), while it lacks some.
    oldest_missing_ms: Option<u64>,
    from_queue: Mirror,
    transfers: Mirror,
}

/// The store's running totals, mirrored into the registry's counters.
struct StoreTotals {
    cache_hits: Mirror,
    cache_misses: Mirror,
    disk_written_bytes: Mirror,
    compactions: Mirror,
    reclaimed_bytes: Mirror,
    expired_keys: Mirror,
    fsyncs: Mirror,
}

/// What one shard records; lives on the shard's thread.
pub struct ShardMetrics {
    node: Arc<NodeMetrics>,
    shard: String,
    /// By `request_slot`; created at a combination's first use, so that only combinations
    /// that happened are exported.
    requests: RefCell<Vec<Option<LocalIntCounter>>>,
    /// By operation and level, created at first use too.
    durations: RefCell<Vec<Option<LocalHistogram>>>,
    received: LocalIntCounter,
    sent: LocalIntCounter,
    group_commit: LocalHistogram,
    totals: StoreTotals,
    chain_changes: Mirror,
    peers: RefCell<BTreeMap<NodeId, PeerMetrics>>,
}

/// Index of an (operation, level, status) combination in `ShardMetrics::requests`.
fn request_slot(kind: RequestKind, status: Status) -> usize {
    (kind.operation * LEVELS.len() + kind.level) * Status::ALL.len() + status as usize
}

impl ShardMetrics {
    pub fn new(node: Arc<NodeMetrics>, index: u16) -> ShardMetrics {
        let shard = index.to_string();
        let s = &[shard.as_str()];
        let mirror = |vec: &IntCounterVec| Mirror::new(vec.with_label_values(s));
        let totals = StoreTotals {
            cache_hits: mirror(&node.cache_hits),
            cache_misses: mirror(&node.cache_misses),
            disk_written_bytes: mirror(&node.disk_written_bytes),
            compactions: mirror(&node.compactions),
            reclaimed_bytes: mirror(&node.reclaimed_bytes),
            expired_keys: mirror(&node.expired_keys),
            fsyncs: mirror(&node.fsyncs),
        };
        let slots = OPERATIONS.len() * LEVELS.len();
        ShardMetrics {
            requests: RefCell::new((0..slots * Status::ALL.len()).map(|_| None).collect()),
            durations: RefCell::new((0..slots).map(|_| None).collect()),
            received: node.received_bytes.with_label_values(s).local(),
            sent: node.sent_bytes.with_label_values(s).local(),
            group_commit: node.group_commit.with_label_values(s).local(),
            totals,
            chain_changes: mirror(&node.chain_changes),
            peers: RefCell::new(BTreeMap::new()),
            shard,
            node,
        }
    }

    /// A request answered after `elapsed`.
    pub fn request(&self, kind: RequestKind, status: Status, elapsed: Duration) {
        self.count(kind, status);
        let slot = kind.operation * LEVELS.len() + kind.level;
        let mut durations = self.durations.borrow_mut();
        let histogram = durations[slot].get_or_insert_with(|| {
            let labels = [&self.shard, OPERATIONS[kind.operation], LEVELS[kind.level]];
            self.node.request_seconds.with_label_values(&labels).local()
        });
        histogram.observe(elapsed.as_secs_f64());
    }

    /// A client connection refused on arrival (rare: no local counter needed).
    pub fn connection_refused(&self, status: Status) {
        let labels = [self.shard.as_str(), status.name()];
        self.node
            .connections_refused
            .with_label_values(&labels)
            .inc();
    }

    /// A frame refused before its body was decoded (`opcode` as the frame says).
    pub fn refusal(&self, opcode: u8, status: Status) {
        self.count(RequestKind::refused(opcode), status);
    }

    fn count(&self, kind: RequestKind, status: Status) {
        let mut requests = self.requests.borrow_mut();
        let counter = requests[request_slot(kind, status)].get_or_insert_with(|| {
            let labels = [
                &self.shard,
                OPERATIONS[kind.operation],
                LEVELS[kind.level],
                status.name(),
            ];
            self.node.requests.with_label_values(&labels).local()
        });
        counter.inc();
    }

    pub fn received(&self, bytes: usize) {
        self.received.inc_by(bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        self.sent.inc_by(bytes as u64);
    }

    /// One fdatasync made `writes` writes durable.
    pub fn group_commit(&self, writes: u64) {
        self.group_commit.observe(writes as f64);
    }

    /// Bytes of replication messages written to `node`.
    pub fn peer_sent(&self, node: NodeId, bytes: usize) {
        self.with_peer(node, |peer| peer.sent.inc_by(bytes as u64));
    }

    fn with_peer<T>(&self, node: NodeId, f: impl FnOnce(&mut PeerMetrics) -> T) -> T {
        let mut peers = self.peers.borrow_mut();
        let peer = peers.entry(node).or_insert_with(|| {
            let peer = node.to_string();
            let labels = [self.shard.as_str(), peer.as_str()];
            let kind = |kind: &str| {
                let labels = [self.shard.as_str(), peer.as_str(), kind];
                Mirror::new(self.node.catch_ups.with_label_values(&labels))
            };
            PeerMetrics {
                sent: self.node.peer_sent_bytes.with_label_values(&labels).local(),
                oldest_missing_ms: None,
                from_queue: kind("queue"),
                transfers: kind("transfer"),
            }
        });
        f(peer)
    }
}

/// Publishes what `shard` recorded since the last time, and its store's and replication's
/// figures now (from its control loop, every `PUBLISH_INTERVAL`).
pub fn publish(shard: &Shard) {
    let m = &shard.metrics;
    for counter in m.requests.borrow().iter().flatten() {
        counter.flush();
    }
    for histogram in m.durations.borrow().iter().flatten() {
        histogram.flush();
    }
    m.received.flush();
    m.sent.flush();
    m.group_commit.flush();
    let node = &m.node;
    let s = &[m.shard.as_str()];
    node.connections
        .with_label_values(s)
        .set(shard.connections.get() as i64);
    let stats = shard.store.borrow().stats();
    node.keys.with_label_values(s).set(stats.keys as i64);
    node.cache_bytes
        .with_label_values(s)
        .set(stats.cache_bytes as i64);
    node.index_bytes
        .with_label_values(s)
        .set(stats.index_bytes as i64);
    node.disk_bytes
        .with_label_values(s)
        .set(stats.disk_bytes as i64);
    node.live_bytes
        .with_label_values(s)
        .set(stats.live_bytes as i64);
    let t = &m.totals;
    t.cache_hits.sync(stats.cache_hits);
    t.cache_misses.sync(stats.cache_misses);
    t.disk_written_bytes.sync(stats.bytes_written);
    t.compactions.sync(stats.compactions);
    t.reclaimed_bytes.sync(stats.bytes_reclaimed);
    t.expired_keys.sync(stats.expired_keys);
    t.fsyncs.sync(stats.fsyncs);
    if let Some(replica) = &shard.replica {
        publish_replication(shard, replica);
    }
}

fn publish_replication(shard: &Shard, replica: &crate::replica::Replica) {
    let m = &shard.metrics;
    let node = &m.node;
    let replicator = replica.replicator.borrow();
    node.queue_bytes
        .with_label_values(&[m.shard.as_str()])
        .set(replicator.queued_bytes() as i64);
    let progress = replicator.progress();
    m.chain_changes.sync(progress.chain_changes);
    let lags = replicator.successor_lag();
    let now = now_ms();
    for (member, up) in replica.link_states() {
        let peer = member.to_string();
        let labels = [m.shard.as_str(), peer.as_str()];
        node.peer_link_up
            .with_label_values(&labels)
            .set(i64::from(up));
        let catch_ups = progress.catch_ups.get(&member).copied().unwrap_or_default();
        let lag = lags.get(&member).copied().unwrap_or_default();
        let lag_s = m.with_peer(member, |p| {
            p.sent.flush();
            p.from_queue.sync(catch_ups.from_queue);
            p.transfers.sync(catch_ups.transfers);
            // When the queue no longer holds what the successor lacks, the oldest write known
            // to be missing still is (an overestimate once a transfer is under way).
            p.oldest_missing_ms = match (lag.writes, lag.oldest_missing_version) {
                (0, _) => None,
                (_, Some(version)) => Some(version / tessera_store::VERSIONS_PER_MS),
                (_, None) => p.oldest_missing_ms.or(Some(now)),
            };
            p.oldest_missing_ms
                .map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1000.0)
        });
        if lags.contains_key(&member) {
            node.peer_lag_writes
                .with_label_values(&labels)
                .set(lag.writes as i64);
            node.peer_lag_seconds.with_label_values(&labels).set(lag_s);
        }
    }
}
