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
    assert_eq!(output.status.code(), Some(2));
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

    // Flipped bytes inside the first (sealed) segment: in big0's value, and in its key (the
    // first record: its key starts after the 48-byte header).
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    bytes[5000] ^= 0xFF;
    bytes[tessera_store::ondisk::RECORD_HEADER_BYTES + 1] ^= 0xFF;
    std::fs::write(first, &bytes).unwrap();

    // With the segment's hint, startup does not read the values: the damage is found by the
    // read, reported and not served.
    let node = Node::start(dir.path(), &[]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        let error = client.get(b"big0").await.unwrap_err();
        assert_eq!(error.status(), Some(Status::Internal), "{error}");
        assert!(error.to_string().contains("checksum"), "{error}");
        assert_eq!(client.get(b"last").await.unwrap().unwrap().0, b"value");
        // SCAN reads keys back from the log: the damaged key is reported, not listed.
        let mut cursor = Vec::new();
        let error = loop {
            let request = tessera_schema::msg::ScanRequest {
                cursor,
                prefix: Vec::new(),
                limit: 100,
            };
            match client.scan(request).await {
                Ok(page) if page.next_cursor.is_empty() => panic!("the damage was not found"),
                Ok(page) => cursor = page.next_cursor,
                Err(error) => break error,
            }
        };
        assert_eq!(error.status(), Some(Status::Internal), "{error}");
        assert!(error.to_string().contains("does not match"), "{error}");
    });
    node.terminate();

    // Without hints, startup scans the segment: refuse, naming file and offset.
    for entry in std::fs::read_dir(&shard_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "hint") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
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

#[test]
fn restart_from_hint_files_gives_the_same_data_as_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "1"]);
    let value = vec![6u8; 100 * 1024];
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        // ~20 MiB over 4 MiB segments; some keys overwritten and deleted.
        for i in 0..200u32 {
            let mut v = value.clone();
            v[..4].copy_from_slice(&i.to_le_bytes());
            client
                .put(format!("k{}", i % 150).as_bytes(), &v)
                .await
                .unwrap();
        }
        for i in 0..20u32 {
            client.delete(format!("k{i}").as_bytes()).await.unwrap();
        }
    });
    assert!(node.terminate().success());
    let shard_dir = dir.path().join("shard-000");
    let hints = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "hint"))
            .collect::<Vec<_>>()
    };
    let written = hints(&shard_dir);
    assert!(
        written.len() >= 3,
        "sealed segments have hints: {written:?}"
    );
    let read_all = |node: &Node| {
        runtime().block_on(async {
            let client = Client::connect(&node.addr()).await.unwrap();
            let mut all = Vec::new();
            for i in 0..150u32 {
                all.push(client.get(format!("k{i}").as_bytes()).await.unwrap());
            }
            // SCAN reads the listed keys back from the segments (the index keeps digests).
            let mut listed = std::collections::BTreeSet::new();
            let mut cursor = Vec::new();
            loop {
                let request = tessera_schema::msg::ScanRequest {
                    cursor,
                    prefix: b"k".to_vec(),
                    limit: 7,
                };
                let page = client.scan(request).await.unwrap();
                for entry in page.entries {
                    assert!(listed.insert(entry.key), "listed once");
                }
                if page.next_cursor.is_empty() {
                    break;
                }
                cursor = page.next_cursor;
            }
            let want: std::collections::BTreeSet<Vec<u8>> =
                (20..150u32).map(|i| format!("k{i}").into_bytes()).collect();
            assert_eq!(listed, want);
            all
        })
    };
    let node = Node::start(dir.path(), &[]);
    let from_hints = read_all(&node);
    assert!(
        from_hints[..20].iter().all(Option::is_none),
        "deleted keys stay deleted"
    );
    assert!(from_hints[20..].iter().all(Option::is_some));
    assert!(node.terminate().success());
    // Without hints (and with one damaged) the full scan finds exactly the same.
    std::fs::write(&written[0], b"not a hint").unwrap();
    for hint in &written[1..] {
        std::fs::remove_file(hint).unwrap();
    }
    let node = Node::start(dir.path(), &[]);
    assert_eq!(read_all(&node), from_hints);
    assert!(node.terminate().success());
    assert!(
        hints(&shard_dir).len() >= written.len(),
        "the scan wrote the hints again"
    );
}
