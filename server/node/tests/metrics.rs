//! Prometheus metrics (issue 11): scrapes of real nodes on loopback, checked by `promtool check
//! metrics` (Debian's prometheus package; CI installs it) and for values that move under load:
//! on one node (requests, durations, bytes, cache, disk, fsyncs, group commit, compaction,
//! refusals) and on a three-node cluster (bytes streamed, links, lag per peer while a member is
//! down, catch-ups when it returns). Also: a node still forming its cluster says `starting`,
//! and a metrics port in use stops startup with one line and exit status 2.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{client_config, http, runtime, Node, Raw, TestCluster};
use tessera_client::{BatchOp, Client, DeleteRequest, Durability, Level, PutRequest, ScanRequest};

/// One test at a time: each starts servers and loads them, and two cores are few.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An HTTP/1.0 request to the metrics port: the status code and the body.
/// One scrape of `/metrics`.
struct Scrape(String);

impl Scrape {
    fn of(addr: SocketAddr) -> Scrape {
        let (code, body) = http(addr, "GET", "/metrics");
        assert_eq!(code, 200, "{body}");
        Scrape(body)
    }

    /// The sum of every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).iter().sum()
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (series, ""),
                };
                let matches = series_name == name
                    && labels.iter().all(|(k, v)| {
                        series_labels
                            .split(',')
                            .any(|pair| pair == format!("{k}=\"{v}\""))
                    });
                matches.then(|| value.parse().expect("a number"))
            })
            .collect()
    }

    fn has_family(&self, name: &str) -> bool {
        self.0.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .is_some_and(|rest| rest.split(' ').next() == Some(name))
        })
    }

    /// `promtool check metrics` reads the text and finds nothing to say.
    fn assert_promtool_accepts(&self) {
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            common::skip_without(
                "promtool",
                "promtool (Debian's prometheus package) is not installed",
            );
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.0.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "promtool: {said}\n{}", self.0);
        assert!(said.trim().is_empty(), "promtool has remarks: {said}");
    }
}

/// Scrapes until `done` holds (shards publish every 250 ms), or panics after 10 s.
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = Scrape::of(addr);
        if done(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "never: {what}\n{}", scrape.0);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn put(key: String, value_bytes: usize) -> PutRequest {
    PutRequest {
        key: key.into_bytes(),
        value: vec![7u8; value_bytes],
        ttl_ms: 0,
        if_version: None,
        durability: Durability::Default,
    }
}

/// Overwrites 50 keys 30 times with 4 KiB values (6 MB: a sealed segment of garbage for
/// compaction), reads them, reads
/// 20 missing keys, deletes 10, and lists and batches once.
async fn single_node_load(client: &Client) {
    for round in 0..30 {
        let puts = (0..50).map(|k| client.put_with(put(format!("key-{k}"), 4096 + round)));
        for result in futures::future::join_all(puts).await {
            result.unwrap();
        }
    }
    for k in 0..50 {
        assert!(client
            .get(format!("key-{k}").as_bytes())
            .await
            .unwrap()
            .is_some());
    }
    for k in 0..20 {
        assert!(client
            .get(format!("missing-{k}").as_bytes())
            .await
            .unwrap()
            .is_none());
    }
    for k in 40..50 {
        client
            .delete_with(DeleteRequest {
                key: format!("key-{k}").into_bytes(),
                if_version: None,
                durability: Durability::Default,
            })
            .await
            .unwrap();
    }
    let scan = ScanRequest {
        prefix: b"key-".to_vec(),
        limit: 100,
        ..ScanRequest::default()
    };
    assert_eq!(client.scan(scan).await.unwrap().entries.len(), 40);
    let ops = vec![BatchOp::Get {
        key: b"key-1".to_vec(),
    }];
    client.batch(ops).await.unwrap();
}

