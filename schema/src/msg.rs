//! The protocol's messages as plain Rust values. `wire.rs` turns them into flatbuffers bodies and
//! back; `frame.rs` wraps the bodies in frames.

use std::fmt;

/// The closed set of outcomes. Numbers are the wire values (see `fbs/tessera.fbs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    VersionMismatch = 2,
    KeyTooLarge = 3,
    ValueTooLarge = 4,
    BatchTooLarge = 5,
    BadRequest = 6,
    Overloaded = 7,
    Unavailable = 8,
    Internal = 9,
    MemoryLimit = 10,
    DiskFull = 11,
    Moved = 12,
    Unauthenticated = 13,
    PermissionDenied = 14,
}

impl Status {
    pub const ALL: [Status; 15] = [
        Status::Ok,
        Status::NotFound,
        Status::VersionMismatch,
        Status::KeyTooLarge,
        Status::ValueTooLarge,
        Status::BatchTooLarge,
        Status::BadRequest,
        Status::Overloaded,
        Status::Unavailable,
        Status::Internal,
        Status::MemoryLimit,
        Status::DiskFull,
        Status::Moved,
        Status::Unauthenticated,
        Status::PermissionDenied,
    ];

    pub fn from_wire(value: u8) -> Option<Status> {
        Status::ALL.get(usize::from(value)).copied()
    }

    /// The name used on the CLI and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NotFound => "NOT_FOUND",
            Status::VersionMismatch => "VERSION_MISMATCH",
            Status::KeyTooLarge => "KEY_TOO_LARGE",
            Status::ValueTooLarge => "VALUE_TOO_LARGE",
            Status::BatchTooLarge => "BATCH_TOO_LARGE",
            Status::BadRequest => "BAD_REQUEST",
            Status::Overloaded => "OVERLOADED",
            Status::Unavailable => "UNAVAILABLE",
            Status::Internal => "INTERNAL",
            Status::MemoryLimit => "MEMORY_LIMIT",
            Status::DiskFull => "DISK_FULL",
            Status::Moved => "MOVED",
            Status::Unauthenticated => "UNAUTHENTICATED",
            Status::PermissionDenied => "PERMISSION_DENIED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How durable a write must be before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// The node's mode (`--fsync always` syncs, `--fsync interval` acknowledges on append).
    #[default]
    Default,
    /// Acknowledge only after an fdatasync covers the write.
    Sync,
}

/// How much an operation asks of a cluster (DESIGN.md): what a write waits for and which
/// replica may answer a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum Level {
    /// The node's default (`strong`).
    #[default]
    Default,
    Eventual,
    Session,
    Strong,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Default => "default",
            Level::Eventual => "eventual",
            Level::Session => "session",
            Level::Strong => "strong",
        }
    }
}

/// A session token: `seq` of `vnode` at `epoch` must be applied before a session read answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Token {
    pub vnode: u16,
    pub epoch: u64,
    pub seq: u64,
}

/// What travels with every request besides the operation.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RequestOptions {
    /// The cluster the client talks to (0: whichever).
    pub cluster_id: u64,
    pub level: Level,
    /// Session tokens for the vnodes the request touches.
    pub tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// 0 = no expiry.
    pub ttl_ms: u64,
    /// Compare-and-set: apply only if the current version equals this (0 = key must not exist).
    pub if_version: Option<u64>,
    pub durability: Durability,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    pub key: Vec<u8>,
    pub if_version: Option<u64>,
    pub durability: Durability,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScanRequest {
    /// Opaque cursor from the previous page; empty = start.
    pub cursor: Vec<u8>,
    pub prefix: Vec<u8>,
    /// Page size; 0 = the default.
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Get { key: Vec<u8> },
    Put(PutRequest),
    Delete(DeleteRequest),
}

