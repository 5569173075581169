//! The async client for tokio applications.
//!
//! The client bootstraps from any of the addresses it is given: it asks for the TOPOLOGY (a
//! node alone, or a cluster's members and chain table) and from then on sends each request
//! where it belongs (`routing.rs`): a key's write to its vnode's head, a read to one of its
//! replicas, each straight to the shard port of the core that owns it when shard-aware. A
//! request answered MOVED (the client's table is stale) was not executed: the client fetches
//! the topology again and resends it, whatever it is. A BATCH in a cluster is split by
//! owner, its parts sent at once, and the results put back in the caller's order; SCAN pages
//! walk every vnode, each page asked of a node that holds the cursor's vnode.
//!
//! Pools keep `pool_size` pipelined connections per address (`conn.rs`). Requests that cannot
//! change data (`Request::is_idempotent`) are retried on transport errors, timeouts,
//! OVERLOADED and UNAVAILABLE, with a short backoff; writes are never retried, because a write
//! that timed out may have been applied.
//!
//! Consistency: every request carries the configured level (`ClientConfig::level`, default:
//! the node's, `strong`); a client handle keeps the session token of every vnode it wrote or
//! read, and `session` reads carry theirs, so a handle reads its own writes from any replica.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tessera_schema::msg::*;
use tessera_schema::placement::decode_scan_cursor;
use tessera_schema::verify::{check_request, Refusal};

use crate::conn::Pool;
use crate::routing::{Routing, Target, Tokens};

/// How many times a request answered MOVED is sent again after a topology refresh.
const MOVED_RETRIES: u32 = 3;

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
    /// The consistency level of every request (`Level::Default`: the node's, `strong`).
    pub level: Level,
    /// Reads go to the node of the first address given when it holds a replica of the key
    /// (the CLI: "read through this node"); otherwise they rotate over each chain.
    pub prefer_first_address: bool,
    /// TLS to every node (`tls::client_tls`); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The user every connection logs in as (AUTH, first thing), for nodes with `--users`;
    /// `None`: no AUTH (a node with users then answers UNAUTHENTICATED, unless the client
    /// certificate of `tls` names a user).
    pub credentials: Option<Credentials>,
}