#[test]
fn a_scrape_of_a_loaded_node_passes_promtool_and_its_values_move() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--shards",
        "1",
        "--fsync",
        "always",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let node = Node::start(dir.path(), &flags);
    let metrics = node.metrics_addr();
    let before = Scrape::of(metrics);
    before.assert_promtool_accepts();
    assert_eq!(
        before.sum("tessera_node_state", &[("state", "serving")]),
        1.0
    );
    assert_eq!(
        before.sum("tessera_node_state", &[("state", "starting")]),
        0.0
    );
    assert_eq!(before.sum("tessera_build_info", &[]), 1.0);

    let rt = runtime();
    let client = rt.block_on(Client::connect_with(
        &node.addr(),
        client_config(Level::Strong),
    ));
    let client = client.unwrap();
    rt.block_on(single_node_load(&client));
    // A frame that is not one: answered BAD_REQUEST, counted, and only its connection closed.
    let mut raw = Raw::connect(node.addr);
    raw.send_bytes(&[0xAB; 64]);
    let _ = raw.recv();

    let put_ok = [("operation", "put"), ("status", "OK"), ("level", "strong")];
    // Every figure checked below comes from one publish (a scrape may fall between a shard's
    // flush of its counters and its store's figures).
    let after = scrape_until(metrics, "1500 puts and a compaction counted", |s| {
        s.sum("tessera_requests_total", &put_ok) >= 1500.0
            && s.sum("tessera_compactions_total", &[]) >= 1.0
            && s.sum("tessera_compaction_reclaimed_bytes_total", &[]) > 0.0
            && s.sum("tessera_keys", &[]) == 40.0
            && s.sum("tessera_requests_total", &[("operation", "unknown")]) >= 1.0
            && s.sum("tessera_requests_total", &[("operation", "batch")]) >= 1.0
    });
    after.assert_promtool_accepts();
    let get = |status| [("operation", "get"), ("status", status)];
    assert_eq!(after.sum("tessera_requests_total", &get("OK")), 50.0);
    assert_eq!(after.sum("tessera_requests_total", &get("NOT_FOUND")), 20.0);
    let delete_ok = [("operation", "delete"), ("status", "OK")];
    assert_eq!(after.sum("tessera_requests_total", &delete_ok), 10.0);
    for operation in ["scan", "batch", "topology"] {
        let labels = [("operation", operation)];
        assert!(
            after.sum("tessera_requests_total", &labels) >= 1.0,
            "{operation}"
        );
    }
    let bad = [
        ("operation", "unknown"),
        ("level", "none"),
        ("status", "BAD_REQUEST"),
    ];
    assert!(after.sum("tessera_requests_total", &bad) >= 1.0);
    let put_durations = [("operation", "put"), ("level", "strong")];
    assert!(after.sum("tessera_request_duration_seconds_count", &put_durations) >= 1500.0);
    assert!(after.sum("tessera_request_duration_seconds_sum", &put_durations) > 0.0);
    let fast_puts = [("operation", "put"), ("le", "0.000025")];
    let all_puts = [("operation", "put"), ("le", "+Inf")];
    assert!(
        after.sum("tessera_request_duration_seconds_bucket", &fast_puts)
            < after.sum("tessera_request_duration_seconds_bucket", &all_puts),
        "fsync always: not every put within 25 us"
    );
    let moved = |name: &str| after.sum(name, &[]) > before.sum(name, &[]);
    for name in [
        "tessera_client_received_bytes_total",
        "tessera_client_sent_bytes_total",
        "tessera_cache_hits_total",
        "tessera_disk_written_bytes_total",
        "tessera_fsyncs_total",
        "tessera_group_commit_writes_count",
        "tessera_compaction_reclaimed_bytes_total",
        "tessera_disk_bytes",
        "tessera_live_bytes",
        "tessera_index_bytes",
        "tessera_cache_bytes",
        "tessera_uptime_seconds",
    ] {
        assert!(moved(name), "{name} did not move:\n{}", after.0);
    }
    assert!(after.sum("tessera_client_received_bytes_total", &[]) > 1500.0 * 4096.0);
    assert!(after.sum("tessera_group_commit_writes_sum", &[]) >= 1500.0);
    assert_eq!(after.sum("tessera_keys", &[]), 40.0);
    assert!(
        after.sum("tessera_client_connections", &[]) >= 1.0,
        "the client's"
    );
    assert!(after.has_family("tessera_cache_misses_total"));
    assert!(after.has_family("tessera_expired_keys_total"));
    // Only /metrics is served.
    assert_eq!(http(metrics, "GET", "/").0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").0, 405);
}

