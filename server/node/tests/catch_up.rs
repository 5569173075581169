//! Catch-up on real three-node clusters (`--shards 1`, loopback): a restarted member serves
//! `strong` reads of what was written before it went down; a state transfer of more keys than
//! one frame could list, killed in the middle, finishes with every delete applied and the
//! sender's memory bounded.
//!
//! The tests run one at a time (`SERIAL`), as in `cluster.rs`: three processes each, and on a
//! two-core machine two clusters at once would turn timing into noise.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{assert_replicas_agree, cli_binary, client_config, rss_bytes, runtime, TestCluster};
use tessera_client::{BatchOp, Client, ClientConfig, DeleteRequest, Durability, Level, PutRequest};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client that reads through node `via` only when it holds the key's vnode (every node does
/// in a three-node cluster), with no retry and a timeout of `timeout`.
async fn reader_via(cluster: &TestCluster, via: usize, timeout: Duration) -> Client {
    let mut addrs = vec![cluster.addrs[via].clone()];
    let others = cluster.addrs.iter().filter(|a| **a != cluster.addrs[via]);
    addrs.extend(others.cloned());
    let config = ClientConfig {
        prefer_first_address: true,
        tls: None,
        credentials: None,
        retries: 0,
        timeout,
        ..client_config(Level::Strong)
    };
    Client::connect_with(&addrs.join(","), config)
        .await
        .unwrap()
}

/// Defect 1 of the catch-up issue: each member in turn is killed and restarted while the
/// cluster is idle; every key written before is then read at `strong` through it, each answered
/// within a second (before the fix, the vnodes it heads or is the middle of never answered).
#[test]
fn a_restarted_member_answers_strong_reads_of_what_came_before() {
    let _serial = serial();
    let mut cluster = TestCluster::start(3, &["--vnodes", "64", "--fsync", "always"]);
    let rt = runtime();
    let keys: Vec<String> = (0..200).map(|i| format!("before:{i}")).collect();
    rt.block_on(async {
        let writer = Client::connect_with(&cluster.addr_list(), client_config(Level::Strong))
            .await
            .unwrap();
        for key in &keys {
            writer.put(key.as_bytes(), key.as_bytes()).await.unwrap();
        }
    });
    for restarted in 0..3 {
        cluster.kill9(restarted);
        cluster.restart(restarted);
        rt.block_on(async {
            let reader = reader_via(&cluster, restarted, Duration::from_secs(1)).await;
            // Its links come up within a few seconds of the start; the first read waits for it.
            let deadline = Instant::now() + Duration::from_secs(15);
            while reader.get(keys[0].as_bytes()).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "node {restarted} never served a read"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for key in &keys {
                let got = reader.get(key.as_bytes()).await;
                let got = got.unwrap_or_else(|e| {
                    panic!("{key} at strong through restarted node {restarted}: {e}")
                });
                assert_eq!(got.map(|g| g.0), Some(key.as_bytes().to_vec()), "{key}");
            }
        });
    }
}

/// Keys put before the tail goes away; every tenth is deleted while it is away.
const BEFORE: usize = 20_000;
/// Keys put while the tail is away: more digests (16 bytes each) than a 16 MiB frame holds.
const WHILE_AWAY: usize = 1_100_000;

fn put_op(key: String, value: &[u8]) -> BatchOp {
    BatchOp::Put(PutRequest {
        key: key.into_bytes(),
        value: value.to_vec(),
        ttl_ms: 0,
        if_version: None,
        durability: Durability::Default,
    })
}

async fn run_batches(client: &Client, ops: Vec<BatchOp>) {
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let batch: Vec<BatchOp> = ops.by_ref().take(1000).collect();
        let results = client.batch(batch).await.unwrap();
        assert!(results
            .iter()
            .all(|r| r.status == tessera_client::Status::Ok));
    }
}

