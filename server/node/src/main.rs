//! `tessera-server`: a Tessera node. See the README for a tour and DESIGN.md for the picture.
//!
//! Startup: take the data directory's lock, settle the shard count, pick ports, then start one
//! glommio executor per shard (pinned to a core). Each shard recovers its own log, joins the
//! channel mesh, binds the shared client port (SO_REUSEPORT) and its own port, and reports ready;
//! once all have, one line goes to stdout:
//! `tessera-server ready: listening on ADDR (shards N, shard ports P..Q), data in DIR` (then, in a
//! cluster, the node and cluster ids; with `--metrics-listen`, where metrics are served).
//!
//! Shutdown (SIGTERM or SIGINT): every shard stops taking new requests (they get UNAVAILABLE),
//! waits for its in-flight ones, waits for its peers to do the same, syncs its log, and exits;
//! the process exits 0.

mod access;
mod budget;
mod cli;
mod cluster;
mod cluster_exec;
mod config;
mod conn;
mod cpuset;
mod datadir;
mod disk;
mod exec;
mod login;
mod memory;
mod mesh;
mod metrics;
mod notify;
mod pace;
mod peer_inbound;
mod peer_stream;
mod peer_wire;
mod replica;
mod route;
mod shard;
mod stall;
mod tls;
mod transfer;
mod users;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use tessera_schema::limits::{CONNECTION_BASE_BYTES, TLS_CONNECTION_BYTES};
use tessera_schema::msg::{Opcode, Response, Status};
use tessera_schema::wire::encode_response_frame;
use tessera_store::{FsyncPolicy, StoreConfig, Visibility};

use crate::cli::{Args, FsyncMode};
use crate::datadir::{resolve_listen, shard_dir, DataDir};
use crate::disk::{probe_workaround, Segments};
use crate::mesh::MeshMsg;
use crate::shard::{
    now_ms, NodeShared, Shard, ShardSettings, DRAIN_TIMEOUT, MESH_CHANNEL_CAPACITY,
};

/// How long a shard's executor runs tasks before it polls for I/O again. glommio's default of
/// 100 ms let one connection with a full socket buffer (its reads never wait) hold the shard
/// for that long; the readers check for it every few frames (`conn.rs`).
const PREEMPT_INTERVAL: Duration = Duration::from_millis(5);
/// How often a shard's control loop beats for the watchdog and looks at its metrics.
const CONTROL_INTERVAL: Duration = Duration::from_millis(50);

/// How often a starting shard's executor is woken (`StartupTicks`).
const STARTUP_TICK: Duration = Duration::from_millis(1);

/// Wakes a starting shard's executor every `STARTUP_TICK` until it is ready. Under CPU
/// contention glommio 0.9 parks an executor for good during startup now and then: both shards
/// asleep in io_uring_enter, one of them waiting on a mesh connection its peer had already made
/// (`vendor/README.md`). Anything that ends the wait (a ptrace attach) lets it go on; a timer
/// gives the reactor that reason. Once serving, the control loop's timer does the same.
struct StartupTicks(Rc<std::cell::Cell<bool>>);

impl StartupTicks {
    fn start() -> StartupTicks {
        let done = Rc::new(std::cell::Cell::new(false));
        let ticking = done.clone();
        glommio::spawn_local(async move {
            while !ticking.get() {
                glommio::timer::sleep(STARTUP_TICK).await;
            }
        })
        .detach();
        StartupTicks(done)
    }
}

impl Drop for StartupTicks {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match config::parse(argv.clone()) {
        Ok(args) => args,
        Err(error) => fail(&error),
    };
    if args.print_config {
        match config::print(argv) {
            Ok(text) => print!("{text}"),
            Err(error) => fail(&error),
        }
        return;
    }
    init_logs(args.log_format);
    if let Err(error) = run(args) {
        fail(&error);
    }
}