#[test]
fn a_cluster_scrape_shows_links_lag_and_catch_ups_per_peer() {
    let _serial = serial();
    let flags = ["--vnodes", "64", "--metrics-listen", "127.0.0.1:0"];
    let mut cluster = TestCluster::start(3, &flags);
    let metrics: Vec<SocketAddr> = (0..3).map(|i| cluster.node(i).metrics_addr()).collect();
    let rt = runtime();
    let client = rt
        .block_on(Client::connect_with(
            &cluster.addr_list(),
            client_config(Level::Strong),
        ))
        .unwrap();
    rt.block_on(async {
        for k in 0..100 {
            client.put_with(put(format!("c-{k}"), 100)).await.unwrap();
        }
    });
    // Every node heads some vnodes: each streamed to both others and has both links up.
    for (i, &addr) in metrics.iter().enumerate() {
        let scrape = scrape_until(addr, "links up and bytes streamed", |s| {
            (0..3).filter(|&p| p != i).all(|p| {
                let peer = [("peer", &*p.to_string())];
                s.sum("tessera_replication_link_up", &peer) == 1.0
                    && s.sum("tessera_replication_sent_bytes_total", &peer) > 0.0
            })
        });
        scrape.assert_promtool_accepts();
        assert_eq!(
            scrape.sum("tessera_node_state", &[("state", "serving")]),
            1.0
        );
        let strong_puts = [("operation", "put"), ("level", "strong")];
        assert!(scrape.sum("tessera_request_duration_seconds_count", &strong_puts) >= 1.0);
        assert!(scrape.has_family("tessera_replication_lag_writes"));
        assert!(scrape.has_family("tessera_replication_lag_seconds"));
        assert!(scrape.has_family("tessera_replication_queue_bytes"));
        assert_eq!(scrape.sum("tessera_chain_changes_total", &[]), 0.0);
    }

    // Node 2 dies: its predecessors count what it lacks, and for how long.
    cluster.kill9(2);
    let eventual = rt
        .block_on(Client::connect_with(
            &cluster.addr_list(),
            client_config(Level::Eventual),
        ))
        .unwrap();
    let written = rt.block_on(async {
        let mut written = 0;
        for k in 0..200 {
            let key = format!("e-{k}");
            written += u32::from(eventual.put_with(put(key, 100)).await.is_ok());
        }
        written
    });
    assert!(
        written > 50,
        "eventual writes to vnodes headed by live nodes: {written}"
    );
    let dead = [("peer", "2")];
    // Over a second, plus a publish interval for the figure to be fresh.
    std::thread::sleep(Duration::from_millis(1500));
    let lags: Vec<Scrape> = metrics[..2]
        .iter()
        .map(|&addr| {
            scrape_until(addr, "the link to node 2 down", |s| {
                s.sum("tessera_replication_link_up", &dead) == 0.0
            })
        })
        .collect();
    let behind: f64 = lags
        .iter()
        .map(|s| s.sum("tessera_replication_lag_writes", &dead))
        .sum();
    assert!(behind >= 1.0, "nobody counts node 2 behind");
    let oldest = lags
        .iter()
        .map(|s| s.sum("tessera_replication_lag_seconds", &dead))
        .fold(0.0, f64::max);
    assert!(
        oldest >= 1.0,
        "node 2 has lacked writes for over a second: {oldest}"
    );

    // It returns: caught up (from the queues), the lag goes back to 0.
    cluster.restart(2);
    for &addr in &metrics[..2] {
        let scrape = scrape_until(addr, "node 2 caught up", |s| {
            s.sum("tessera_replication_link_up", &dead) == 1.0
                && s.sum("tessera_replication_lag_writes", &dead) == 0.0
        });
        assert_eq!(scrape.sum("tessera_replication_lag_seconds", &dead), 0.0);
        scrape.assert_promtool_accepts();
    }
    assert_dashboard_fits(&Scrape::of(metrics[0]));
    // Its predecessors still queued what it lacked (it was away for seconds): resent from
    // the queues, no state transfer.
    let from_queue = [("peer", "2"), ("kind", "queue")];
    let transfers = [("peer", "2"), ("kind", "transfer")];
    let scrapes: Vec<Scrape> = metrics[..2].iter().map(|&a| Scrape::of(a)).collect();
    let count = |labels: &[(&str, &str)]| -> f64 {
        scrapes
            .iter()
            .map(|s| s.sum("tessera_replication_catch_ups_total", labels))
            .sum()
    };
    assert!(
        count(&from_queue) >= 1.0,
        "node 2 was resent what it lacked"
    );
    assert_eq!(count(&transfers), 0.0, "no transfer was needed");
}

