//! Catch-up on real three-node clusters (`--shards 1`, loopback): a restarted member serves
//! `strong` reads of what was written before it went down.
//!
//! The tests run one at a time (`SERIAL`), as in `cluster.rs`: three processes each, and on a
//! two-core machine two clusters at once would turn timing into noise.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{client_config, runtime, TestCluster};
use tessera_client::{Client, ClientConfig, Level};

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
