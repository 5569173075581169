//! Every metric family of the node, registered once at startup; `encode` is what a scrape reads.

use std::time::Instant;

use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::{NodeState, DURATION_BUCKETS_S, GROUP_COMMIT_BUCKETS, STALL_BUCKETS_S};

/// Every metric family of the node.
pub struct NodeMetrics {
    pub(super) registry: Registry,
    pub(super) started: Instant,
    pub(super) uptime: Gauge,
    pub(super) state: IntGaugeVec,
    pub(super) requests: IntCounterVec,
    pub(super) request_seconds: HistogramVec,
    pub(super) received_bytes: IntCounterVec,
    pub(super) sent_bytes: IntCounterVec,
    pub(super) connections: IntGaugeVec,
    pub(super) connections_refused: IntCounterVec,
    pub(super) keys: IntGaugeVec,
    pub(super) cache_hits: IntCounterVec,
    pub(super) cache_misses: IntCounterVec,
    pub(super) cache_bytes: IntGaugeVec,
    pub(super) index_bytes: IntGaugeVec,
    pub(super) disk_bytes: IntGaugeVec,
    pub(super) live_bytes: IntGaugeVec,
    pub(super) disk_written_bytes: IntCounterVec,
    pub(super) compactions: IntCounterVec,
    pub(super) reclaimed_bytes: IntCounterVec,
    pub(super) expired_keys: IntCounterVec,
    pub(super) fsyncs: IntCounterVec,
    pub(super) group_commit: HistogramVec,
    pub(super) stalls: HistogramVec,
    pub(super) peer_sent_bytes: IntCounterVec,
    pub(super) peer_lag_writes: IntGaugeVec,
    pub(super) peer_lag_seconds: GaugeVec,
    pub(super) peer_link_up: IntGaugeVec,
    pub(super) peer_refused: IntCounterVec,
    pub(super) client_tls_failures: IntCounterVec,
    pub(super) auth_failures: IntCounterVec,
    pub(super) logins: IntCounterVec,
    pub(super) catch_ups: IntCounterVec,
    pub(super) queue_bytes: IntGaugeVec,
    pub(super) peer_buffered_bytes: IntGaugeVec,
    pub(super) chain_changes: IntCounterVec,
    pub(super) transfers_in_flight: IntGaugeVec,
    pub(super) transfers: IntCounterVec,
    pub(super) transfer_keys: IntCounterVec,
    pub(super) transfer_bytes: IntCounterVec,
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
                "Time from a request's decoding to its answer being queued (waiting for a \
                 connection's in-flight permit included), by operation and level, over every \
                 shard of the node.",
                &DURATION_BUCKETS_S,
                &["operation", "level"],
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
            connections: gauge(
                "tessera_client_connections",
                "Open client connections.",
                shard,
            ),
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
            cache_bytes: gauge(
                "tessera_cache_bytes",
                "Bytes held by the value cache.",
                shard,
            ),
            index_bytes: gauge(
                "tessera_index_bytes",
                "Memory of the in-memory index.",
                shard,
            ),
            disk_bytes: gauge(
                "tessera_disk_bytes",
                "Bytes of log segments on disk.",
                shard,
            ),
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
            compactions: counter("tessera_compactions_total", "Segments compacted.", shard),
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
                "Writes made durable by one group commit (a flush ending with an fdatasync of \
                 the log's active segment).",
                &GROUP_COMMIT_BUCKETS,
                shard,
            ),
            stalls: histogram(
                "tessera_shard_stall_seconds",
                "Times a shard got back to its tasks 20 ms or more late (stall.rs), by cause: \
                 busy (a task ran that long), cpu (the thread waited for a core), blocked (it \
                 slept in the kernel).",
                &STALL_BUCKETS_S,
                &["shard", "cause"],
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
            peer_refused: counter(
                "tessera_peer_refused_total",
                "Connections to a peer port the node closed, by reason. Before their Hello \
                 was let in: `handshakes_full` (too many in progress), `hello_deadline` (none \
                 in time), `pre_hello_bytes` (too much without one), `tls` (no TLS, or a \
                 certificate refused either way), `hello` (another cluster, no member, the \
                 wrong shard, a certificate naming another member, or not a Hello). After: \
                 `frame_deadline` (a frame not in full in time), `memory` (no room in the \
                 shard's peer buffer budget in time), `batch` (a bad frame or batch).",
                &["shard", "reason"],
            ),
            client_tls_failures: counter(
                "tessera_client_tls_failures_total",
                "TLS handshakes on the client and shard ports that failed, by reason: \
                 `certificate` (a client certificate refused or missing, or the client refused \
                 the node's), `protocol` (not TLS, or no version or suite in common), `timeout` \
                 (not done within --frame-timeout-ms), `closed` (the client went away).",
                &["shard", "reason"],
            ),
            auth_failures: counter(
                "tessera_auth_failures_total",
                "Requests and logins refused for want of credentials or rights, by reason: \
                 `unauthenticated` (a request before AUTH), `permission_denied` (outside the \
                 user's rights), `unknown_user`, `bad_password`, `rate_limited` (its address \
                 failed too often), `busy` (too many password checks at once), `deadline` (no \
                 AUTH in time: closed).",
                &["shard", "reason"],
            ),
            logins: counter(
                "tessera_logins_total",
                "Connections logged in as a user, by how: `password` (AUTH) or `certificate` \
                 (a client certificate naming the user).",
                &["shard", "how"],
            ),
            catch_ups: counter(
                "tessera_replication_catch_ups_total",
                "Vnodes caught up on a successor (peer), by kind: `queue` (resent from the \
                 retention queue when the successor said it was behind: it reconnected, or had \
                 refused appends under backpressure) or `transfer` (a state transfer started).",
                &["shard", "peer", "kind"],
            ),
            queue_bytes: gauge(
                "tessera_replication_queue_bytes",
                "Bytes held in retention queues for successors.",
                shard,
            ),
            peer_buffered_bytes: gauge(
                "tessera_peer_buffered_bytes",
                "Bytes the shard's accepted peer connections hold: read buffers and frames \
                 part way in (at most --peer-buffer-per-shard).",
                shard,
            ),
            chain_changes: counter(
                "tessera_chain_changes_total",
                "Chain changes (new epochs) applied to vnodes held here.",
                shard,
            ),
            transfers_in_flight: gauge(
                "tessera_transfers_in_flight",
                "State transfers this shard is sending now (including those waiting for a slot \
                 of --transfers-per-shard).",
                shard,
            ),
            transfers: counter(
                "tessera_transfers_total",
                "State transfers this shard finished sending, by outcome: `sent` (every part \
                 handed to the link) or `failed` (a record could not be read).",
                &["shard", "outcome"],
            ),
            transfer_keys: counter(
                "tessera_transfer_keys_total",
                "Keys whose values this shard's state transfers sent.",
                shard,
            ),
            transfer_bytes: counter(
                "tessera_transfer_bytes_total",
                "Bytes of values and key digests this shard's state transfers sent (its rate is \
                 the transfer rate, bounded by --transfer-mib-per-s).",
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
