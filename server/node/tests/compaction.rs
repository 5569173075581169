//! Compaction and TTL expiry on a real node: disk use settles within the space factor under
//! overwrites, expired keys disappear and give their space back, and `kill -9` while compaction
//! runs loses nothing acknowledged.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{runtime, Node};
use tessera_client::*;

async fn totals(client: &Client) -> ShardStats {
    let mut total = ShardStats::default();
    for s in client.stats().await.unwrap() {
        total.keys += s.keys;
        total.live_bytes += s.live_bytes;
        total.disk_bytes += s.disk_bytes;
        total.compactions += s.compactions;
        total.bytes_reclaimed += s.bytes_reclaimed;
        total.expired_keys += s.expired_keys;
    }
    total
}

/// Polls STATS until `done` holds, for at most 20 s.
async fn settle(client: &Client, done: impl Fn(&ShardStats) -> bool) -> ShardStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = totals(client).await;
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

#[test]
fn disk_use_settles_within_the_space_factor_under_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "1", "--space-factor", "2"]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        let value = vec![5u8; 64 * 1024];
        // 40 keys of 64 KiB overwritten 40 times: ~100 MiB written, ~2.6 MiB live.
        for round in 0..40u32 {
            for key in 0..40u32 {
                let mut v = value.clone();
                v[..4].copy_from_slice(&round.to_le_bytes());
                client
                    .put(format!("key{key}").as_bytes(), &v)
                    .await
                    .unwrap();
            }
        }
        let bound = |s: &ShardStats| 2 * s.live_bytes + 2 * SEGMENT_BYTES;
        let stats = settle(&client, |s| s.disk_bytes <= bound(s)).await;
        assert!(
            stats.compactions > 0 && stats.bytes_reclaimed > 0,
            "{stats:?}"
        );
        assert!(
            stats.disk_bytes <= bound(&stats),
            "disk {} live {}",
            stats.disk_bytes,
            stats.live_bytes
        );
        let on_disk: u64 = std::fs::read_dir(dir.path().join("shard-000"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .count() as u64;
        assert!(
            on_disk * SEGMENT_BYTES <= 3 * bound(&stats),
            "{on_disk} segment files remain"
        );
        for key in 0..40u32 {
            let (got, _) = client
                .get(format!("key{key}").as_bytes())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                &got[..4],
                &39u32.to_le_bytes(),
                "the newest value survives compaction"
            );
        }
    });
}

#[test]
fn expired_keys_disappear_and_their_space_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "1"]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        client.put(b"stays", b"forever").await.unwrap();
        let value = vec![1u8; 32 * 1024];
        for i in 0..400 {
            let put = PutRequest {
                key: format!("session{i}").into_bytes(),
                value: value.clone(),
                ttl_ms: 300,
                if_version: None,
                durability: Durability::Default,
            };
            client.put_with(put).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            client.get(b"session7").await.unwrap(),
            None,
            "expired keys are never returned"
        );
        let stats = settle(&client, |s| {
            s.keys == 1 && s.disk_bytes <= 2 * SEGMENT_BYTES
        })
        .await;
        assert_eq!(
            stats.keys, 1,
            "the sweep dropped the expired keys: {stats:?}"
        );
        assert_eq!(stats.expired_keys, 400);
        assert!(
            stats.disk_bytes <= 2 * SEGMENT_BYTES,
            "their space came back: {stats:?}"
        );
        assert_eq!(client.get(b"stays").await.unwrap().unwrap().0, b"forever");
    });
    // And they stay gone after a restart.
    node.terminate();
    let node = Node::start(dir.path(), &[]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        assert_eq!(client.get(b"session7").await.unwrap(), None);
        assert_eq!(client.get(b"stays").await.unwrap().unwrap().0, b"forever");
    });
}

#[test]
fn kill_9_during_compaction_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "1", "--fsync", "always"]);
    let mut acked: HashMap<Vec<u8>, (Vec<u8>, u64)> = HashMap::new();
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        let mut round = 0u32;
        // Overwrite until compaction has run at least once and is (likely) running again.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            for key in 0..30u32 {
                let key = format!("key{key}").into_bytes();
                let mut value = vec![7u8; 48 * 1024];
                value[..4].copy_from_slice(&round.to_le_bytes());
                let version = client.put(&key, &value).await.unwrap();
                acked.insert(key, (value, version));
            }
            round += 1;
            if round.is_multiple_of(10) && totals(&client).await.compactions >= 2 {
                break;
            }
        }
        assert!(
            totals(&client).await.compactions >= 2,
            "compaction ran during the writes"
        );
    });
    node.kill9();
    let node = Node::start(dir.path(), &["--fsync", "always"]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        for (key, (value, version)) in &acked {
            let (got, got_version) = client
                .get(key)
                .await
                .unwrap()
                .expect("acknowledged key survives");
            assert_eq!((&got, got_version), (value, *version));
        }
    });
}