impl BatchOp {
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Get { key } => key,
            BatchOp::Put(put) => &put.key,
            BatchOp::Delete(delete) => &delete.key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    Get {
        key: Vec<u8>,
    },
    Put(PutRequest),
    Delete(DeleteRequest),
    Batch(Vec<BatchOp>),
    Scan(ScanRequest),
    Stats,
    Topology,
    /// Per held vnode of `from_vnode .. from_vnode + count`: applied sequence and a digest.
    Verify {
        from_vnode: u32,
        count: u32,
        /// Also digest every live value (reads every record).
        values: bool,
    },
    /// Authenticates the connection as a user of the node's users file.
    Auth(AuthRequest),
}

/// A user name and password. `Debug` leaves the password out, so that no log shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Request {
    /// The operation code carried in the frame header.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Ping => Opcode::Ping,
            Request::Get { .. } => Opcode::Get,
            Request::Put(_) => Opcode::Put,
            Request::Delete(_) => Opcode::Delete,
            Request::Batch(_) => Opcode::Batch,
            Request::Scan(_) => Opcode::Scan,
            Request::Stats => Opcode::Stats,
            Request::Topology => Opcode::Topology,
            Request::Verify { .. } => Opcode::Verify,
            Request::Auth(_) => Opcode::Auth,
        }
    }

    /// Safe to send twice: retrying it cannot change stored data.
    pub fn is_idempotent(&self) -> bool {
        match self {
            Request::Ping | Request::Get { .. } | Request::Scan(_) => true,
            Request::Stats | Request::Topology | Request::Verify { .. } => true,
            Request::Auth(_) => true,
            Request::Batch(ops) => ops.iter().all(|op| matches!(op, BatchOp::Get { .. })),
            Request::Put(_) | Request::Delete(_) => false,
        }
    }
}

/// Operation codes in the frame header. Responses carry the request's code with the high bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Ping = 1,
    Get = 2,
    Put = 3,
    Delete = 4,
    Batch = 5,
    Scan = 6,
    Stats = 7,
    Topology = 8,
    Verify = 9,
    Auth = 10,
}

impl Opcode {
    pub const RESPONSE_BIT: u8 = 0x80;

    pub fn from_wire(value: u8) -> Option<Opcode> {
        Some(match value & !Self::RESPONSE_BIT {
            1 => Opcode::Ping,
            2 => Opcode::Get,
            3 => Opcode::Put,
            4 => Opcode::Delete,
            5 => Opcode::Batch,
            6 => Opcode::Scan,
            7 => Opcode::Stats,
            8 => Opcode::Topology,
            9 => Opcode::Verify,
            10 => Opcode::Auth,
            _ => return None,
        })
    }
}

/// The outcome of one GET, PUT, DELETE or PING, or of one batch item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpResult {
    pub status: Status,
    /// Human-readable detail for errors; empty on success.
    pub message: String,
    /// The value, for a GET that found its key.
    pub value: Option<Vec<u8>>,
    /// The key's version after a PUT, at a GET, or the current version on VERSION_MISMATCH.
    pub version: u64,
    /// The session token of the key's vnode after this operation (`seq` 0: none).
    pub token_epoch: u64,
    pub token_seq: u64,
}

impl OpResult {
    pub fn ok(version: u64) -> OpResult {
        OpResult {
            status: Status::Ok,
            message: String::new(),
            value: None,
            version,
            token_epoch: 0,
            token_seq: 0,
        }
    }

    pub fn found(value: Vec<u8>, version: u64) -> OpResult {
        OpResult {
            value: Some(value),
            ..OpResult::ok(version)
        }
    }

    pub fn error(status: Status, message: impl Into<String>) -> OpResult {
        OpResult {
            status,
            message: message.into(),
            ..OpResult::ok(0)
        }
    }

