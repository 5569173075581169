//! Real three-node clusters on loopback (`--shards 1`): every operation at every level, kill -9
//! of a chain's middle and of its tail under concurrent writers, and hostile peers.
//!
//! The tests run one at a time (`SERIAL`): each starts three processes, and on a two-core
//! machine two clusters at once would turn timing (write timeouts, catch-up) into noise.

mod common;
#[path = "common/hello.rs"]
mod hello;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    assert_replicas_agree, cli_binary, client_config, rss_bytes, runtime, signal, Raw, TestCluster,
};
use hello::hello_frame;
use tessera_client::{
    BatchOp, Client, ClientConfig, ClientError, DeleteRequest, Durability, Level, OpResult,
    PutRequest, Request, Response, ScanRequest, Status,
};
use tessera_schema::msg::RequestOptions;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const VNODES: &str = "64";

/// A client whose reads go through node `via` (it is given first).
async fn client_via(cluster: &TestCluster, via: usize, level: Level) -> Client {
    let mut addrs = vec![cluster.addrs[via].clone()];
    addrs.extend(
        cluster
            .addrs
            .iter()
            .filter(|a| **a != cluster.addrs[via])
            .cloned(),
    );
    let config = ClientConfig {
        prefer_first_address: true,
        tls: None,
        credentials: None,
        ..client_config(level)
    };
    Client::connect_with(&addrs.join(","), config)
        .await
        .unwrap()
}

fn put(key: &[u8], value: &[u8], if_version: Option<u64>) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ttl_ms: 0,
        if_version,
        durability: Durability::Default,
    }
}

#[test]
fn every_operation_at_every_level_through_every_node() {
    let _serial = serial();
    let cluster = TestCluster::start(3, &["--vnodes", VNODES]);
    let rt = runtime();
    rt.block_on(async {
        for level in [Level::Eventual, Level::Session, Level::Strong] {
            let name = level.name();
            let writer = Client::connect_with(&cluster.addr_list(), client_config(level))
                .await
                .unwrap();
            assert!(writer.topology().is_cluster());
            // Writes land on every vnode's head, whichever node the client was given.
            for i in 0..60 {
                let key = format!("{name}:{i}");
                writer.put(key.as_bytes(), b"v1").await.unwrap();
            }
            // Read back through each node: session and strong see the writes at once (a
            // session through the writer's own tokens); eventual sees them soon.
            for via in 0..3 {
                let reader = client_via(&cluster, via, level).await;
                for i in 0..60 {
                    let key = format!("{name}:{i}");
                    let got = read_eventually(&reader, key.as_bytes(), level).await;
                    assert_eq!(got, Some(b"v1".to_vec()), "{key} through node {via}");
                }
            }
            // Read-your-writes across replicas: one handle writes at the head and reads
            // through another node.
            for via in 0..3 {
                let handle = client_via(&cluster, via, level).await;
                for i in 0..20 {
                    let key = format!("{name}:ryw:{via}:{i}");
                    handle.put(key.as_bytes(), b"mine").await.unwrap();
                    if level != Level::Eventual {
                        let got = handle.get(key.as_bytes()).await.unwrap().map(|g| g.0);
                        assert_eq!(got, Some(b"mine".to_vec()), "{key} through node {via}");
                    }
                }
            }
            compare_and_set_and_delete(&writer, name).await;
            batch_across_heads(&writer, name).await;
            scan_walks_every_vnode(&writer, name).await;
        }
    });
    assert_replicas_agree(&cluster);
}

/// A read at `level`; an `eventual` read that misses is asked again for up to 2 s.
async fn read_eventually(client: &Client, key: &[u8], level: Level) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = client.get(key).await.unwrap().map(|g| g.0);
        if got.is_some() || level != Level::Eventual || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn compare_and_set_and_delete(client: &Client, name: &str) {
    let key = format!("{name}:cas");
    let first = client
        .put_with(put(key.as_bytes(), b"a", Some(0)))
        .await
        .unwrap();
    let refused = client
        .put_with(put(key.as_bytes(), b"b", Some(first + 1)))
        .await;
    match refused {
        Err(ClientError::Status {
            status: Status::VersionMismatch,
            version,
            ..
        }) => assert_eq!(version, first),
        other => panic!("{name}: a stale compare-and-set gave {other:?}"),
    }
    let second = client
        .put_with(put(key.as_bytes(), b"b", Some(first)))
        .await
        .unwrap();
    assert!(second > first);
    let delete = DeleteRequest {
        key: key.as_bytes().to_vec(),
        if_version: Some(second),
        durability: Durability::Sync,
    };
    client.delete_with(delete).await.unwrap();
    let gone = client.delete(key.as_bytes()).await;
    assert_eq!(gone.unwrap_err().status(), Some(Status::NotFound), "{name}");
}

