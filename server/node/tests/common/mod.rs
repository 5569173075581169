//! Starting real `tessera-server` processes on loopback with a temp data dir, and talking to
//! them with raw frames. Every process is killed by its own pid when its `Node` is dropped.

#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tessera_schema::frame::{FrameEvent, FrameReader};
use tessera_schema::msg::{Request, Response};
use tessera_schema::wire::{decode_response, encode_request_frame};

/// The `tessera-server` binary: cargo's path when this test belongs to the server package,
/// otherwise the one `cargo test --workspace` built beside the test executable's folder.
pub fn server_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_tessera-server") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("tessera-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` or `cargo build -p tessera-server`",
        path.display()
    );
    path
}

pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// What the node printed when it was ready.
    pub ready_line: String,
}

impl Node {
    /// Starts a node on a free loopback port and waits for its ready line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Node {
        Node::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts a node listening on `listen` (restarts keep their address this way).
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Node {
        Node::start_under(&[], data_dir, listen, extra)
    }

    /// Starts a node through `prefix` (e.g. `ip netns exec NS`), which must exec the server, so
    /// that the child's pid is the server's.
    pub fn start_under(prefix: &[String], data_dir: &Path, listen: &str, extra: &[&str]) -> Node {
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(server_binary());
                command
            }
            None => Command::new(server_binary()),
        };
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen, "--segment-mib", "4"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("TESSERA_TEST_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tessera-server");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = sender.send(line);
            }
            for _ in lines {}
        });
        let line = match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(why) => {
                // Say how it ended: an exit status (its stderr, inherited, says why) or a
                // signal, or still running after the wait.
                std::thread::sleep(Duration::from_millis(100));
                let status = child.try_wait();
                let threads = thread_states(child.id());
                let _ = child.kill();
                panic!(
                    "tessera-server on {listen} printed no ready line ({why}; exit: {status:?}, \
                     prefix {prefix:?}); its threads: {threads}"
                );
            }
        };
        let addr = line
            .split_whitespace()
            .find_map(|word| word.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in ready line: {line}"));
        Node {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            ready_line: line,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Where the node serves metrics (`--metrics-listen`), as its ready line says.
    pub fn metrics_addr(&self) -> SocketAddr {
        let url = self
            .ready_line
            .split("metrics on http://")
            .nth(1)
            .unwrap_or_else(|| panic!("no metrics address in: {}", self.ready_line));
        url.split('/').next().unwrap().parse().expect("an address")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tessera-server did not exit within 15 s of SIGTERM");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each thread of `pid`: its name, state and where the kernel has it waiting (for a node that
/// hangs).
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "gone".into();
    };
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    tasks
        .flatten()
        .map(|task| {
            let stat = read(task.path().join("stat"));
            let state = stat
                .rsplit(") ")
                .next()
                .and_then(|rest| rest.split(' ').next());
            format!(
                "{} {} {}",
                read(task.path().join("comm")).trim(),
                state.unwrap_or("?"),
                read(task.path().join("wchan")).trim()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A blocking connection speaking raw frames, for tests of the wire itself.
pub struct Raw {
    pub stream: TcpStream,
    reader: FrameReader,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            reader: FrameReader::new(),
        }
    }

    pub fn send(&mut self, id: u64, request: &Request) {
        let mut frame = Vec::new();
        encode_request_frame(&mut frame, id, request);
        self.stream.write_all(&frame).expect("send");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next response, or None when the node closed the connection.
    pub fn recv(&mut self) -> Option<(u64, Response)> {
        let mut buffer = [0u8; 65536];
        loop {
            if let Some(event) = self
                .reader
                .next_event()
                .expect("valid frames from the node")
            {
                let FrameEvent::Frame { header, body } = event else {
                    panic!("oversized response")
                };
                return Some((
                    header.request_id,
                    decode_response(body).expect("valid body"),
                ));
            }
            match self.stream.read(&mut buffer) {
                Ok(0) => return None,
                Ok(n) => self.reader.feed(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    pub fn call(&mut self, id: u64, request: &Request) -> Response {
        self.send(id, request);
        let (got, response) = self.recv().expect("a response");
        assert_eq!(got, id);
        response
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A loopback port `p` such that `p..=p + extra` were all free a moment ago (a node with N
/// shards listens on its port and the N after it). Taken below the kernel's ephemeral range
/// (32768 and up): a port there can be taken between this check and the node's bind by any
/// outgoing connection, whose TIME_WAIT no listener may bind over (nodes failed to start
/// that way, now and then).
pub fn free_port_range(extra: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = std::process::id().wrapping_mul(7919).wrapping_add(nanos);
    let span = 30_000 - 10_000 - u32::from(extra);
    for _ in 0..500 {
        let step = NEXT.fetch_add(997, std::sync::atomic::Ordering::Relaxed);
        let port = 10_000 + (seed.wrapping_add(step) % span) as u16;
        let all_free =
            (0..=extra).all(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok());
        if all_free {
            return port;
        }
    }
    panic!("no free port range");
}

/// A blkio cgroup (v1) that caps the write IOPS of the disk under `path` for the processes put
/// in it: every fdatasync then takes tens of milliseconds, which opens the windows that
/// crash-consistency bugs hide in (PLATFORM.md). Removed when dropped.
pub struct Throttle {
    dir: PathBuf,
}

const BLKIO_ROOT: &str = "/sys/fs/cgroup/blkio";

impl Throttle {
    /// `None` when the machine has no blkio controller and the developer opted out of it
    /// (`skip_without`); a failure otherwise: the test needs the slow disk to mean anything.
    pub fn new(path: &Path, write_iops: u32) -> Option<Throttle> {
        use std::os::unix::fs::MetadataExt;
        if !Path::new(BLKIO_ROOT).join("cgroup.procs").exists() {
            skip_without(
                "blkio",
                &format!("{BLKIO_ROOT} (cgroup v1 blkio) is missing"),
            );
            return None;
        }
        let (major, minor) = whole_disk(path.metadata().expect("stat").dev());
        let dir = Path::new(BLKIO_ROOT).join(format!(
            "tessera-test-{}-{}",
            std::process::id(),
            NEXT_THROTTLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).expect("create the blkio cgroup");
        let throttle = Throttle { dir };
        std::fs::write(
            throttle.dir.join("blkio.throttle.write_iops_device"),
            format!("{major}:{minor} {write_iops}"),
        )
        .expect("set the write IOPS limit");
        Some(throttle)
    }

    /// Moves a process into the group.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .expect("move the process into the blkio cgroup");
    }
}

static NEXT_THROTTLE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The whole disk's (major, minor) for a file on `dev`: throttling applies to disks, not to
/// partitions.
fn whole_disk(dev: u64) -> (u64, u64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.join("partition").exists() {
        return (major, minor);
    }
    let parent = std::fs::read_to_string(sys.join("../dev")).expect("the partition's disk");
    let (major, minor) = parent.trim().split_once(':').expect("MAJ:MIN");
    (major.parse().unwrap(), minor.parse().unwrap())
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // A group can be removed only once empty: hand any process left back to the root.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(Path::new(BLKIO_ROOT).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A test that needs something this machine lacks (loop devices, the blkio controller) fails,
/// unless the developer named it in `TESSERA_TEST_WITHOUT` (comma-separated, e.g.
/// `TESSERA_TEST_WITHOUT=loop,blkio`), which CI never sets; then it says so and returns true
/// (skip). A test that passes without checking anything would be a lie.
pub fn skip_without(what: &str, reason: &str) -> bool {
    let opted_out = std::env::var("TESSERA_TEST_WITHOUT")
        .is_ok_and(|list| list.split(',').any(|item| item.trim() == what));
    assert!(
        opted_out,
        "{reason}: this test needs {what} (CI has it; see .ci/run). To run the suite here without \
         it, set TESSERA_TEST_WITHOUT={what}"
    );
    eprintln!("{reason}: skipped, as TESSERA_TEST_WITHOUT={what} asks (it checks nothing here)");
    true
}

/// A cluster of real `tessera-server` processes on loopback, one shard each, every node in its
/// own data directory and port range (`PORT..=PORT + 64`).
pub struct TestCluster {
    pub nodes: Vec<Option<Node>>,
    /// Client addresses, node id order (the sorted `--peers` list).
    pub addrs: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
    flags: Vec<String>,
    /// The namespaces the nodes run in, if any (after `nodes`: dropped once they are gone).
    pub netns: Option<netns::Netns>,
}

impl TestCluster {
    /// Starts `count` nodes at once (each waits for the others to form the cluster).
    pub fn start(count: usize, extra: &[&str]) -> TestCluster {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < count {
            let port = free_port_range(64);
            if ports.iter().all(|&p| p.abs_diff(port) > 64) {
                ports.push(port);
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        TestCluster::launch(addrs, extra, None)
    }

    /// Starts `count` nodes, each in a network namespace of its own (`netns.rs`), on port 7000
    /// of its address there: `cluster.netns` cuts them off.
    pub fn start_in_namespaces(count: usize, extra: &[&str]) -> TestCluster {
        let netns = netns::Netns::create(count);
        let addrs = (0..count)
            .map(|i| format!("{}:7000", netns.ip(i)))
            .collect();
        TestCluster::launch(addrs, extra, Some(netns))
    }

    fn launch(mut addrs: Vec<String>, extra: &[&str], netns: Option<netns::Netns>) -> TestCluster {
        let count = addrs.len();
        addrs.sort_by_key(|a| a.parse::<SocketAddr>().unwrap());
        let mut flags: Vec<String> = ["--shards", "1", "--peers", &addrs.join(",")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        flags.extend(extra.iter().map(|s| s.to_string()));
        let dirs: Vec<tempfile::TempDir> =
            (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut cluster = TestCluster {
            nodes: (0..count).map(|_| None).collect(),
            addrs,
            dirs,
            flags,
            netns,
        };
        let started: Vec<Node> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..count)
                .map(|i| {
                    let cluster = &cluster;
                    scope.spawn(move || cluster.spawn(i))
                })
                .collect();
            starts
                .into_iter()
                .map(|s| s.join().expect("node start"))
                .collect()
        });
        for (i, node) in started.into_iter().enumerate() {
            cluster.nodes[i] = Some(node);
        }
        cluster
    }

    fn spawn(&self, i: usize) -> Node {
        // `{ip}` in a flag stands for the node's IP address (a certificate of its own).
        let ip = self.addrs[i]
            .parse::<SocketAddr>()
            .unwrap()
            .ip()
            .to_string();
        let flags: Vec<String> = self.flags.iter().map(|f| f.replace("{ip}", &ip)).collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let prefix = self.netns.as_ref().map_or(Vec::new(), |n| n.prefix(i));
        Node::start_under(&prefix, self.dirs[i].path(), &self.addrs[i], &flags)
    }

    /// Every member, comma-separated (what a client is given).
    pub fn addr_list(&self) -> String {
        self.addrs.join(",")
    }

    /// Node `i`'s peer port (its shard 0's).
    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        let addr: SocketAddr = self.addrs[i].parse().unwrap();
        SocketAddr::new(addr.ip(), addr.port() + 33)
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().expect("node is running")
    }

    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].take().expect("node is running").kill9();
    }

    /// Restarts a killed node on its address and data directory (its cluster.meta makes it
    /// a member again without the others' help).
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        self.nodes[i] = Some(self.spawn(i));
    }
}

/// The `tessera` CLI binary, built beside the server by `cargo test --workspace`.
pub fn cli_binary() -> PathBuf {
    let server = server_binary();
    let path = server.with_file_name("tessera");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` or `cargo build -p tessera-client`",
        path.display()
    );
    path
}

