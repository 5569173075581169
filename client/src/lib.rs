//! tessera-client: talk to Tessera nodes.
//!
//! - [`session`]: the sans-IO core: request ids, encoding, response matching, the routing table.
//! - [`client`]: an async client for tokio applications: a connection pool, pipelining,
//!   per-request timeouts, retries of idempotent requests, and shard-aware routing.
//! - The `tessera` CLI (`src/bin/tessera.rs`) is built on the async client.

pub mod client;
pub mod duration;
pub mod session;

pub use client::{Client, ClientConfig, ClientError};
pub use duration::{parse_duration, parse_ttl_ms};
pub use tessera_schema::msg::{
    BatchOp, DeleteRequest, Durability, OpResult, PutRequest, Request, Response, ScanEntry,
    ScanPage, ScanRequest, ShardStats, Status, Topology,
};