async fn batch_across_heads(client: &Client, name: &str) {
    let keys: Vec<String> = (0..40).map(|i| format!("{name}:batch:{i}")).collect();
    let puts = keys
        .iter()
        .map(|k| BatchOp::Put(put(k.as_bytes(), k.as_bytes(), None)))
        .collect();
    let results = client.batch(puts).await.unwrap();
    assert!(
        results.iter().all(|r| r.status == Status::Ok),
        "{name}: {results:?}"
    );
    let mut ops: Vec<BatchOp> = keys
        .iter()
        .map(|k| BatchOp::Get {
            key: k.as_bytes().to_vec(),
        })
        .collect();
    ops.push(BatchOp::Get {
        key: format!("{name}:batch:absent").into_bytes(),
    });
    let results = read_batch_eventually(client, ops, keys.len()).await;
    for (key, result) in keys.iter().zip(&results) {
        assert_eq!(
            result.value.as_deref(),
            Some(key.as_bytes()),
            "{name}: {key} in order"
        );
    }
    assert_eq!(results.last().unwrap().status, Status::NotFound);
}

/// A batch of reads, asked again (up to 2 s) while any of the first `found` misses (eventual).
async fn read_batch_eventually(client: &Client, ops: Vec<BatchOp>, found: usize) -> Vec<OpResult> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let results = client.batch(ops.clone()).await.unwrap();
        if results[..found].iter().all(|r| r.status == Status::Ok) || Instant::now() > deadline {
            return results;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pages of a cluster scan list every key once.
async fn scan_walks_every_vnode(client: &Client, name: &str) {
    let prefix = format!("{name}:batch:");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut cursor = Vec::new();
        let mut listed = Vec::new();
        let mut pages = 0;
        loop {
            let request = ScanRequest {
                cursor,
                prefix: prefix.clone().into_bytes(),
                limit: 7,
            };
            let page = client.scan(request).await.unwrap();
            listed.extend(page.entries.into_iter().map(|e| e.key));
            pages += 1;
            assert!(pages < 1000, "the scan does not end");
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        let unique: BTreeSet<_> = listed.iter().cloned().collect();
        assert_eq!(unique.len(), listed.len(), "{name}: a key listed twice");
        if listed.len() == 40 || Instant::now() > deadline {
            assert_eq!(listed.len(), 40, "{name}: the scan missed keys");
            return;
        }
    }
}

/// What the writers of a kill test learned about each key.
#[derive(Default)]
struct Ledger {
    /// Per key: the newest acknowledged write's number.
    acked: BTreeMap<String, u64>,
    /// Per key: numbers of writes whose outcome is unknown.
    unknown: BTreeMap<String, BTreeSet<u64>>,
    acked_after_restart: u64,
}

/// Keys whose chain has node `node` at `position` (0: head, 1: middle, 2: tail).
fn keys_at(client: &Client, node: usize, position: usize, count: usize) -> Vec<String> {
    let routing = client.topology();
    (0..)
        .map(|i| format!("kill:{i}"))
        .filter(|k| routing.replicas(routing.vnode_of(k.as_bytes()))[position] == node)
        .take(count)
        .collect()
}

/// One writer: writes numbered values to its keys until `stop`, recording each outcome.
async fn writer(
    client: Arc<Client>,
    keys: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    restarted: Arc<AtomicBool>,
) {
    let mut number = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for key in &keys {
            number += 1;
            let value = number.to_string();
            let result = client.put(key.as_bytes(), value.as_bytes()).await;
            let mut ledger = ledger.lock().unwrap();
            match result {
                Ok(_) => {
                    ledger.acked.insert(key.clone(), number);
                    if restarted.load(Ordering::Relaxed) {
                        ledger.acked_after_restart += 1;
                    }
                }
                Err(ClientError::Status {
                    status: Status::Overloaded,
                    ..
                }) => {}
                Err(_) => {
                    ledger
                        .unknown
                        .entry(key.clone())
                        .or_default()
                        .insert(number);
                }
            }
        }
    }
}

