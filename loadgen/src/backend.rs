//! The stores a run drives: Tessera through `tessera-client`, and any RESP server (Redis,
//! Dragonfly, Valkey) through the `redis` crate. Both execute the same `Op`s.
//!
//! Mapping: read = GET, update/insert = PUT/SET, read-modify-write = GET then PUT/SET, batch =
//! one Tessera BATCH / one non-transactional Redis pipeline. Scan (ycsb-e) is a prefix scan of up
//! to `count` keys sharing the start key's prefix on Tessera; Redis has no ordered keys, so it
//! runs one `SCAN 0 MATCH prefix* COUNT count`, which is not the same work: ycsb-e is not a
//! like-for-like comparison.
//!
//! A read of a missing key is an answer, not an error (counted as `not_found`).

use std::sync::Arc;
use std::time::Duration;

use tessera_client::{BatchOp, Client, ClientConfig, ClientError, PutRequest, ScanRequest, Status};

use crate::workload::{key_bytes, Op};

/// Where the load goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tessera(String),
    Redis(String),
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, String> {
        if let Some(address) = text.strip_prefix("tessera://") {
            Ok(Target::Tessera(address.trim_end_matches('/').to_string()))
        } else if text.starts_with("redis://") {
            Ok(Target::Redis(text.to_string()))
        } else {
            Err(format!(
                "'{text}': use tessera://HOST:PORT or redis://HOST:PORT"
            ))
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Target::Tessera(_) => "tessera",
            Target::Redis(_) => "redis",
        }
    }
}

/// Value bytes: slices of one random buffer, so no value is built per operation.
pub struct Values {
    bytes: Vec<u8>,
    max_len: usize,
}

impl Values {
    pub fn new(max_len: usize, seed: u64) -> Values {
        use rand::{RngCore, SeedableRng};
        let mut bytes = vec![0u8; max_len + 64 * 1024];
        rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut bytes);
        Values { bytes, max_len }
    }

    pub fn for_key(&self, key: u64, len: usize) -> &[u8] {
        let len = len.min(self.max_len);
        let start = (key.wrapping_mul(7919) % (64 * 1024)) as usize;
        &self.bytes[start..start + len]
    }
}

/// How an operation ended, when it did not succeed.
pub type ErrorLabel = String;

/// One connection to the target.
#[derive(Clone)]
pub enum Conn {
    Tessera(Arc<Client>),
    Redis(redis::aio::MultiplexedConnection),
}

pub struct Options {
    pub key_size: usize,
    pub timeout: Duration,
    pub shard_aware: bool,
    pub read_first: bool,
    pub level: tessera_client::Level,
    /// TLS to the nodes (`--tls-ca`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The user to log in as (`--user`).
    pub credentials: Option<tessera_client::Credentials>,
}

impl Conn {
    pub async fn open(target: &Target, options: &Options) -> Result<Conn, String> {
        match target {
            Target::Tessera(address) => {
                let config = ClientConfig {
                    pool_size: 1,
                    timeout: options.timeout,
                    retries: 0,
                    shard_aware: options.shard_aware,
                    level: options.level,
                    prefer_first_address: options.read_first,
                    tls: options.tls.clone(),
                    credentials: options.credentials.clone(),
                };
                let client = Client::connect_with(address, config)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Conn::Tessera(Arc::new(client)))
            }
            Target::Redis(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                let config =
                    redis::AsyncConnectionConfig::new().set_response_timeout(Some(options.timeout));
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| format!("cannot connect to {url}: {e}"))?;
                Ok(Conn::Redis(conn))
            }
        }
    }

    /// Runs one operation; `Ok(found_all)` when the store answered (false if a read missed).
    pub async fn execute(
        &mut self,
        op: &Op,
        values: &Values,
        options: &Options,
    ) -> Result<bool, ErrorLabel> {
        match self {
            Conn::Tessera(client) => tessera_execute(client, op, values, options.key_size).await,
            Conn::Redis(conn) => redis_execute(conn, op, values, options.key_size).await,
        }
    }
}

fn label(error: ClientError) -> ErrorLabel {
    match error {
        ClientError::Status { status, .. } => status.name().to_string(),
        ClientError::Timeout(_) => "TIMEOUT".into(),
        ClientError::Io(_) => "IO".into(),
        ClientError::Protocol(_) => "PROTOCOL".into(),
    }
}

fn put_request(key: u64, value_len: usize, values: &Values, key_size: usize) -> PutRequest {
    PutRequest {
        key: key_bytes(key, key_size),
        value: values.for_key(key, value_len).to_vec(),
        ttl_ms: 0,
        if_version: None,
        durability: Default::default(),
    }
}