#[test]
fn a_node_still_forming_its_cluster_says_starting() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_port_range(64);
    let peers: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + 200 * i))
        .collect();
    let metrics: SocketAddr = format!("127.0.0.1:{}", common::free_port_range(0))
        .parse()
        .unwrap();
    let mut child = Command::new(common::server_binary())
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            &peers[0],
            "--peers",
            &peers.join(","),
            "--shards",
            "1",
        ])
        .args(["--metrics-listen", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        if let Ok(stream) = TcpStream::connect(metrics) {
            drop(stream);
            break Scrape::of(metrics);
        }
        assert!(Instant::now() < deadline, "metrics never served");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        scrape.sum("tessera_node_state", &[("state", "starting")]),
        1.0
    );
    assert_eq!(
        scrape.sum("tessera_node_state", &[("state", "serving")]),
        0.0
    );
    scrape.assert_promtool_accepts();
}

#[test]
fn a_metrics_port_in_use_stops_startup_with_one_line() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let output = Command::new(common::server_binary())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", &port])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {port}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!dir.path().join("data").exists(), "nothing written");
}

/// Every query of the example Grafana dashboard (ops/grafana) as PromQL, with Grafana's
/// variables filled in.
fn dashboard_queries() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ops/grafana/tessera-dashboard.json");
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| t["expr"].as_str().expect("an expr").to_string())
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
        })
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    queries
}

/// The dashboard's queries parse (`promtool check rules`, each as a recording rule) and name
/// only families that a cluster node exports.
fn assert_dashboard_fits(scrape: &Scrape) {
    let queries = dashboard_queries();
    for query in &queries {
        let names = query
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("tessera_"));
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| scrape.has_family(base))
                .unwrap_or(name);
            assert!(
                scrape.has_family(family),
                "the dashboard asks for {name}: {query}"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("dashboard-rules.yml");
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        let quoted = serde_json::to_string(query).unwrap();
        text.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    std::fs::write(&rules, text).unwrap();
    let Ok(output) = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    else {
        common::skip_without("promtool", "promtool is not installed");
        return;
    };
    let said = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "promtool check rules: {said}");
}

#[test]
fn connections_refused_at_the_limit_are_counted_with_their_status() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--shards",
        "1",
        "--max-connections",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let node = Node::start(dir.path(), &flags);
    let mut first = Raw::connect(node.addr);
    let pong = first.call(1, &tessera_schema::msg::Request::Ping);
    assert_eq!(pong.status(), tessera_schema::msg::Status::Ok);
    let mut second = Raw::connect(node.addr);
    let (_, refusal) = second.recv().expect("a reason before the close");
    assert_eq!(refusal.status(), tessera_schema::msg::Status::Unavailable);
    let refused = [("status", "UNAVAILABLE")];
    // (The refusal is counted at once; the connection gauge within a publish interval.)
    let scrape = scrape_until(
        node.metrics_addr(),
        "the refusal and the first counted",
        |s| {
            s.sum("tessera_client_connections_refused_total", &refused) == 1.0
                && s.sum("tessera_client_connections", &[]) == 1.0
        },
    );
    scrape.assert_promtool_accepts();
}

/// Connections to a peer port closed before their Hello was let in are counted by reason
/// (`tessera_peer_refused_total`), and the scrape still passes promtool.
#[test]
fn peer_connections_refused_before_a_hello_are_counted_by_reason() {
    let _serial = serial();
    let flags = ["--vnodes", "16", "--metrics-listen", "127.0.0.1:0"];
    let mut cluster = TestCluster::start(3, &flags);
    let metrics = cluster.node(0).metrics_addr();
    let peer = cluster.peer_addr(0);
    let closed = |mut stream: TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(
            matches!(stream.read(&mut byte), Ok(0) | Err(_)),
            "the node kept a connection"
        );
    };
    // Not a frame at all.
    let mut garbage = TcpStream::connect(peer).unwrap();
    garbage.write_all(&[0xAB; 64]).unwrap();
    closed(garbage);
    // A Hello's header announcing 16 MiB, and more than a Hello's worth of its body.
    let mut frame = Vec::new();
    tessera_schema::frame::encode_frame(&mut frame, 0x40, 0, &vec![0u8; 16 << 20]);
    let mut oversized = TcpStream::connect(peer).unwrap();
    let _ = oversized.write_all(&frame[..64 * 1024]);
    closed(oversized);
    // Nothing at all, until the deadline.
    closed(TcpStream::connect(peer).unwrap());
    let scrape = scrape_until(metrics, "three refusals counted", |s| {
        ["hello", "pre_hello_bytes", "hello_deadline"]
            .iter()
            .all(|reason| s.sum("tessera_peer_refused_total", &[("reason", reason)]) >= 1.0)
    });
    scrape.assert_promtool_accepts();
}