/// Kills node 1 (the head, the middle or the tail of every written key's chain) under session
/// and strong writers, restarts it, and checks that every acknowledged write reads back at `strong` from
/// every node and that the replicas agree.
fn kill_under_writers(position: usize, fsync: &str) {
    let _serial = serial();
    let mut cluster = TestCluster::start(3, &["--vnodes", VNODES, "--fsync", fsync]);
    let victim = 1;
    let rt = runtime();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = rt.block_on(async {
        let mut writers = Vec::new();
        for (i, level) in [Level::Session, Level::Session, Level::Strong, Level::Strong]
            .into_iter()
            .enumerate()
        {
            let client = Arc::new(
                Client::connect_with(&cluster.addr_list(), client_config(level))
                    .await
                    .unwrap(),
            );
            let all = keys_at(&client, victim, position, 12);
            let keys = all[i * 3..i * 3 + 3].to_vec();
            let task = writer(
                client,
                keys,
                ledger.clone(),
                stop.clone(),
                restarted.clone(),
            );
            writers.push(tokio::spawn(task));
        }
        writers
    });
    std::thread::sleep(Duration::from_millis(1500));
    cluster.kill9(victim);
    std::thread::sleep(Duration::from_millis(2500));
    cluster.restart(victim);
    restarted.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(3000));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for task in writers {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("writers stop")
                .unwrap();
        }
    });
    let ledger = ledger.lock().unwrap();
    assert!(
        ledger.acked.len() == 12,
        "every key had an acknowledged write: {:?}",
        ledger.acked
    );
    assert!(
        ledger.acked_after_restart > 0,
        "no write was acknowledged after the restart"
    );
    assert_replicas_agree(&cluster);
    rt.block_on(async {
        for via in 0..3 {
            let reader = client_via(&cluster, via, Level::Strong).await;
            for (key, &acked) in &ledger.acked {
                let (value, _) = reader.get(key.as_bytes()).await.unwrap().expect("present");
                let number: u64 = String::from_utf8(value).unwrap().parse().unwrap();
                let explained = number == acked
                    || (number > acked
                        && ledger.unknown.get(key).is_some_and(|u| u.contains(&number)));
                assert!(
                    explained,
                    "{key} through node {via}: holds write {number}, the newest acknowledged \
                     was {acked}"
                );
            }
        }
    });
}

#[test]
fn kill_9_of_the_middle_under_writers_loses_no_acknowledged_write() {
    kill_under_writers(1, "always");
}

#[test]
fn kill_9_of_the_tail_under_writers_loses_no_acknowledged_write() {
    kill_under_writers(2, "interval");
}

/// The head's unsynced tail is lost with it (`--fsync interval`): what its replicas
/// acknowledged must come back to it (a restarted head pulls from the replica furthest ahead
/// before it takes writes), and its keys take writes again once it has.
#[test]
fn kill_9_of_the_head_under_writers_loses_no_acknowledged_write() {
    kill_under_writers(0, "interval");
}