/// Logs to stderr at RUST_LOG's level (default info), as text or JSON lines.
fn init_logs(format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => logs.init(),
        cli::LogFormat::Json => logs.json().init(),
    }
}

/// Startup failed: one line saying why, and exit status 2 (as clap's usage errors).
fn fail(error: &str) -> ! {
    eprintln!("tessera-server: {error}");
    std::process::exit(2);
}

fn store_config(args: &Args, shards: u16) -> Result<StoreConfig, String> {
    let config = StoreConfig {
        segment_size_bytes: args.segment_mib * 1024 * 1024,
        fsync: match args.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::Interval {
                interval_ms: args.fsync_interval_ms.max(1),
                max_writes: args.fsync_writes.max(1),
            },
        },
        space_factor: args.space_factor,
        memory_limit_bytes: args.memory_limit.map(|bytes| bytes / u64::from(shards)),
        cache_bytes: (args.cache_bytes / u64::from(shards)) as usize,
        ..StoreConfig::default()
    };
    config
        .validate()
        .map_err(|e| format!("invalid storage settings: {e}"))?;
    Ok(config)
}

/// The shard count asked for: `--shards`, or one per CPU of `--cpuset`.
fn requested_shards(args: &Args) -> Option<u16> {
    let per_cpu = args
        .cpuset
        .as_ref()
        .map(|set| set.cpus().len().min(256) as u16);
    args.shards.or(per_cpu)
}

/// Checks every flag before anything touches the disk.
fn validate(args: &Args) -> Result<(), String> {
    if let Some(shards) = args.shards {
        if shards == 0 || shards > 256 {
            return Err(format!("--shards must be between 1 and 256, not {shards}"));
        }
    }
    if let Some(vnodes) = args.vnodes {
        let max = tessera_schema::placement::MAX_VNODES;
        if vnodes == 0 || vnodes > max || args.shards.is_some_and(|s| u32::from(s) > vnodes) {
            return Err(format!(
                "--vnodes must be between 1 and {max}, and at least --shards, not {vnodes}"
            ));
        }
    }
    if let Some(cpuset) = &args.cpuset {
        cpuset.check_allowed(&cpuset::allowed_cpus())?;
    }
    if args.frame_timeout_ms == 0 {
        return Err("--frame-timeout-ms must be at least 1".into());
    }
    if args.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    if !args.peers.is_empty() {
        if args.listen.port() == 0 {
            return Err(
                "--peers needs a fixed --listen port (the members find each other by it)".into(),
            );
        }
        if args.replication_factor == 0 {
            return Err("--replication-factor must be at least 1".into());
        }
        if !args.peers.contains(&args.listen) {
            return Err(format!(
                "--listen {} is not in --peers: every node lists every member, itself included",
                args.listen
            ));
        }
        if args.zone.contains(char::is_whitespace) {
            return Err("--zone may not contain spaces".into());
        }
    }
    check_exposure(args)?;
    store_config(args, 1).map(|_| ())
}

