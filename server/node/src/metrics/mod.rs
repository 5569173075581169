//! Prometheus metrics: the node's registry, and what each shard records into it.
//!
//! Off the hot path: a shard records into its own unsynchronised counters and histograms
//! (the prometheus crate's `Local*` types: plain adds on the shard's core, nothing shared with
//! another core) and publishes them into the node's registry every `PUBLISH_INTERVAL` from its
//! control loop, together with its store's and its replication's figures (`publish`). The
//! metrics thread (`http.rs`) only reads the registry, so a scrape never runs on a
//! shard nor waits for one; what it shows is up to `PUBLISH_INTERVAL` old.
//!
//! Labels: `shard`, `operation`, `level`, `status`, `peer` (a member's node id) and `kind`;
//! never a key or a vnode. `level` is the consistency level a data operation asked for
//! (`strong` when it named none, as the node applies it) and `none` for ping, stats, topology
//! and verify. A request refused before it was decoded (an oversized or malformed frame)
//! counts under its frame's operation, or `unknown`, with no duration. Names and units follow
//! Prometheus' conventions (seconds, bytes, `_total` on counters): ops/README.md lists them.
//!
//! Files: `families.rs` (every family, the registry, the text exposition), `record.rs` (what a
//! shard records and publishes), `http.rs` (the `--metrics-listen` thread).

mod families;
pub mod http;
mod record;

use std::time::Duration;

use tessera_schema::msg::{Level, Opcode, Request};

pub use families::NodeMetrics;
pub use record::{publish, ShardMetrics};

/// How often a shard publishes what it recorded.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// `operation` label values, by opcode (0: a frame whose opcode is not known).
pub(crate) const OPERATIONS: [&str; 11] = [
    "unknown", "ping", "get", "put", "delete", "batch", "scan", "stats", "topology", "verify",
    "auth",
];
/// `level` label values.
pub(crate) const LEVELS: [&str; 4] = ["none", "eventual", "session", "strong"];
/// Request durations, in seconds: 25 us (an in-memory read) to 5 s (past the client's timeout).
pub(crate) const DURATION_BUCKETS_S: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 5.0,
];
/// Shard stalls, in seconds: from the threshold (`stall::STALL`) to past a client's timeout.
pub(crate) const STALL_BUCKETS_S: [f64; 9] = [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
/// Writes made durable by one fdatasync.
pub(crate) const GROUP_COMMIT_BUCKETS: [f64; 12] = [
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
    pub(crate) const ALL: [NodeState; 3] =
        [NodeState::Starting, NodeState::Serving, NodeState::Stopping];

    pub(crate) fn name(self) -> &'static str {
        match self {
            NodeState::Starting => "starting",
            NodeState::Serving => "serving",
            NodeState::Stopping => "stopping",
        }
    }
}

/// What a request was, for its labels.
#[derive(Clone, Copy, Debug)]
pub struct RequestKind {
    pub(crate) operation: usize,
    pub(crate) level: usize,
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
    pub(crate) fn refused(opcode: u8) -> RequestKind {
        let operation = Opcode::from_wire(opcode).map_or(0, |op| op as usize);
        RequestKind {
            operation,
            level: 0,
        }
    }
}