    /// The same result, carrying a session token.
    pub fn with_token(mut self, epoch: u64, seq: u64) -> OpResult {
        self.token_epoch = epoch;
        self.token_seq = seq;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    pub key: Vec<u8>,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScanPage {
    pub entries: Vec<ScanEntry>,
    /// Empty when the scan is complete.
    pub next_cursor: Vec<u8>,
}

/// Counters of one shard, as STATS reports them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ShardStats {
    pub shard: u16,
    pub keys: u64,
    pub live_bytes: u64,
    pub disk_bytes: u64,
    pub segments: u32,
    pub gets: u64,
    pub puts: u64,
    pub deletes: u64,
    pub scans: u64,
    pub fsyncs: u64,
    pub bytes_written: u64,
    pub forwarded_in: u64,
    pub overloaded: u64,
    pub cache_bytes: u64,
    /// Reads answered by the value cache instead of the disk.
    pub cache_hits: u64,
    /// Reads that went to the disk.
    pub cache_misses: u64,
    /// Memory of the index: its tables' allocations plus the expiries kept beside them.
    pub index_bytes: u64,
    pub compactions: u64,
    pub bytes_reclaimed: u64,
    pub expired_keys: u64,
    /// Writes made durable by an fdatasync (divided by fsyncs: the mean group-commit size).
    pub synced_writes: u64,
    /// The node's uptime in milliseconds and its tessera-server version (the same on every
    /// shard of a node).
    pub uptime_ms: u64,
    pub version: String,
    /// State transfers this shard is sending now.
    pub transfers: Vec<TransferStats>,
}

/// A state transfer a shard is sending (`tessera admin status` shows its rate).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TransferStats {
    pub vnode: u16,
    pub to_node: u32,
    /// Keys and bytes (values and key digests) sent so far.
    pub keys: u64,
    pub bytes: u64,
    pub elapsed_ms: u64,
}

/// A member of a cluster, as TOPOLOGY describes it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MemberInfo {
    pub id: u32,
    /// Its client address (`--listen`).
    pub addr: String,
    pub shard_count: u16,
    pub zone: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Topology {
    pub shard_count: u16,
    /// Shard i listens on `shard_port_base + i`.
    pub shard_port_base: u16,
    /// vnode -> shard.
    pub vnode_shard: Vec<u16>,
    /// 0 for a node that is not in a cluster.
    pub cluster_id: u64,
    /// The answering node.
    pub node_id: u32,
    /// Empty for a node that is not in a cluster.
    pub members: Vec<MemberInfo>,
    /// Replicas per chain; vnode v's chain is `chain_replicas[v * w..(v + 1) * w]`.
    pub chain_width: u16,
    pub chain_replicas: Vec<u32>,
    pub chain_epochs: Vec<u64>,
}

impl Topology {
    /// Vnode `vnode`'s replicas, head first (empty for a node not in a cluster).
    pub fn chain(&self, vnode: u16) -> &[u32] {
        let width = usize::from(self.chain_width);
        let start = usize::from(vnode) * width;
        self.chain_replicas.get(start..start + width).unwrap_or(&[])
    }
}

/// One replica of one vnode, as VERIFY reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VnodeCheck {
    pub vnode: u16,
    /// The vnode's sequence number applied at this replica.
    pub applied: u64,
    /// Live keys.
    pub keys: u64,
    /// Order-independent digest of the live keys' (key digest, version, expiry).
    pub digest: u64,
    /// Order-independent digest of the live keys' (key digest, version, value bytes).
    pub values: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The request as a whole failed (bad request, overload, oversized frame...).
    Error {
        status: Status,
        message: String,
    },
    Op(OpResult),
    Batch(Vec<OpResult>),
    Scan(ScanPage),
    Stats(Vec<ShardStats>),
    Topology(Topology),
    Verify(Vec<VnodeCheck>),
}

impl Response {
    pub fn error(status: Status, message: impl Into<String>) -> Response {
        Response::Error {
            status,
            message: message.into(),
        }
    }

    /// The status of the response as a whole (for an op, the op's status).
    pub fn status(&self) -> Status {
        match self {
            Response::Error { status, .. } => *status,
            Response::Op(result) => result.status,
            _ => Status::Ok,
        }
    }
}