fn run(args: Args) -> Result<(), String> {
    validate(&args)?;
    let metrics = Arc::new(metrics::NodeMetrics::new());
    let metrics_addr = match args.metrics_listen {
        Some(addr) => Some(metrics::http::spawn(
            metrics::http::bind(addr)?,
            metrics.clone(),
        )?),
        None => None,
    };
    // Ports before the data directory: a second node on a served port stops here, having
    // written nothing.
    let planned = datadir::planned_shards(&args.data_dir, requested_shards(&args))?;
    let listen = resolve_listen(&args.data_dir, args.listen, planned, !args.peers.is_empty())?;
    let data = DataDir::open(&args.data_dir, requested_shards(&args), args.vnodes)?;
    let peer_tls = peer_tls(&args)?;
    let client_tls = tls::ClientTlsFiles::from_flags(
        args.tls_cert.clone(),
        args.tls_key.clone(),
        args.tls_client_ca.clone(),
        args.tls_client_crl.clone(),
        args.tls12,
    )?
    .map(tls::ClientTls::load)
    .transpose()?
    .map(Arc::new);
    let logins = match &args.users {
        Some(path) => {
            let users = users::Users::load(path)?;
            tracing::info!(
                users = users.current().len(),
                "clients log in as the users of {}",
                path.display()
            );
            let deadline = Duration::from_millis(args.login_timeout_ms);
            Some(Arc::new(login::Logins::new(users, data.shards, deadline)))
        }
        None => None,
    };
    let cluster = join_cluster(&args, &data, listen, peer_tls.clone())?;
    let settings = ShardSettings {
        store: StoreConfig {
            vnodes: data.vnodes,
            visibility: match cluster {
                Some(_) => Visibility::Committed,
                None => Visibility::Durable,
            },
            ..store_config(&args, data.shards)?
        },
        repair: args.repair,
    };
    let shards = u64::from(data.shards);
    let node = Arc::new(NodeShared {
        shards: data.shards,
        vnodes: data.vnodes,
        vnode_shard: tessera_schema::placement::shard_table(data.shards, data.vnodes),
        shard_port_base: listen.port() + 1,
        stopping: AtomicBool::new(false),
        drained: AtomicUsize::new(0),
        compaction_bytes_per_s: (args.compaction_mib_per_s > 0)
            .then(|| args.compaction_mib_per_s * 1024 * 1024),
        transfers: transfer::TransferSettings {
            per_shard: usize::from(args.transfers_per_shard),
            bytes_per_s: (args.transfer_mib_per_s > 0)
                .then(|| args.transfer_mib_per_s * 1024 * 1024),
        },
        budgets: (0..shards)
            .map(|_| budget::ShardBudget::new(args.connection_memory / shards))
            .collect(),
        max_connections_per_shard: u64::from(args.max_connections).div_ceil(shards),
        frame_grace_ms: args.frame_timeout_ms,
        peer_buffer_bytes: args.peer_buffer_per_shard as usize,
        cluster: cluster.clone(),
        peer_tls,
        client_tls,
        logins,
        beats: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        started: Instant::now(),
        metrics: metrics.clone(),
        publish_metrics: args.metrics_listen.is_some(),
    });
    let mesh = MeshBuilder::<MeshMsg, _>::full(usize::from(data.shards), MESH_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = mpsc::channel();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    // Executors are created in shard order, so that each shard's mesh peer id is its index.
    for index in 0..data.shards {
        let placement = match &args.cpuset {
            Some(cpuset) => Placement::Fixed(cpuset.cpu_of_shard(index)),
            None if args.pin => Placement::Fixed(usize::from(index) % cpus),
            None => Placement::Unbound,
        };
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{index}"))
            .preempt_timer(PREEMPT_INTERVAL)
            // The blocking thread checks passwords (argon2, `login.rs`): unpinned, so that a
            // login does not take its time from a pinned shard's core.
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1));
        if args.spin_before_park_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(args.spin_before_park_us));
        }
        let (node, mesh, ready) = (node.clone(), mesh.clone(), ready_tx.clone());
        let (settings, root) = (settings.clone(), data.root.clone());
        let handle = builder
            .spawn(move || async move {
                let result = shard_main(index, node, settings, &root, mesh, listen, &ready).await;
                if let Err(error) = &result {
                    let _ = ready.send(Err(format!("shard {index}: {error}")));
                }
                result
            })
            .map_err(|e| format!("cannot start shard {index}: {e}"))?;
        handles.push(handle);
    }
    for _ in 0..data.shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err("a shard exited during startup".into()),
        }
    }
    let member = node.cluster.as_ref().map_or(String::new(), |c| {
        format!(
            ", node {} of cluster {:016x} ({} members)",
            c.me,
            c.id,
            c.members.len()
        )
    });
    // Signals are handled before the ready line: whoever reads it may send SIGTERM at once, and
    // must get a drain and exit 0, not the default action.
    watch_signals(node.clone())?;
    // Serving in the metrics before the ready line: whoever reads that line may scrape at once.
    metrics.set_state(metrics::NodeState::Serving);
    let metrics_at = metrics_addr.map_or(String::new(), |a| {
        format!(", metrics on http://{a}/metrics")
    });
    println!(
        "tessera-server ready: listening on {listen} (shards {}, shard ports {}..{}), data in {}{member}{metrics_at}",
        data.shards,
        listen.port() + 1,
        listen.port() + data.shards,
        data.root.display()
    );
    // No line before this one says "starting": a startup that fails prints only its reason.
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %listen,
        shards = data.shards,
        data_dir = %data.root.display(),
        "ready"
    );
    notify::ready(&format!(
        "serving on {listen} (shards {}){member}",
        data.shards
    ));
    memory::spawn_trimmer(node.clone())
        .map_err(|e| format!("cannot start the memory trimmer: {e}"))?;
    notify::spawn_watchdog(node.clone())
        .map_err(|e| format!("cannot start the watchdog thread: {e}"))?;
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err("a shard panicked".into()),
        }
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// With `--peers`: this node's cluster, formed with the other members the first time.
fn join_cluster(
    args: &Args,
    data: &DataDir,
    listen: SocketAddr,
    tls: Option<Arc<tls::PeerTls>>,
) -> Result<Option<Arc<cluster::Cluster>>, String> {
    if args.peers.is_empty() {
        return Ok(None);
    }
    let mut joining = cluster::Joining::new(
        args.peers.clone(),
        listen,
        data.shards,
        args.zone.clone(),
        data.vnodes,
        args.replication_factor,
    )?;
    joining.tls = tls;
    let cluster = cluster::Cluster::open_or_form(&data.root, &joining)?;
    Ok(Some(Arc::new(cluster)))
}