fn scan_prefix(start: u64, key_size: usize) -> Vec<u8> {
    let mut key = key_bytes(start, key_size);
    key.truncate(key.len().saturating_sub(2).max(5));
    key
}

async fn tessera_execute(
    client: &Client,
    op: &Op,
    values: &Values,
    key_size: usize,
) -> Result<bool, ErrorLabel> {
    match op {
        Op::Read(key) => client
            .get(&key_bytes(*key, key_size))
            .await
            .map(|v| v.is_some())
            .map_err(label),
        Op::Update { key, value_len } | Op::Insert { key, value_len } => client
            .put_with(put_request(*key, *value_len, values, key_size))
            .await
            .map(|_| true)
            .map_err(label),
        Op::ReadModifyWrite { key, value_len } => {
            let found = client
                .get(&key_bytes(*key, key_size))
                .await
                .map_err(label)?
                .is_some();
            client
                .put_with(put_request(*key, *value_len, values, key_size))
                .await
                .map_err(label)?;
            Ok(found)
        }
        Op::Scan { start, count } => {
            let scan = ScanRequest {
                cursor: Vec::new(),
                prefix: scan_prefix(*start, key_size),
                limit: *count as u32,
            };
            client
                .scan(scan)
                .await
                .map(|page| !page.entries.is_empty())
                .map_err(label)
        }
        Op::Batch(ops) => {
            let batch = ops
                .iter()
                .map(|op| match op {
                    Op::Read(key) => BatchOp::Get {
                        key: key_bytes(*key, key_size),
                    },
                    Op::Update { key, value_len }
                    | Op::Insert { key, value_len }
                    | Op::ReadModifyWrite { key, value_len } => {
                        BatchOp::Put(put_request(*key, *value_len, values, key_size))
                    }
                    Op::Scan { start, .. } => BatchOp::Get {
                        key: key_bytes(*start, key_size),
                    },
                    Op::Batch(_) => unreachable!("batches do not nest"),
                })
                .collect();
            let results = client.batch(batch).await.map_err(label)?;
            let mut found_all = true;
            for result in results {
                match result.status {
                    Status::Ok => {}
                    Status::NotFound => found_all = false,
                    other => return Err(other.name().to_string()),
                }
            }
            Ok(found_all)
        }
    }
}

fn redis_label(error: redis::RedisError) -> ErrorLabel {
    if error.is_timeout() {
        "TIMEOUT".into()
    } else if error.is_io_error() || error.is_connection_dropped() {
        "IO".into()
    } else {
        format!("REDIS_{:?}", error.kind()).to_uppercase()
    }
}

async fn redis_execute(
    conn: &mut redis::aio::MultiplexedConnection,
    op: &Op,
    values: &Values,
    key_size: usize,
) -> Result<bool, ErrorLabel> {
    use redis::AsyncCommands;
    match op {
        Op::Read(key) => {
            let value: Option<Vec<u8>> = conn
                .get(key_bytes(*key, key_size))
                .await
                .map_err(redis_label)?;
            Ok(value.is_some())
        }
        Op::Update { key, value_len } | Op::Insert { key, value_len } => {
            let () = conn
                .set(key_bytes(*key, key_size), values.for_key(*key, *value_len))
                .await
                .map_err(redis_label)?;
            Ok(true)
        }
        Op::ReadModifyWrite { key, value_len } => {
            let value: Option<Vec<u8>> = conn
                .get(key_bytes(*key, key_size))
                .await
                .map_err(redis_label)?;
            let () = conn
                .set(key_bytes(*key, key_size), values.for_key(*key, *value_len))
                .await
                .map_err(redis_label)?;
            Ok(value.is_some())
        }
        Op::Scan { start, count } => {
            let mut pattern = scan_prefix(*start, key_size);
            pattern.push(b'*');
            let (_, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(*count)
                .query_async(conn)
                .await
                .map_err(redis_label)?;
            Ok(!keys.is_empty())
        }
        Op::Batch(ops) => {
            let mut pipe = redis::pipe();
            for op in ops {
                match op {
                    Op::Read(key) | Op::Scan { start: key, .. } => {
                        pipe.get(key_bytes(*key, key_size));
                    }
                    Op::Update { key, value_len }
                    | Op::Insert { key, value_len }
                    | Op::ReadModifyWrite { key, value_len } => {
                        pipe.set(key_bytes(*key, key_size), values.for_key(*key, *value_len));
                    }
                    Op::Batch(_) => unreachable!("batches do not nest"),
                }
            }
            let replies: Vec<redis::Value> = pipe.query_async(conn).await.map_err(redis_label)?;
            Ok(!replies.iter().any(|r| matches!(r, redis::Value::Nil)))
        }
    }
}
