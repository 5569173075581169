//! tessera-client: talk to Tessera nodes.
//!
//! - [`session`]: the sans-IO core of a connection: request ids, encoding, response matching.
//! - [`routing`]: the sans-IO routing table: which member and shard serve a key, and the
//!   session tokens a client handle keeps.
//! - [`client`]: an async client for tokio applications: a connection pool, pipelining,
//!   per-request timeouts, retries of idempotent requests, and shard-aware routing.
//! - The `tessera` CLI (`src/bin/tessera.rs`) is built on the async client.

pub mod client;
mod conn;
pub mod duration;
pub mod routing;
pub mod session;
pub mod tls;

pub use client::{Client, ClientConfig, ClientError, Credentials};
pub use duration::{parse_duration, parse_ttl_ms};
pub use tessera_schema::msg::{
    BatchOp, DeleteRequest, Durability, Level, OpResult, PutRequest, Request, Response, ScanEntry,
    ScanPage, ScanRequest, ShardStats, Status, Topology, TransferStats, VnodeCheck,
};