/// Secure by default: open ports only on loopback, unless `--insecure` says so (then the
/// log says what is exposed), as Redis's protected mode and CockroachDB do it. Off loopback,
/// the client and shard ports need `--tls-cert` and `--users`; the peer ports need
/// `--peer-tls-*` when any member is off loopback.
fn check_exposure(args: &Args) -> Result<(), String> {
    let mut exposed = Vec::new();
    let off_loopback = !args.listen.ip().is_loopback();
    if args.tls_cert.is_none() && off_loopback {
        exposed.push(format!(
            "the client and shard ports would be plain TCP on {} (not loopback): anyone who \
             reaches them can read what clients send and receive, and pose as the node",
            args.listen.ip()
        ));
    }
    if args.users.is_none() && off_loopback {
        exposed.push(format!(
            "the client and shard ports would take every client on {} (not loopback) without \
             a login: anyone who reaches them can read, write and delete every key",
            args.listen.ip()
        ));
    }
    let peer_tls =
        args.peer_tls_cert.is_some() || args.peer_tls_key.is_some() || args.peer_tls_ca.is_some();
    let peers: Vec<String> = args
        .peers
        .iter()
        .filter(|peer| !peer.ip().is_loopback())
        .map(|peer| peer.ip().to_string())
        .collect();
    if !peer_tls && !peers.is_empty() {
        exposed.push(format!(
            "the peer ports would be plain TCP on {} (not loopback): anyone who reaches them \
             can pose as a member and rewrite or wipe data",
            peers.join(", ")
        ));
    }
    if exposed.is_empty() {
        return Ok(());
    }
    let what = exposed.join("; ");
    if !args.insecure {
        return Err(format!(
            "refusing to start: {what}. Give --tls-cert and --tls-key and --users for \
             clients, and --peer-tls-cert, --peer-tls-key and --peer-tls-ca for members \
             (`tessera admin certs` makes a dev set of certificates, `tessera admin \
             hash-password` the users file's hashes), or --insecure to run so on a network \
             you trust"
        ));
    }
    tracing::warn!("--insecure: {what}");
    Ok(())
}

