//! The async client for tokio applications.
//!
//! Each connection pipelines: many requests share it, each with its own id, and a reader task
//! hands each response to its caller whatever the order. A pool keeps `pool_size` connections to
//! the node's client port and, when shard-aware, as many to each shard's own port, so a request
//! goes straight to the core that owns its key (the node forwards it anyway if the table is
//! stale). Requests that cannot change data (`Request::is_idempotent`) are retried on transport
//! errors, timeouts, OVERLOADED and UNAVAILABLE, with a short backoff; writes are never retried,
//! because a write that timed out may have been applied.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use tessera_schema::msg::*;
use tessera_schema::verify::{check_request, Refusal};

use crate::session::{Routing, Session};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Connections per address (the client port, and each shard port).
    pub pool_size: usize,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Extra attempts for idempotent requests.
    pub retries: u32,
    /// Route key requests to the owning shard's port.
    pub shard_aware: bool,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            pool_size: 2,
            timeout: Duration::from_secs(5),
            retries: 2,
            shard_aware: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error status.
    #[error("{status}: {message}")]
    Status {
        status: Status,
        message: String,
        version: u64,
    },
    #[error("connection error: {0}")]
    Io(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn from_result(result: OpResult) -> ClientError {
        ClientError::Status {
            status: result.status,
            message: result.message,
            version: result.version,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => {
                matches!(status, Status::Overloaded | Status::Unavailable)
            }
            ClientError::Io(_) | ClientError::Timeout(_) => true,
            ClientError::Protocol(_) => false,
        }
    }
}

impl From<Refusal> for ClientError {
    fn from(refusal: Refusal) -> ClientError {
        ClientError::Status {
            status: refusal.status,
            message: refusal.message,
            version: 0,
        }
    }
}

type Waiter = oneshot::Sender<Result<Response, ClientError>>;

#[derive(Default)]
struct ConnState {
    session: Session,
    waiters: HashMap<u64, Waiter>,
    /// Frames encoded and not yet written. Concurrent callers append here and one flusher task
    /// writes them all at once, so a pipelined connection makes one write per batch, not one
    /// per request.
    outgoing: Vec<u8>,
    /// A flusher task is running.
    flushing: bool,
}

/// One pipelined connection.
struct Conn {
    state: Mutex<ConnState>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    broken: Arc<AtomicBool>,
}

impl Conn {
    async fn connect(address: SocketAddr) -> Result<Arc<Conn>, ClientError> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| ClientError::Io(format!("cannot connect to {address}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut reader, writer) = stream.into_split();
        let conn = Arc::new(Conn {
            state: Mutex::new(ConnState {
                session: Session::new(),
                ..ConnState::default()
            }),
            writer: tokio::sync::Mutex::new(writer),
            broken: Arc::new(AtomicBool::new(false)),
        });
        let weak = Arc::downgrade(&conn);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = reader.read(&mut buffer).await;
                let Some(conn) = weak.upgrade() else { return };
                match read {
                    Ok(n) if n > 0 => {
                        if let Err(error) = conn.dispatch(&buffer[..n]) {
                            conn.fail_all(error);
                            return;
                        }
                    }
                    Ok(_) => {
                        return conn
                            .fail_all(ClientError::Io("connection closed by the node".into()))
                    }
                    Err(e) => return conn.fail_all(ClientError::Io(e.to_string())),
                }
            }
        });
        Ok(conn)
    }

    fn dispatch(&self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut state = self.state.lock().expect("connection state lock");
        state.session.handle_bytes(bytes);
        loop {
            match state.session.poll_response() {
                Ok(Some((0, response))) => {
                    let message = match response {
                        Response::Error { status, message } => format!("{status}: {message}"),
                        other => format!("{other:?}"),
                    };
                    return Err(ClientError::Protocol(format!(
                        "the node closed the connection: {message}"
                    )));
                }
                Ok(Some((id, response))) => {
                    if let Some(waiter) = state.waiters.remove(&id) {
                        let _ = waiter.send(Ok(response));
                    }
                }
                Ok(None) => return Ok(()),
                Err(error) => return Err(ClientError::Protocol(error.to_string())),
            }
        }
    }

    fn fail_all(&self, error: ClientError) {
        self.broken.store(true, Ordering::SeqCst);
        let mut state = self.state.lock().expect("connection state lock");
        for (_, waiter) in state.waiters.drain() {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// Writes everything queued, until the queue is empty. Runs in its own task, so that a
    /// caller's timeout can never cancel a write halfway through a frame.
    async fn flush(self: Arc<Self>) {
        loop {
            // Let the tasks that are ready now queue their requests first. Without this the
            // runtime ran the freshly spawned flusher before the other lanes woken by the same
            // read (tokio's LIFO slot), and every request went out in its own write: one
            // `sendto` per request at pipeline 16, which made the client the bottleneck.
            tokio::task::yield_now().await;
            let batch = {
                let mut state = self.state.lock().expect("connection state lock");
                if state.outgoing.is_empty() {
                    state.flushing = false;
                    return;
                }
                std::mem::take(&mut state.outgoing)
            };
            let mut writer = self.writer.lock().await;
            if let Err(e) = writer.write_all(&batch).await {
                drop(writer);
                self.fail_all(ClientError::Io(e.to_string()));
                self.state.lock().expect("connection state lock").flushing = false;
                return;
            }
        }
    }

    async fn call(
        self: &Arc<Self>,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(ClientError::Io("connection is closed".into()));
        }
        let (id, receiver) = {
            let mut guard = self.state.lock().expect("connection state lock");
            let state = &mut *guard;
            let id = state.session.encode(request, &mut state.outgoing);
            let (sender, receiver) = oneshot::channel();
            state.waiters.insert(id, sender);
            if !state.flushing {
                state.flushing = true;
                tokio::spawn(self.clone().flush());
            }
            (id, receiver)
        };
        let attempt = async {
            receiver
                .await
                .unwrap_or_else(|_| Err(ClientError::Io("connection dropped".into())))
        };
        let outcome = tokio::time::timeout(timeout, attempt).await;
        let result = outcome.unwrap_or(Err(ClientError::Timeout(timeout)));
        if result.is_err() {
            let mut state = self.state.lock().expect("connection state lock");
            state.session.abandon(id);
            state.waiters.remove(&id);
        }
        result
    }
}