/// A Hello frame as a member would open a peer connection with.
/// Whether the node closes `stream` within a few seconds.
fn closed_by_node(mut stream: TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn hostile_peers_and_foreign_clients_lose_only_their_connection() {
    let _serial = serial();
    let cluster = TestCluster::start(3, &["--vnodes", VNODES]);
    let rt = runtime();
    let client = rt.block_on(Client::connect_with(
        &cluster.addr_list(),
        client_config(Level::Strong),
    ));
    let client = client.unwrap();
    let cluster_id = client.topology().cluster_id();
    let peer = cluster.peer_addr(0);
    let attempts: [(&str, Vec<u8>); 4] = [
        ("garbage", vec![0xAB; 4096]),
        ("a frame that is not a Hello", {
            let mut frame = Vec::new();
            tessera_schema::frame::encode_frame(&mut frame, 0x41, 0, &[1, 2, 3, 4]);
            frame
        }),
        ("a Hello of another cluster", hello_frame(cluster_id ^ 1, 1)),
        ("a Hello from no member", hello_frame(cluster_id, 7)),
    ];
    for (what, bytes) in attempts {
        let mut stream = TcpStream::connect(peer).unwrap();
        stream.write_all(&bytes).unwrap();
        assert!(
            closed_by_node(stream),
            "{what}: the peer port kept the connection"
        );
        // The cluster's own links are untouched: a strong write needs every replica.
        rt.block_on(async {
            for i in 0..10 {
                let key = format!("after:{what}:{i}");
                client.put(key.as_bytes(), b"v").await.unwrap();
            }
        });
    }
    // A client of another cluster is refused on the client port; others go on.
    let mut raw = Raw::connect(cluster.addrs[0].parse().unwrap());
    let options = RequestOptions {
        cluster_id: cluster_id ^ 1,
        ..RequestOptions::default()
    };
    let mut frame = Vec::new();
    let get = Request::Get { key: b"k".to_vec() };
    tessera_schema::wire::encode_request_frame_with(&mut frame, 1, &get, &options);
    raw.send_bytes(&frame);
    match raw.recv() {
        None => {}
        Some((_, Response::Error { message, .. })) => {
            assert!(message.contains("cluster"), "{message}");
            assert!(raw.recv().is_none(), "the connection stays open");
        }
        Some(other) => panic!("a foreign client was answered {other:?}"),
    }
    rt.block_on(client.put(b"still", b"fine")).unwrap();
}

#[test]
fn a_member_that_stops_reading_cannot_grow_its_upstream() {
    let _serial = serial();
    let mut cluster = TestCluster::start(3, &["--vnodes", VNODES, "--cache-bytes", "16MiB"]);
    let rt = runtime();
    let client = rt
        .block_on(Client::connect_with(
            &cluster.addr_list(),
            client_config(Level::Eventual),
        ))
        .unwrap();
    let routing = client.topology();
    // Keys headed by node 0 whose chain reaches node 2.
    let keys: Vec<String> = (0..)
        .map(|i| format!("stall:{i}"))
        .filter(|k| routing.replicas(routing.vnode_of(k.as_bytes()))[0] == 0)
        .take(16)
        .collect();
    // Every chain linked first: a strong write reaches every replica.
    rt.block_on(async {
        let strong = client_via(&cluster, 0, Level::Strong).await;
        for key in &keys {
            let deadline = Instant::now() + Duration::from_secs(10);
            while strong.put(key.as_bytes(), b"linked").await.is_err() {
                assert!(Instant::now() < deadline, "the cluster never linked up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let stopped = cluster.node(2).pid();
    signal(stopped, "-STOP");
    let head = cluster.node(0).pid();
    let value = vec![7u8; 256 * 1024];
    let (mut written, mut overloaded, mut peak) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    rt.block_on(async {
        let mut i = 0;
        while written < (512 << 20) && overloaded < 20 && Instant::now() < deadline {
            let key = &keys[i % keys.len()];
            i += 1;
            match client.put(key.as_bytes(), &value).await {
                Ok(_) => written += value.len() as u64,
                Err(e) if e.status() == Some(Status::Overloaded) => {
                    overloaded += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("an eventual write failed: {e}"),
            }
            if i % 32 == 0 {
                peak = peak.max(rss_bytes(head));
            }
        }
    });
    peak = peak.max(rss_bytes(head));
    eprintln!(
        "wrote {} MiB while node 2 was stopped; {overloaded} OVERLOADED; the head peaked at {} MiB",
        written >> 20,
        peak >> 20
    );
    assert!(
        overloaded > 0,
        "the head took {} MiB for a stopped member without pushing back",
        written >> 20
    );
    assert!(peak < 400 << 20, "the head grew to {} MiB", peak >> 20);
    // Past the stall limit the stopped member counts as down: `eventual` writes go on.
    std::thread::sleep(Duration::from_secs(12));
    let resumed = rt.block_on(async {
        for attempt in 0..100 {
            let key = &keys[attempt % keys.len()];
            if client.put(key.as_bytes(), b"after the stall").await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    assert!(
        resumed,
        "eventual writes did not go on once the stopped member's link was dropped"
    );
    signal(stopped, "-CONT");
    assert_replicas_agree(&cluster);
}

/// `tessera admin status [--json]` against the cluster: exit status, and the JSON report.
fn admin_status(addrs: &str) -> (Option<i32>, serde_json::Value, String) {
    let output = std::process::Command::new(cli_binary())
        .args([
            "--addr",
            addrs,
            "--timeout",
            "2s",
            "admin",
            "status",
            "--json",
        ])
        .output()
        .expect("run tessera admin status");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output.status.code(), report, stderr)
}

#[test]
fn admin_status_reports_every_node_and_chain_and_fails_when_a_node_is_down() {
    let _serial = serial();
    let mut cluster = TestCluster::start(3, &["--vnodes", VNODES]);
    let rt = runtime();
    rt.block_on(async {
        let client = client_via(&cluster, 0, Level::Strong).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.put(b"admin:1", b"v").await.is_err() {
            assert!(Instant::now() < deadline, "the cluster never linked up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (code, report, stderr) = admin_status(&cluster.addr_list());
    assert_eq!(code, Some(0), "{stderr}");
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        assert_eq!(node["state"], "up", "{node}");
        assert_eq!(node["shards"], 1);
        assert!(
            node["version"].as_str().is_some_and(|v| !v.is_empty()),
            "{node}"
        );
        assert!(node["uptime_ms"].as_u64().is_some(), "{node}");
    }
    let keys: u64 = nodes.iter().map(|n| n["keys"].as_u64().unwrap()).sum();
    assert_eq!(keys, 3, "one key on each of three replicas");
    let chains = report["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 64);
    assert!(chains
        .iter()
        .all(|c| c["short"] == false && c["replicas"].as_array().unwrap().len() == 3));
    cluster.kill9(2);
    let (code, report, stderr) = admin_status(&cluster.addr_list());
    assert_eq!(code, Some(2), "a node is down: {stderr}");
    assert!(stderr.contains("1 nodes down"), "{stderr}");
    assert_eq!(report["nodes"][2]["state"], "down");
    let short = report["chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["short"] == true)
        .count();
    assert_eq!(short, 64, "every chain has a replica on node 2");
}