/// The peer ports' TLS settings (`--peer-tls-*`), loaded, or `None` for plain TCP.
fn peer_tls(args: &Args) -> Result<Option<Arc<tls::PeerTls>>, String> {
    let files = tls::PeerTlsFiles::from_flags(
        args.peer_tls_cert.clone(),
        args.peer_tls_key.clone(),
        args.peer_tls_ca.clone(),
        args.peer_tls_crl.clone(),
    )?;
    match files {
        Some(files) if args.peers.is_empty() => Err(format!(
            "--peer-tls-cert {} is for the peer ports of a cluster: give --peers too",
            files.cert.display()
        )),
        Some(files) => Ok(Some(Arc::new(tls::PeerTls::load(files)?))),
        None => Ok(None),
    }
}

/// SIGTERM and SIGINT stop the node (once); SIGHUP reloads the certificates, revocation lists
/// and users.
fn watch_signals(node: Arc<NodeShared>) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reload_certificates(&node);
                    reload_users(&node);
                    continue;
                }
                tracing::info!(signal, "stopping: draining in-flight requests");
                notify::stopping();
                node.metrics.set_state(metrics::NodeState::Stopping);
                node.stopping.store(true, Ordering::SeqCst);
                return;
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

fn reload_certificates(node: &NodeShared) {
    if let Some(tls) = &node.client_tls {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: reloaded the client ports' certificates"),
            Err(why) => tracing::error!("SIGHUP: kept the client ports' certificates: {why}"),
        }
    }
    if let Some(tls) = &node.peer_tls {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: reloaded the peer ports' certificates"),
            Err(why) => tracing::error!("SIGHUP: kept the peer ports' certificates: {why}"),
        }
    }
}

fn reload_users(node: &NodeShared) {
    let Some(logins) = &node.logins else {
        return;
    };
    let path = logins.users.path().display();
    match logins.users.reload() {
        Ok(count) => tracing::info!("SIGHUP: reloaded {count} users from {path}"),
        Err(why) => tracing::error!("SIGHUP: kept the users in use: {why}"),
    }
}

async fn shard_main(
    index: u16,
    node: Arc<NodeShared>,
    settings: ShardSettings,
    root: &std::path::Path,
    mesh: MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>,
    listen: SocketAddr,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    let startup_ticks = StartupTicks::start();
    let dir = shard_dir(root, index);
    probe_workaround(&dir).await?;
    notify::status(&format!("shard {index}: recovering its log"));
    let started = Instant::now();
    let (segments, store) =
        Segments::recover(&dir, settings.store.clone(), settings.repair, now_ms()).await?;
    let stats = store.stats();
    tracing::info!(
        shard = index,
        keys = stats.keys,
        disk_bytes = stats.disk_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    notify::status(&format!(
        "shard {index}: recovered {} keys in {} ms",
        stats.keys,
        started.elapsed().as_millis()
    ));
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| "cannot join the shard mesh")?;
    if senders.peer_id() != usize::from(index) {
        return Err(format!(
            "mesh peer id {} is not shard index {index}",
            senders.peer_id()
        ));
    }
    let replica = node
        .cluster
        .as_ref()
        .map(|cluster| replica_of_shard(cluster, &node, index, &settings.store, &store));
    let shard = Shard::new(index, node.clone(), store, segments, senders, replica);
    shard.spawn_mesh_receivers(receivers);
    if let Some(cluster) = &node.cluster {
        let address = cluster.member(cluster.me).peer_addr(index);
        let listener = bind_exclusive(address)
            .map_err(|e| format!("cannot listen for peers on {address}: {e}"))?;
        replica::start(&shard, listener);
    }
    glommio::spawn_local(shard.clone().run_flusher()).detach();
    // Compaction and the TTL sweep get a tenth of the shares of foreground work.
    let maintenance = glommio::executor().create_task_queue(
        glommio::Shares::Static(100),
        glommio::Latency::NotImportant,
        "maintenance",
    );
    glommio::spawn_local_into(shard.clone().run_maintenance(), maintenance)
        .map_err(|e| format!("cannot start maintenance: {e}"))?
        .detach();
    let mut queues = stall::Queues::new();
    queues.name(maintenance, "maintenance");
    glommio::spawn_local(stall::watch(shard.clone(), queues)).detach();
    let own = SocketAddr::new(listen.ip(), node.shard_port_base + index);
    let mut accepting = Vec::new();
    for address in [listen, own] {
        let listener =
            TcpListener::bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))?;
        accepting.push(glommio::spawn_local(accept_loop(shard.clone(), listener)));
    }
    if node.publish_metrics {
        metrics::publish(&shard);
    }
    drop(startup_ticks);
    let _ = ready.send(Ok(()));
    let mut last_published = Instant::now();
    while !node.stopping.load(Ordering::SeqCst) {
        // Proof for the watchdog that this executor runs (notify.rs).
        node.beats[usize::from(index)].fetch_add(1, Ordering::Relaxed);
        if node.publish_metrics && last_published.elapsed() >= metrics::PUBLISH_INTERVAL {
            last_published = Instant::now();
            metrics::publish(&shard);
        }
        glommio::timer::sleep(CONTROL_INTERVAL).await;
    }
    shard.stopping.set(true);
    drop(accepting);
    drain(&shard).await;
    if node.publish_metrics {
        // What the drain answered shows in a last scrape before the process exits.
        metrics::publish(&shard);
    }
    shard.sync_all().await?;
    tracing::info!(shard = index, "synced and stopped");
    Ok(())
}

