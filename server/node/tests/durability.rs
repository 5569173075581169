//! Restarts and crashes of a real node: SIGTERM drains and syncs; SIGKILL under `--fsync always`
//! loses no acknowledged write; a torn tail is cut; corruption in sealed data refuses to start.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{runtime, Node};

/// key -> (value, version) of every acknowledged PUT.
type Acked = HashMap<Vec<u8>, (Vec<u8>, u64)>;
use tessera_client::*;

#[test]
fn sigterm_drains_syncs_and_exits_zero_and_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "2"]);
    let addr = node.addr();
    runtime().block_on(async {
        let client = Client::connect(&addr).await.unwrap();
        for i in 0..500 {
            client
                .put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .await
                .unwrap();
        }
    });
    // Interval mode acknowledged these on append: SIGTERM must sync them before exiting.
    assert!(node.terminate().success());
    let node = Node::start(dir.path(), &[]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        for i in 0..500 {
            let got = client.get(format!("k{i}").as_bytes()).await.unwrap();
            assert_eq!(got.map(|g| g.0), Some(format!("v{i}").into_bytes()));
        }
        assert_eq!(
            client.stats().await.unwrap().len(),
            2,
            "the shard count is kept"
        );
    });
}

#[test]
fn a_different_shard_count_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    drop(Node::start(dir.path(), &["--shards", "2"]));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("created with 2 shards"));
}

#[test]
fn kill_9_under_concurrent_writers_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "2", "--fsync", "always"]);
    let addr = node.addr();
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let rt = runtime();
    let writers = rt.block_on(async {
        let client = Arc::new(Client::connect(&addr).await.unwrap());
        (0..16)
            .map(|writer| {
                let (client, acked) = (client.clone(), acked.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    for i in 0u64.. {
                        if Instant::now() > deadline {
                            break;
                        }
                        // Few keys per writer, so keys are overwritten many times.
                        let key = format!("w{writer}:k{}", i % 40).into_bytes();
                        let value = format!("w{writer}:i{i}:{}", "x".repeat((i % 300) as usize))
                            .into_bytes();
                        match client.put(&key, &value).await {
                            Ok(version) => {
                                acked.lock().unwrap().insert(key, (value, version));
                            }
                            Err(_) => break, // the node is gone
                        }
                    }
                })
            })
            .collect::<Vec<_>>()
    });
    // Let the writers run, then pull the plug in the middle of their writes.
    std::thread::sleep(Duration::from_millis(1500));
    let before = acked.lock().unwrap().len();
    assert!(before > 100, "writers made progress ({before} keys)");
    node.kill9();
    rt.block_on(async {
        for writer in writers {
            let _ = tokio::time::timeout(Duration::from_secs(30), writer).await;
        }
    });
    let acked = acked.lock().unwrap().clone();
    let node = Node::start(dir.path(), &["--fsync", "always"]);
    rt.block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        for (key, (value, version)) in &acked {
            let (got, got_version) = client
                .get(key)
                .await
                .unwrap()
                .expect("acknowledged key survives");
            // A later write may have reached the disk without being acknowledged; an
            // acknowledged one must never be missing or replaced by an older one.
            assert!(
                got_version >= *version,
                "{}: version went back",
                String::from_utf8_lossy(key)
            );
            if got_version == *version {
                assert_eq!(&got, value);
            }
        }
    });
}

#[test]
fn a_torn_tail_is_cut_and_corruption_in_sealed_data_refuses_to_start_unless_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "1", "--fsync", "always"]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        // 4 MiB segments: 9 MiB of values fill more than two.
        for i in 0..9 {
            client
                .put(format!("big{i}").as_bytes(), &vec![i as u8; 1024 * 1024])
                .await
                .unwrap();
        }
        client.put(b"last", b"value").await.unwrap();
    });
    node.kill9();
    let shard_dir = dir.path().join("shard-000");
    let mut segments: Vec<_> = std::fs::read_dir(&shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");

    // Garbage after the end of the newest segment's log is a torn tail: cut, and the node starts.
    let newest = segments.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    bytes[end + 100..end + 200].fill(0xEE);
    std::fs::write(newest, &bytes).unwrap();
    let node = Node::start(dir.path(), &[]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        assert_eq!(client.get(b"last").await.unwrap().unwrap().0, b"value");
    });
    node.terminate();

    // A flipped byte inside the first (sealed) segment: refuse, naming file and offset.
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    bytes[5000] ^= 0xFF;
    std::fs::write(first, &bytes).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("segment-0000000001.log") && stderr.contains("offset"),
        "{stderr}"
    );
    assert!(stderr.contains("--repair"), "{stderr}");

    // --repair starts, and what lies outside the damaged segment is still there.
    let node = Node::start(dir.path(), &["--repair"]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        assert_eq!(client.get(b"last").await.unwrap().unwrap().0, b"value");
        assert_eq!(
            client.get(b"big8").await.unwrap().unwrap().0,
            vec![8u8; 1024 * 1024]
        );
    });
}
