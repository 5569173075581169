//! What one shard records (on its own thread, without atomics) and publishes into the node's
//! registry every `PUBLISH_INTERVAL`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{IntCounter, IntCounterVec};
use tessera_core::placement::NodeId;
use tessera_core::replication::SuccessorLag;
use tessera_schema::msg::Status;

use super::{NodeMetrics, RequestKind, LEVELS, OPERATIONS};
use crate::shard::{now_ms, Shard};

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
    transfers_sent: Mirror,
    transfers_failed: Mirror,
    transfer_keys: Mirror,
    transfer_bytes: Mirror,
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
            transfers_sent: Mirror::new(node.transfers.with_label_values(&[&shard, "sent"])),
            transfers_failed: Mirror::new(node.transfers.with_label_values(&[&shard, "failed"])),
            transfer_keys: mirror(&node.transfer_keys),
            transfer_bytes: mirror(&node.transfer_bytes),
            peers: RefCell::new(BTreeMap::new()),
            shard,
            node,
        }
    }

    /// Adds what was recorded since the last flush to the registry.
    fn flush_local(&self) {
        for counter in self.requests.borrow().iter().flatten() {
            counter.flush();
        }
        for histogram in self.durations.borrow().iter().flatten() {
            histogram.flush();
        }
        self.received.flush();
        self.sent.flush();
        self.group_commit.flush();
    }

    /// A request answered after `elapsed`.
    pub fn request(&self, kind: RequestKind, status: Status, elapsed: Duration) {
        self.count(kind, status);
        let slot = kind.operation * LEVELS.len() + kind.level;
        let mut durations = self.durations.borrow_mut();
        let histogram = durations[slot].get_or_insert_with(|| {
            // One histogram per node, not per shard: 19 series each would make a 64-shard node
            // export tens of thousands; `tessera_requests_total` keeps the per-shard view.
            let labels = [OPERATIONS[kind.operation], LEVELS[kind.level]];
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
    /// The shard got back to its tasks `late` after it meant to (`stall.rs`).
    pub fn stall(&self, cause: &'static str, late: Duration) {
        self.node
            .stalls
            .with_label_values(&[self.shard.as_str(), cause])
            .observe(late.as_secs_f64());
    }

    pub fn group_commit(&self, writes: u64) {
        self.group_commit.observe(writes as f64);
    }

    /// A peer connection closed before its Hello was let in (`tessera_peer_refused_total`):
    /// rare, so counted straight into the family.
    pub fn peer_refused(&self, reason: &'static str) {
        self.node
            .peer_refused
            .with_label_values(&[self.shard.as_str(), reason])
            .inc();
    }

    /// A client's TLS handshake failed (`tessera_client_tls_failures_total`): rare, so counted
    /// straight into the family.
    pub fn client_tls_failed(&self, reason: &'static str) {
        self.node
            .client_tls_failures
            .with_label_values(&[self.shard.as_str(), reason])
            .inc();
    }

    /// A request or login refused for credentials or rights (`tessera_auth_failures_total`).
    pub fn auth_failed(&self, reason: &'static str) {
        self.node
            .auth_failures
            .with_label_values(&[self.shard.as_str(), reason])
            .inc();
    }

    /// A connection logged in (`tessera_logins_total`).
    pub fn logged_in(&self, how: &'static str) {
        self.node
            .logins
            .with_label_values(&[self.shard.as_str(), how])
            .inc();
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
    m.flush_local();
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
    node.peer_buffered_bytes
        .with_label_values(&[m.shard.as_str()])
        .set(replica.inbound.buffered_bytes() as i64);
    let progress = replicator.progress();
    m.chain_changes.sync(progress.chain_changes);
    let transfers = &replica.transfers;
    node.transfers_in_flight
        .with_label_values(&[m.shard.as_str()])
        .set(transfers.in_flight.borrow().len() as i64);
    m.transfers_sent.sync(transfers.completed.get());
    m.transfers_failed.sync(transfers.failed.get());
    m.transfer_keys.sync(transfers.keys_sent.get());
    m.transfer_bytes.sync(transfers.bytes_sent.get());
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
            p.oldest_missing_ms = oldest_missing_ms(lag, p.oldest_missing_ms, now);
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

/// When the oldest write a successor lacks was made (ms), from this publish's lag and the last
/// one's answer. While the queue holds it, its version tells. Once the queue no longer does, it
/// is older than anything queued: the oldest known before goes on (from now, if none was known;
/// an overestimate once a state transfer has brought the successor part of the way).
fn oldest_missing_ms(lag: SuccessorLag, before: Option<u64>, now_ms: u64) -> Option<u64> {
    let queued = lag
        .oldest_missing_version
        .map(|version| version / tessera_store::VERSIONS_PER_MS);
    match (lag.writes, lag.unqueued) {
        (0, _) => None,
        (_, false) => queued.or(before).or(Some(now_ms)),
        (_, true) => [before.or(Some(now_ms)), queued]
            .into_iter()
            .flatten()
            .min(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tessera_schema::msg::{Level, Request};

    use super::*;

    #[test]
    fn every_combination_of_labels_has_its_own_slot() {
        let mut slots = BTreeSet::new();
        for operation in 0..OPERATIONS.len() {
            for level in 0..LEVELS.len() {
                for status in Status::ALL {
                    let slot = request_slot(RequestKind { operation, level }, status);
                    assert!(slot < OPERATIONS.len() * LEVELS.len() * Status::ALL.len());
                    assert!(slots.insert(slot), "slot {slot} twice");
                }
            }
        }
    }

    #[test]
    fn data_operations_carry_their_level_and_the_rest_none() {
        let get = Request::Get { key: b"k".to_vec() };
        let kind = RequestKind::of(&get, Level::Default);
        assert_eq!(
            (OPERATIONS[kind.operation], LEVELS[kind.level]),
            ("get", "strong")
        );
        let kind = RequestKind::of(&get, Level::Eventual);
        assert_eq!(LEVELS[kind.level], "eventual");
        let kind = RequestKind::of(&Request::Ping, Level::Session);
        assert_eq!(
            (OPERATIONS[kind.operation], LEVELS[kind.level]),
            ("ping", "none")
        );
        assert_eq!(OPERATIONS[RequestKind::refused(0xEE).operation], "unknown");
    }

    #[test]
    fn the_oldest_missing_write_outlives_its_queue() {
        let lag = |writes, version: Option<u64>, unqueued| SuccessorLag {
            writes,
            oldest_missing_version: version,
            unqueued,
        };
        let ms = tessera_store::VERSIONS_PER_MS;
        assert_eq!(oldest_missing_ms(lag(0, None, false), Some(5), 9_000), None);
        assert_eq!(
            oldest_missing_ms(lag(3, Some(2_000 * ms), false), None, 9_000),
            Some(2_000)
        );
        // Dropped from the queue: what was known goes on, newer queued writes do not hide it.
        let dropped = lag(4, Some(8_000 * ms), true);
        assert_eq!(oldest_missing_ms(dropped, Some(2_000), 9_000), Some(2_000));
        assert_eq!(oldest_missing_ms(dropped, None, 9_000), Some(8_000));
        assert_eq!(
            oldest_missing_ms(lag(4, None, true), None, 9_000),
            Some(9_000)
        );
    }

    #[test]
    fn what_a_shard_records_shows_once_it_publishes() {
        let node = Arc::new(NodeMetrics::new());
        let shard = ShardMetrics::new(node.clone(), 3);
        let get = RequestKind::of(&Request::Get { key: vec![] }, Level::Strong);
        shard.request(get, Status::NotFound, Duration::from_micros(30));
        shard.received(100);
        let text = node.encode();
        assert!(
            text.contains("tessera_node_state{state=\"starting\"} 1"),
            "{text}"
        );
        let series = "tessera_requests_total{level=\"strong\",operation=\"get\",shard=\"3\",\
                      status=\"NOT_FOUND\"}";
        assert!(
            text.contains(&format!("{series} 0")),
            "not yet published: {text}"
        );
        shard.flush_local();
        let text = node.encode();
        assert!(text.contains(&format!("{series} 1")), "{text}");
        assert!(text.contains("tessera_client_received_bytes_total{shard=\"3\"} 100"));
        let bucket = "tessera_request_duration_seconds_bucket{level=\"strong\",operation=\"get\",\
                      le=\"0.00005\"} 1";
        assert!(text.contains(bucket), "{text}");
    }
}