/// `pool_size` connections to one address, used round-robin, replaced when broken.
struct Pool {
    address: SocketAddr,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
}

impl Pool {
    fn new(address: SocketAddr, size: usize) -> Pool {
        Pool {
            address,
            slots: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    async fn conn(&self) -> Result<Arc<Conn>, ClientError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.broken.load(Ordering::SeqCst)) {
            return Ok(conn.clone());
        }
        let conn = Conn::connect(self.address).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// A client of one Tessera node.
pub struct Client {
    config: ClientConfig,
    main: Pool,
    routing: Option<Routing>,
    shard_pools: Vec<Pool>,
}

fn resolve(address: &str) -> Result<SocketAddr, ClientError> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|e| ClientError::Io(format!("cannot resolve {address}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Io(format!("{address} resolves to nothing")))
}

impl Client {
    /// Connects with the default configuration.
    pub async fn connect(address: &str) -> Result<Client, ClientError> {
        Client::connect_with(address, ClientConfig::default()).await
    }

    pub async fn connect_with(address: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let address = resolve(address)?;
        let mut client = Client {
            main: Pool::new(address, config.pool_size),
            config,
            routing: None,
            shard_pools: Vec::new(),
        };
        client.main.conn().await?;
        if client.config.shard_aware {
            if let Response::Topology(topology) = client.request(Request::Topology).await? {
                client.routing = Routing::new(topology);
            }
            if let Some(routing) = &client.routing {
                client.shard_pools = (0..routing.shard_count())
                    .map(|shard| {
                        let shard_address = SocketAddr::new(address.ip(), routing.port_of(shard));
                        Pool::new(shard_address, client.config.pool_size)
                    })
                    .collect();
            }
        }
        Ok(client)
    }

    /// The node's vnode table, when the client routes by shard.
    pub fn routing(&self) -> Option<&Routing> {
        self.routing.as_ref()
    }

    fn pool_for(&self, request: &Request) -> &Pool {
        let key = match request {
            Request::Get { key } => key,
            Request::Put(put) => &put.key,
            Request::Delete(delete) => &delete.key,
            _ => return &self.main,
        };
        match &self.routing {
            Some(routing) => &self.shard_pools[usize::from(routing.shard_of(key))],
            None => &self.main,
        }
    }

    /// Sends any request and returns the node's response. Limits are checked here first, so an
    /// over-limit request fails without a round trip, with the status the node would give.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        check_request(&request)?;
        let attempts = if request.is_idempotent() {
            self.config.retries + 1
        } else {
            1
        };
        let mut backoff = Duration::from_millis(5);
        let mut last_error = None;
        for _ in 0..attempts {
            let result = match self.pool_for(&request).conn().await {
                Ok(conn) => conn.call(&request, self.config.timeout).await,
                Err(error) => Err(error),
            };
            let result = result.and_then(|response| match response {
                Response::Error { status, message } => Err(ClientError::Status {
                    status,
                    message,
                    version: 0,
                }),
                response => Ok(response),
            });
            match result {
                Err(error) if error.retryable() => last_error = Some(error),
                other => return other,
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn op(&self, request: Request) -> Result<OpResult, ClientError> {
        match self.request(request).await? {
            Response::Op(result) if result.status == Status::Ok => Ok(result),
            Response::Op(result) => Err(ClientError::from_result(result)),
            other => Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.op(Request::Ping).await.map(|_| ())
    }

    /// The value and version of `key`, or `None` when it does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        match self.op(Request::Get { key: key.to_vec() }).await {
            Ok(result) => Ok(Some((result.value.unwrap_or_default(), result.version))),
            Err(error) if error.status() == Some(Status::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Stores `value` under `key`; returns the new version.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        self.put_with(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_ms: 0,
            if_version: None,
            durability: Durability::Default,
        })
        .await
    }

    /// A PUT with every option (TTL, compare-and-set, durability); returns the new version.
    pub async fn put_with(&self, put: PutRequest) -> Result<u64, ClientError> {
        self.op(Request::Put(put)).await.map(|r| r.version)
    }

    /// Deletes `key`; NOT_FOUND is an error status.
    pub async fn delete_with(&self, delete: DeleteRequest) -> Result<(), ClientError> {
        self.op(Request::Delete(delete)).await.map(|_| ())
    }

    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        self.delete_with(DeleteRequest {
            key: key.to_vec(),
            if_version: None,
            durability: Durability::Default,
        })
        .await
    }

    /// Runs many operations in one frame; one result per op, in order.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<Vec<OpResult>, ClientError> {
        match self.request(Request::Batch(ops)).await? {
            Response::Batch(results) => Ok(results),
            other => Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// One page of a scan; pass `next_cursor` back for the next page (empty = done).
    pub async fn scan(&self, scan: ScanRequest) -> Result<ScanPage, ClientError> {
        match self.request(Request::Scan(scan)).await? {
            Response::Scan(page) => Ok(page),
            other => Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    pub async fn stats(&self) -> Result<Vec<ShardStats>, ClientError> {
        match self.request(Request::Stats).await? {
            Response::Stats(shards) => Ok(shards),
            other => Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }
}