/// Bytes a shard's replication queues may hold before its writes are refused OVERLOADED.
const REPLICATION_QUEUE_BYTES: usize = 64 << 20;
/// How long a write waits for its ack point (just under the client's default timeout).
const REPLICATION_WRITE_TIMEOUT_MS: u64 = 4_000;

/// The replication of the vnodes this shard holds as a member of `cluster`.
fn replica_of_shard(
    cluster: &Arc<cluster::Cluster>,
    node: &NodeShared,
    index: u16,
    store_config: &StoreConfig,
    store: &tessera_store::Store,
) -> replica::Replica {
    let held: Vec<(u16, tessera_core::placement::Chain)> = (0..cluster.vnodes)
        .filter(|&v| node.vnode_shard[v as usize] == index)
        .filter(|&v| cluster.table.chain(v).position(cluster.me).is_some())
        .map(|v| (v as u16, cluster.table.chain(v).clone()))
        .collect();
    let config = tessera_core::replication::Config {
        me: cluster.me,
        durable_commit: store_config.fsync == FsyncPolicy::Always,
        queue_limit_bytes: REPLICATION_QUEUE_BYTES,
        write_timeout_ms: REPLICATION_WRITE_TIMEOUT_MS,
        outbox_limit_bytes: replica::PEER_OUTBOX_BYTES,
        fresh: cluster.fresh,
    };
    let replicator = tessera_core::replication::Replicator::new(config, held, store);
    replica::Replica::new(
        cluster.clone(),
        replicator,
        node.transfers,
        node.peer_tls.clone(),
        node.peer_buffer_bytes,
    )
}