fn admin_status_text(cluster: &TestCluster) -> String {
    let output = std::process::Command::new(cli_binary())
        .args(["--addr", &cluster.addr_list(), "admin", "status"])
        .output()
        .expect("run tessera admin status");
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Every chain's replicas at one sequence number and no transfer in flight (admin status, which
/// reads no values; `tessera verify` then compares them).
fn caught_up(cluster: &TestCluster) -> bool {
    let report = admin_status_json(cluster);
    let chains = report["chains"].as_array().cloned().unwrap_or_default();
    let transfers = report["transfers"].as_array().map_or(1, Vec::len);
    !chains.is_empty() && chains.iter().all(|c| c["lag"] == 0) && transfers == 0
}

fn admin_status_json(cluster: &TestCluster) -> serde_json::Value {
    let output = std::process::Command::new(cli_binary())
        .args(["--addr", &cluster.addr_list(), "admin", "status", "--json"])
        .output()
        .expect("run tessera admin status");
    serde_json::from_slice(&output.stdout).unwrap_or_default()
}

/// The transfers node `i` is sending now, from `tessera admin status --json`.
fn transfers_from(cluster: &TestCluster, i: usize) -> usize {
    admin_status_json(cluster)["transfers"]
        .as_array()
        .map_or(0, |list| list.iter().filter(|t| t["from"] == i).count())
}

/// Defects 2 and 6 of the catch-up issue, on real processes: one vnode (`--vnodes 1`) gets
/// 1.1 M keys while its tail is down (its middle's 64 MiB queue gives way), and a tenth of
/// the keys the tail had are deleted. The tail returns, is killed with SIGKILL in the middle of
/// its transfer (paced at 16 MiB/s so that there is a middle), and returns again: the transfer
/// finishes, `tessera verify` agrees, no deleted key is on any node, and the sender's memory
/// grew by far less than the vnode's size while it sent it.
#[test]
fn a_transfer_larger_than_a_frame_survives_the_kill_of_its_receiver_with_every_delete() {
    let _serial = serial();
    let flags = ["--vnodes", "1", "--transfer-mib-per-s", "16"];
    let mut cluster = TestCluster::start(3, &flags);
    let rt = runtime();
    let client = rt.block_on(async {
        Client::connect_with(&cluster.addr_list(), client_config(Level::Eventual))
            .await
            .unwrap()
    });
    let chain = client.topology().replicas(0);
    let (middle, tail) = (chain[1], chain[2]);
    let value = [7u8; 24];
    rt.block_on(async {
        let before = (0..BEFORE).map(|i| put_op(format!("before:{i}"), &value));
        run_batches(&client, before.collect()).await;
    });
    assert_replicas_agree(&cluster);
    cluster.kill9(tail);
    let deleted: Vec<String> = (0..BEFORE)
        .step_by(10)
        .map(|i| format!("before:{i}"))
        .collect();
    rt.block_on(async {
        let deletes = deleted.iter().map(|key| {
            BatchOp::Delete(DeleteRequest {
                key: key.clone().into_bytes(),
                if_version: None,
                durability: Durability::Default,
            })
        });
        run_batches(&client, deletes.collect()).await;
        let count = std::env::var("TESSERA_TEST_AWAY").map_or(WHILE_AWAY, |v| v.parse().unwrap());
        let away = (0..count).map(|i| put_op(format!("away:{i}"), &value));
        run_batches(&client, away.collect()).await;
    });
    let sender = cluster.node(middle).pid();
    let baseline = rss_bytes(sender);
    cluster.restart(tail);
    let deadline = Instant::now() + Duration::from_secs(30);
    while transfers_from(&cluster, middle) == 0 {
        assert!(Instant::now() < deadline, "no transfer started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut peak = baseline;
    for _ in 0..20 {
        peak = peak.max(rss_bytes(sender));
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.kill9(tail);
    cluster.restart(tail);
    // The second transfer resumes from where the first left the tail's disk.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !caught_up(&cluster) {
        peak = peak.max(rss_bytes(sender));
        if Instant::now() > deadline {
            panic!(
                "the transfer never finished:\n{}",
                admin_status_text(&cluster)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_replicas_agree(&cluster);
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "sender RSS: {:.1} MiB before the transfer, {:.1} MiB at most during it",
        mib(baseline),
        mib(peak)
    );
    // The vnode is ~75 MiB of values and ~18 MiB of digests; the old transfer held it all,
    // about twice over.
    assert!(
        peak.saturating_sub(baseline) < 48 << 20,
        "the sender grew by {:.1} MiB",
        mib(peak - baseline)
    );
    rt.block_on(async {
        for via in 0..3 {
            let reader = reader_via(&cluster, via, Duration::from_secs(8)).await;
            for key in deleted.iter().step_by(50) {
                let got = reader.get(key.as_bytes()).await.unwrap();
                assert_eq!(got, None, "{key} was deleted, but node {via} has it");
            }
            let kept = reader.get(b"before:1").await.unwrap();
            assert_eq!(kept.map(|g| g.0), Some(value.to_vec()));
        }
    });
}