/// A process's resident memory in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// A cluster test's client: one connection per member, shard-aware, retries and a timeout
/// long enough for a member's death and a link's drop.
pub fn client_config(level: tessera_client::Level) -> tessera_client::ClientConfig {
    tessera_client::ClientConfig {
        pool_size: 1,
        timeout: Duration::from_secs(8),
        retries: 2,
        shard_aware: true,
        level,
        prefer_first_address: false,
        tls: None,
        credentials: None,
    }
}

/// Runs `tessera verify` against the cluster; its exit status and output.
pub fn cli_verify(cluster: &TestCluster) -> (bool, String) {
    let output = std::process::Command::new(cli_binary())
        .args(["--addr", &cluster.addr_list(), "--timeout", "60s", "verify"])
        .output()
        .expect("run tessera verify");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Waits (bounded) until `tessera verify` says every replica agrees.
pub fn assert_replicas_agree(cluster: &TestCluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (agree, text) = cli_verify(cluster);
        if agree {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas still differ after 30 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sends a signal (`-STOP`, `-CONT`, ...) to a process by its pid.
pub fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// One HTTP/1.0 request to `addr`: the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// The sum of the samples of metric `name` whose labels include `label` (`key="value"`), from
/// one scrape of `/metrics` at `addr`.
pub fn metric_sum(addr: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, text) = http(addr, "GET", "/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Scrapes until `metric_sum` reaches `at_least` (the node records a moment after the client
/// has seen the outcome), for at most 5 s; the last sum.
pub fn wait_for_metric(addr: SocketAddr, name: &str, label: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sum = metric_sum(addr, name, label);
        if sum >= at_least || Instant::now() >= deadline {
            return sum;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cluster's id, as TOPOLOGY gives it to any client.
pub fn cluster_id(cluster: &TestCluster) -> u64 {
    runtime().block_on(async {
        let config = client_config(tessera_client::Level::Strong);
        let client = tessera_client::Client::connect_with(&cluster.addr_list(), config)
            .await
            .unwrap();
        client.topology().cluster_id()
    })
}

/// Strong writes need every replica: 20 of them (keys `WHAT:i`) commit only while the
/// members' links are up.
pub fn assert_strong_writes_commit(cluster: &TestCluster, what: &str) {
    runtime().block_on(async {
        let config = client_config(tessera_client::Level::Strong);
        let client = tessera_client::Client::connect_with(&cluster.addr_list(), config)
            .await
            .unwrap();
        for i in 0..20 {
            let key = format!("{what}:{i}");
            client.put(key.as_bytes(), b"v").await.unwrap();
        }
    });
}

/// Writes `key` = "real" at `strong`; its vnode and that vnode's epoch (what an impostor forges
/// messages for).
pub fn write_victim(cluster: &TestCluster, key: &str) -> (u16, u64) {
    runtime().block_on(async {
        let config = client_config(tessera_client::Level::Strong);
        let client = tessera_client::Client::connect_with(&cluster.addr_list(), config)
            .await
            .unwrap();
        client.put(key.as_bytes(), b"real").await.unwrap();
        let routing = client.topology();
        let vnode = routing.vnode_of(key.as_bytes());
        (vnode, routing.topology().chain_epochs[usize::from(vnode)])
    })
}

/// `key` reads back "real" at `strong`.
pub fn assert_victim_untouched(cluster: &TestCluster, key: &str) {
    let got = runtime().block_on(async {
        let config = client_config(tessera_client::Level::Strong);
        let client = tessera_client::Client::connect_with(&cluster.addr_list(), config)
            .await
            .unwrap();
        client.get(key.as_bytes()).await.unwrap()
    });
    assert_eq!(got.map(|g| g.0).as_deref(), Some(&b"real"[..]), "{key}");
}