/// A user name and password. `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            pool_size: 2,
            timeout: Duration::from_secs(5),
            retries: 2,
            shard_aware: true,
            level: Level::Default,
            prefer_first_address: false,
            tls: None,
            credentials: None,
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

    /// The error as one operation's result (a batch part that failed as a whole).
    fn to_result(&self) -> OpResult {
        match self {
            ClientError::Status {
                status, message, ..
            } => OpResult::error(*status, message.clone()),
            ClientError::Io(_) | ClientError::Timeout(_) => {
                OpResult::error(Status::Unavailable, format!("{self}; outcome unknown"))
            }
            ClientError::Protocol(_) => OpResult::error(Status::Internal, self.to_string()),
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

/// The pools of one member: its main port and each shard's.
struct MemberPools {
    main: Arc<Pool>,
    shards: Vec<Arc<Pool>>,
}

/// The topology the client routes by, with a pool for every address it names.
struct View {
    routing: Arc<Routing>,
    members: Vec<MemberPools>,
}

impl View {
    /// Pools of `old` are kept for the addresses that stay.
    fn new(routing: Routing, config: &ClientConfig, old: Option<&View>) -> View {
        let mut reuse: HashMap<SocketAddr, Arc<Pool>> = HashMap::new();
        for member in old.map_or(&[][..], |v| &v.members[..]) {
            for pool in std::iter::once(&member.main).chain(&member.shards) {
                reuse.insert(pool.address(), pool.clone());
            }
        }
        let mut pool = |addr: SocketAddr| {
            reuse
                .entry(addr)
                .or_insert_with(|| Arc::new(Pool::new(addr, config)))
                .clone()
        };
        let members = (0..routing.member_count())
            .map(|m| MemberPools {
                main: pool(routing.addr(m)),
                shards: (0..routing.shard_count(m))
                    .map(|s| pool(routing.shard_addr(m, s)))
                    .collect(),
            })
            .collect();
        View {
            routing: Arc::new(routing),
            members,
        }
    }

    fn pool(&self, target: Target) -> &Arc<Pool> {
        let member = &self.members[target.member];
        match target.shard {
            Some(shard) => &member.shards[usize::from(shard)],
            None => &member.main,
        }
    }

    fn find_pool(&self, addr: SocketAddr) -> Option<Arc<Pool>> {
        self.members
            .iter()
            .find(|m| m.main.address() == addr)
            .map(|m| m.main.clone())
    }
}

/// A client of a Tessera node or cluster.
pub struct Client {
    config: ClientConfig,
    /// The addresses the client was given: asked again when no member answers.
    seeds: Vec<SocketAddr>,
    view: RwLock<Arc<View>>,
    tokens: Mutex<Tokens>,
    /// Rotates reads over each chain.
    spread: AtomicUsize,
    /// The member at the first address given, if it is one.
    first_member: RwLock<Option<usize>>,
}

fn resolve(address: &str) -> Result<SocketAddr, ClientError> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|e| ClientError::Io(format!("cannot resolve {address}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Io(format!("{address} resolves to nothing")))
}

/// Sends `request` once on a connection of `pool`; an error status is an `Err`.
async fn call(
    pool: &Pool,
    request: &Request,
    options: &RequestOptions,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let conn = pool.conn().await?;
    match conn.call(request, options, timeout).await? {
        Response::Error { status, message } => Err(ClientError::Status {
            status,
            message,
            version: 0,
        }),
        response => Ok(response),
    }
}

/// Asks each address in turn for the topology; the first good answer makes the view.
async fn fetch_view(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    old: Option<&View>,
) -> Result<View, ClientError> {
    let mut last_error = ClientError::Io("no address to ask for the topology".into());
    for &addr in addrs {
        let pool = old
            .and_then(|v| v.find_pool(addr))
            .unwrap_or_else(|| Arc::new(Pool::new(addr, config)));
        let answer = call(
            &pool,
            &Request::Topology,
            &RequestOptions::default(),
            config.timeout,
        )
        .await;
        last_error = match answer {
            Ok(Response::Topology(topology)) => match Routing::new(topology, addr) {
                Ok(routing) => return Ok(View::new(routing, config, old)),
                Err(why) => ClientError::Protocol(format!("{addr}: {why}")),
            },
            Ok(other) => ClientError::Protocol(format!("{addr} answered TOPOLOGY with {other:?}")),
            Err(error) => error,
        };
    }
    Err(last_error)
}

/// The member whose client address is `addr`.
fn member_at(routing: &Routing, addr: SocketAddr) -> Option<usize> {
    (0..routing.member_count()).find(|&m| routing.addr(m) == addr)
}

/// Whether an answer says the request went to a node that does not own it.
fn is_moved(result: &Result<Response, ClientError>) -> bool {
    match result {
        Ok(response) => response.status() == Status::Moved,
        Err(error) => error.status() == Some(Status::Moved),
    }
}

impl Client {
    /// Connects with the default configuration.
    pub async fn connect(addresses: &str) -> Result<Client, ClientError> {
        Client::connect_with(addresses, ClientConfig::default()).await
    }

    /// Connects to a node, or to a cluster through any of the comma-separated `addresses`.
    pub async fn connect_with(
        addresses: &str,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let seeds = addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(resolve)
            .collect::<Result<Vec<_>, _>>()?;
        let view = fetch_view(&seeds, &config, None).await?;
        let first_member = RwLock::new(member_at(&view.routing, seeds[0]));
        // Clients start their rotation at different replicas, so that heads are not every
        // client's first choice.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);
        Ok(Client {
            config,
            seeds,
            view: RwLock::new(Arc::new(view)),
            tokens: Mutex::new(Tokens::default()),
            spread: AtomicUsize::new(start),
            first_member,
        })
    }

    fn view(&self) -> Arc<View> {
        self.view.read().expect("view lock").clone()
    }

    /// The node's or cluster's table, when the client routes by shard.
    pub fn routing(&self) -> Option<Arc<Routing>> {
        self.config.shard_aware.then(|| self.topology())
    }

    /// The topology the client routes by.
    pub fn topology(&self) -> Arc<Routing> {
        self.view().routing.clone()
    }

    /// Asks the members (then the addresses the client was given) for the topology again.
    pub async fn refresh_topology(&self) -> Result<(), ClientError> {
        let old = self.view();
        let mut addrs: Vec<SocketAddr> = (0..old.routing.member_count())
            .map(|m| old.routing.addr(m))
            .collect();
        for seed in &self.seeds {
            if !addrs.contains(seed) {
                addrs.push(*seed);
            }
        }
        let view = fetch_view(&addrs, &self.config, Some(&old)).await?;
        *self.first_member.write().expect("lock") = member_at(&view.routing, self.seeds[0]);
        if old.routing.cluster_id() != view.routing.cluster_id() {
            return Err(ClientError::Protocol(format!(
                "the nodes now belong to cluster {:016x}, not {:016x}",
                view.routing.cluster_id(),
                old.routing.cluster_id()
            )));
        }
        *self.view.write().expect("view lock") = Arc::new(view);
        Ok(())
    }

    fn options(&self, routing: &Routing, vnodes: impl IntoIterator<Item = u16>) -> RequestOptions {
        let level = self.config.level;
        RequestOptions {
            cluster_id: routing.cluster_id(),
            level,
            tokens: self
                .tokens
                .lock()
                .expect("tokens lock")
                .for_request(level, vnodes),
        }
    }

    fn observe(&self, vnode: u16, result: &OpResult) {
        let token = Token {
            vnode,
            epoch: result.token_epoch,
            seq: result.token_seq,
        };
        self.tokens.lock().expect("tokens lock").observe(token);
    }

    /// Where `request` goes, and the vnode of its key (if it has one).
    fn place(&self, routing: &Routing, request: &Request) -> (Target, Option<u16>) {
        let keyed = |key: &[u8], write: bool| {
            let vnode = routing.vnode_of(key);
            (
                self.target(routing, vnode, write, self.config.shard_aware),
                Some(vnode),
            )
        };
        match request {
            Request::Get { key } => keyed(key, false),
            Request::Put(put) => keyed(&put.key, true),
            Request::Delete(delete) => keyed(&delete.key, true),
            Request::Scan(scan) => {
                let vnode = decode_scan_cursor(&scan.cursor, routing.vnodes()).map_or(0, |c| c.0);
                (self.target(routing, vnode as u16, false, false), None)
            }
            _ => {
                let member = routing.answering_member();
                (
                    Target {
                        member,
                        shard: None,
                    },
                    None,
                )
            }
        }
    }

    /// Where an operation on `vnode` goes (`Routing::target`, with this client's preference).
    fn target(&self, routing: &Routing, vnode: u16, write: bool, shard_aware: bool) -> Target {
        let preferred = self
            .config
            .prefer_first_address
            .then(|| *self.first_member.read().expect("lock"))
            .flatten()
            .filter(|m| !write && routing.replicas(vnode).contains(m));
        if let Some(member) = preferred {
            return Target {
                member,
                shard: shard_aware.then(|| routing.shard_on(member, vnode)),
            };
        }
        let spread = self.spread.fetch_add(1, Ordering::Relaxed);
        routing.target(vnode, write, spread, shard_aware)
    }

    /// Sends `request` to `target`, retrying what is safe to retry (not MOVED: the caller
    /// refreshes its view for that).
    async fn send(
        &self,
        view: &View,
        target: Target,
        request: &Request,
        options: &RequestOptions,
    ) -> Result<Response, ClientError> {
        let attempts = if request.is_idempotent() {
            self.config.retries + 1
        } else {
            1
        };
        let mut backoff = Duration::from_millis(5);
        let mut result = Err(ClientError::Io("no attempt".into()));
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            result = call(view.pool(target), request, options, self.config.timeout).await;
            match &result {
                Err(error) if error.retryable() => continue,
                _ => break,
            }
        }
        result
    }

    /// Sends any request and returns the node's response. Limits are checked here first, so an
    /// over-limit request fails without a round trip, with the status the node would give.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        check_request(&request)?;
        if let Request::Batch(ops) = request {
            return self.batch_parts(ops).await.map(Response::Batch);
        }
        let mut refreshes = 0;
        loop {
            let view = self.view();
            let (target, vnode) = self.place(&view.routing, &request);
            let options = self.options(&view.routing, vnode);
            let result = self.send(&view, target, &request, &options).await;
            if is_moved(&result) && refreshes < MOVED_RETRIES {
                refreshes += 1;
                self.refresh_topology().await?;
                continue;
            }
            if let (Ok(Response::Op(op)), Some(vnode)) = (&result, vnode) {
                self.observe(vnode, op);
            }
            return result;
        }
    }

    /// Sends `request` to member `member` (its main port): STATS, VERIFY, PING of one node.
    pub async fn request_to(
        &self,
        member: usize,
        request: Request,
    ) -> Result<Response, ClientError> {
        check_request(&request)?;
        let view = self.view();
        if member >= view.members.len() {
            return Err(ClientError::Protocol(format!(
                "no member {member} (the cluster has {})",
                view.members.len()
            )));
        }
        let options = self.options(&view.routing, None);
        let target = Target {
            member,
            shard: None,
        };
        self.send(&view, target, &request, &options).await
    }

    /// A BATCH: whole to a node alone (it splits it by shard); in a cluster, split by owner,
    /// the parts sent at once, results in the caller's order. An item answered MOVED is sent
    /// again after a topology refresh; a part that fails as a whole gives each of its items
    /// that failure.
    async fn batch_parts(&self, ops: Vec<BatchOp>) -> Result<Vec<OpResult>, ClientError> {
        let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
        let mut pending: Vec<usize> = (0..ops.len()).collect();
        for round in 0..=MOVED_RETRIES {
            if round > 0 {
                self.refresh_topology().await?;
            }
            let view = self.view();
            let parts = self.split(&view.routing, &ops, &pending);
            let sends = parts.iter().map(|(target, items)| {
                let part: Vec<BatchOp> = items.iter().map(|&i| ops[i].clone()).collect();
                let vnodes: Vec<u16> = part
                    .iter()
                    .map(|op| view.routing.vnode_of(op.key()))
                    .collect();
                let options = self.options(&view.routing, vnodes);
                let view = &view;
                async move {
                    self.send(view, *target, &Request::Batch(part), &options)
                        .await
                }
            });
            let outcomes = futures::future::join_all(sends).await;
            pending.clear();
            for ((_, items), outcome) in parts.into_iter().zip(outcomes) {
                pending.extend(self.take_part(&view.routing, &ops, &items, outcome, &mut results));
            }
            if pending.is_empty() {
                break;
            }
        }
        for i in pending {
            results[i] = Some(OpResult::error(
                Status::Moved,
                "the cluster's topology kept changing; not executed",
            ));
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every item answered"))
            .collect())
    }

    /// Groups the items `pending` of `ops` by where they go.
    fn split(
        &self,
        routing: &Routing,
        ops: &[BatchOp],
        pending: &[usize],
    ) -> Vec<(Target, Vec<usize>)> {
        if !routing.is_cluster() {
            let target = Target {
                member: 0,
                shard: None,
            };
            return vec![(target, pending.to_vec())];
        }
        let mut parts: Vec<(Target, Vec<usize>)> = Vec::new();
        for &i in pending {
            let write = !matches!(ops[i], BatchOp::Get { .. });
            let vnode = routing.vnode_of(ops[i].key());
            let target = self.target(routing, vnode, write, self.config.shard_aware);
            match parts.iter_mut().find(|(t, _)| *t == target) {
                Some((_, items)) => items.push(i),
                None => parts.push((target, vec![i])),
            }
        }
        parts
    }

    /// Files a part's answer under its items; returns the items to send again (MOVED).
    fn take_part(
        &self,
        routing: &Routing,
        ops: &[BatchOp],
        items: &[usize],
        outcome: Result<Response, ClientError>,
        results: &mut [Option<OpResult>],
    ) -> Vec<usize> {
        let answers = match outcome {
            Ok(Response::Batch(answers)) if answers.len() == items.len() => answers,
            other if is_moved(&other) => return items.to_vec(),
            Ok(other) => {
                let error =
                    ClientError::Protocol(format!("unexpected answer to a batch: {other:?}"));
                items
                    .iter()
                    .for_each(|&i| results[i] = Some(error.to_result()));
                return Vec::new();
            }
            Err(error) => {
                items
                    .iter()
                    .for_each(|&i| results[i] = Some(error.to_result()));
                return Vec::new();
            }
        };
        let mut again = Vec::new();
        for (&i, answer) in items.iter().zip(answers) {
            if answer.status == Status::Moved {
                again.push(i);
                continue;
            }
            self.observe(routing.vnode_of(ops[i].key()), &answer);
            results[i] = Some(answer);
        }
        again
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

    /// Runs many operations; one result per op, in order.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<Vec<OpResult>, ClientError> {
        match self.request(Request::Batch(ops)).await? {
            Response::Batch(results) => Ok(results),
            other => Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// One page of a scan; pass `next_cursor` back for the next page (empty = done). In a
    /// cluster a page covers what the node asked holds from the cursor on, and may be empty
    /// with a cursor to go on from.
    pub async fn scan(&self, scan: ScanRequest) -> Result<ScanPage, ClientError> {
        match self.request(Request::Scan(scan)).await? {
            Response::Scan(page) => Ok(page),
            other => Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// Per-shard counters of the node the client bootstrapped from (`stats_of` for another).
    pub async fn stats(&self) -> Result<Vec<ShardStats>, ClientError> {
        let member = self.topology().answering_member();
        self.stats_of(member).await
    }

    pub async fn stats_of(&self, member: usize) -> Result<Vec<ShardStats>, ClientError> {
        match self.request_to(member, Request::Stats).await? {
            Response::Stats(shards) => Ok(shards),
            other => Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// What member `member` reports for the vnodes of `from_vnode .. from_vnode + count` it
    /// holds (`tessera verify`).
    /// `values`: also a digest of every live value (each member reads every record).
    pub async fn verify_of(
        &self,
        member: usize,
        from_vnode: u32,
        count: u32,
        values: bool,
    ) -> Result<Vec<VnodeCheck>, ClientError> {
        let request = Request::Verify {
            from_vnode,
            count,
            values,
        };
        match self.request_to(member, request).await? {
            Response::Verify(checks) => Ok(checks),
            other => Err(ClientError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }
}