/// Waits for this shard's in-flight requests, then for every peer to have done the same (a peer
/// may still forward work here until it has drained).
async fn drain(shard: &Rc<Shard>) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while shard.inflight.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let node = &shard.node;
    node.drained.fetch_add(1, Ordering::SeqCst);
    while node.drained.load(Ordering::SeqCst) < usize::from(node.shards)
        && Instant::now() < deadline
    {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(shard = shard.index, "accept failed: {error}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let tls = shard.node.client_tls.as_ref().map(|tls| tls.current());
        if let Some(refusal) = refuse_connection(&shard, tls.is_some()) {
            shard.metrics.connection_refused(refusal.0);
            glommio::spawn_local(say_goodbye(stream, refusal)).detach();
            continue;
        }
        shard.connections.set(shard.connections.get() + 1);
        let budget = budget::ConnBudget::new(&shard.budget);
        let shard = shard.clone();
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(async move {
            let address = stream
                .peer_addr()
                .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
            let session = |cert: Option<&rustls::pki_types::CertificateDer<'_>>| {
                let logins = shard.node.logins.clone();
                login::Session::new(logins, address, cert, &shard.metrics)
            };
            match tls {
                None => conn::serve(shard.clone(), stream, budget, session(None)).await,
                Some(tls) => {
                    let _tls = budget::Charge::new(&budget, TLS_CONNECTION_BYTES);
                    match client_handshake(tls, stream, shard.node.frame_grace_ms).await {
                        Ok(stream) => {
                            let cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first());
                            let session = session(cert);
                            conn::serve(shard.clone(), stream, budget, session).await
                        }
                        Err((reason, why)) => {
                            shard.metrics.client_tls_failed(reason);
                            tracing::debug!(shard = shard.index, reason, "client TLS: {why}")
                        }
                    }
                }
            }
            shard.connections.set(shard.connections.get() - 1);
        })
        .detach();
    }
}

/// A client's TLS handshake, within the time a frame may take to arrive (`--frame-timeout-ms`:
/// a stalled handshake holds a connection slot no longer than a stalled frame does).
async fn client_handshake(
    tls: Arc<rustls::ServerConfig>,
    stream: glommio::net::TcpStream,
    limit_ms: u64,
) -> Result<futures_rustls::server::TlsStream<glommio::net::TcpStream>, (&'static str, String)> {
    let limit = Duration::from_millis(limit_ms);
    let accept = async {
        futures_rustls::TlsAcceptor::from(tls)
            .accept(stream)
            .await
            .map_err(|e| (tls::failure_reason(&e), e.to_string()))
    };
    let timeout = async {
        glommio::timer::sleep(limit).await;
        Err(("timeout", format!("no handshake within {limit:?}")))
    };
    futures_lite::future::or(accept, timeout).await
}

/// Why a new connection (on TLS if `tls`) cannot be served now, if it cannot.
fn refuse_connection(shard: &Shard, tls: bool) -> Option<(Status, String)> {
    let limit = shard.node.max_connections_per_shard;
    if shard.connections.get() >= limit {
        return Some((
            Status::Unavailable,
            format!("connection limit reached ({limit} per shard, --max-connections); try later"),
        ));
    }
    let opening_bytes = CONNECTION_BASE_BYTES + if tls { TLS_CONNECTION_BYTES } else { 0 };
    if !shard.budget.has_room(opening_bytes, false) {
        return Some((
            Status::Overloaded,
            "the node's connection memory budget is in use (--connection-memory); try later".into(),
        ));
    }
    None
}

/// Tells a refused client why (one frame with request id 0, the node's word on the whole
/// connection), then closes; a client that does not read it within a second is just closed.
async fn say_goodbye(mut stream: glommio::net::TcpStream, (status, message): (Status, String)) {
    use futures::AsyncWriteExt;
    tracing::debug!("refusing a connection: {message}");
    let mut frame = Vec::new();
    let response = Response::error(status, message);
    encode_response_frame(&mut frame, Opcode::Ping as u8, 0, &response);
    let write = async {
        let _ = stream.write_all(&frame).await;
        let _ = stream.close().await;
    };
    futures_lite::future::or(write, glommio::timer::sleep(Duration::from_secs(1))).await;
}

/// A listener no other socket can share. glommio's `bind` sets SO_REUSEPORT, which let a
/// process of the same user bind beside a live member's peer port and take half of the
/// connections meant for it; std's bind does not set it.
#[allow(unsafe_code)]
fn bind_exclusive(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let listener = std::net::TcpListener::bind(address)?;
    // SAFETY: `into_raw_fd` hands over a bound, listening socket that nothing else owns.
    Ok(unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) })
}
