//! Every operation against a real node, through the async client, raw frames and the CLI.

mod common;

use std::collections::BTreeSet;

use common::{runtime, Node, Raw};
use tessera_client::*;
use tessera_schema::placement::vnode_of;

fn put_req(key: &str, value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        ttl_ms: 0,
        if_version: None,
        durability: Durability::Default,
    }
}

#[test]
fn every_operation_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "2"]);
    runtime().block_on(async {
        for shard_aware in [true, false] {
            let config = ClientConfig {
                shard_aware,
                ..ClientConfig::default()
            };
            let client = Client::connect_with(&node.addr(), config).await.unwrap();
            assert_eq!(client.routing().is_some(), shard_aware);
            client.ping().await.unwrap();
            let tag = if shard_aware { "a" } else { "b" };
            let key = format!("{tag}:greeting");

            // PUT and GET; versions only grow.
            let v1 = client.put(key.as_bytes(), b"hello").await.unwrap();
            assert_eq!(
                client.get(key.as_bytes()).await.unwrap(),
                Some((b"hello".to_vec(), v1))
            );
            let v2 = client.put(key.as_bytes(), b"world").await.unwrap();
            assert!(v2 > v1);

            // Compare-and-set: a stale version is refused with the current one.
            let stale = client
                .put_with(PutRequest {
                    if_version: Some(v1),
                    ..put_req(&key, b"x")
                })
                .await;
            let error = stale.unwrap_err();
            assert_eq!(error.status(), Some(Status::VersionMismatch));
            assert!(matches!(error, ClientError::Status { version, .. } if version == v2));
            let v3 = client
                .put_with(PutRequest {
                    if_version: Some(v2),
                    ..put_req(&key, b"cas")
                })
                .await
                .unwrap();
            let created = client
                .put_with(PutRequest {
                    if_version: Some(0),
                    ..put_req(&format!("{tag}:new"), b"n")
                })
                .await;
            assert!(created.is_ok());

            // DELETE, with and without a version.
            let wrong = DeleteRequest {
                key: key.clone().into_bytes(),
                if_version: Some(v3 + 1),
                durability: Durability::Default,
            };
            assert_eq!(
                client.delete_with(wrong).await.unwrap_err().status(),
                Some(Status::VersionMismatch)
            );
            client.delete(key.as_bytes()).await.unwrap();
            assert_eq!(client.get(key.as_bytes()).await.unwrap(), None);
            assert_eq!(
                client.delete(key.as_bytes()).await.unwrap_err().status(),
                Some(Status::NotFound)
            );

            // TTL: gone once expired.
            let ttl_key = format!("{tag}:ttl");
            client
                .put_with(PutRequest {
                    ttl_ms: 300,
                    ..put_req(&ttl_key, b"soon gone")
                })
                .await
                .unwrap();
            assert!(client.get(ttl_key.as_bytes()).await.unwrap().is_some());
            tokio::time::sleep(std::time::Duration::from_millis(450)).await;
            assert_eq!(client.get(ttl_key.as_bytes()).await.unwrap(), None);

            // Durability on request, and a 1 MiB value.
            let big = vec![7u8; 1024 * 1024];
            let big_key = format!("{tag}:big");
            client
                .put_with(PutRequest {
                    durability: Durability::Sync,
                    ..put_req(&big_key, &big)
                })
                .await
                .unwrap();
            assert_eq!(
                client.get(big_key.as_bytes()).await.unwrap().unwrap().0,
                big
            );

            // BATCH: mixed ops across both shards, each with its own result, in order.
            let mut ops = Vec::new();
            for i in 0..50 {
                ops.push(BatchOp::Put(put_req(
                    &format!("{tag}:batch:{i}"),
                    format!("v{i}").as_bytes(),
                )));
            }
            ops.push(BatchOp::Get {
                key: format!("{tag}:batch:7").into_bytes(),
            });
            ops.push(BatchOp::Get {
                key: format!("{tag}:absent").into_bytes(),
            });
            ops.push(BatchOp::Delete(DeleteRequest {
                key: format!("{tag}:batch:8").into_bytes(),
                if_version: None,
                durability: Durability::Default,
            }));
            ops.push(BatchOp::Get {
                key: vec![b'k'; 2000],
            });
            let results = client.batch(ops).await.unwrap();
            assert_eq!(results.len(), 54);
            assert!(results[..50].iter().all(|r| r.status == Status::Ok));
            assert_eq!(results[50].value.as_deref(), Some(&b"v7"[..]));
            assert_eq!(results[51].status, Status::NotFound);
            assert_eq!(results[52].status, Status::Ok);
            assert_eq!(results[53].status, Status::KeyTooLarge);
        }

        // SCAN: pages of 7 over both shards list every live key exactly once.
        let client = Client::connect(&node.addr()).await.unwrap();
        let mut cursor = Vec::new();
        let mut seen = BTreeSet::new();
        loop {
            let page = client
                .scan(ScanRequest {
                    cursor,
                    prefix: b"a:batch:".to_vec(),
                    limit: 7,
                })
                .await
                .unwrap();
            assert!(page.entries.len() <= 7);
            for entry in page.entries {
                assert!(seen.insert(entry.key), "a key listed twice");
            }
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        let want: BTreeSet<Vec<u8>> = (0..50)
            .filter(|i| *i != 8)
            .map(|i| format!("a:batch:{i}").into_bytes())
            .collect();
        assert_eq!(seen, want);
        let shards_owning: BTreeSet<u16> = want
            .iter()
            .map(|k| client.routing().unwrap().shard_of(k))
            .collect();
        assert_eq!(shards_owning.len(), 2, "the keys span both shards");

        // STATS: one entry per shard, counting what happened.
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.len(), 2);
        assert!(stats.iter().map(|s| s.keys).sum::<u64>() >= 98);
        assert!(
            stats.iter().map(|s| s.forwarded_in).sum::<u64>() > 0,
            "the non-shard-aware pass forwarded"
        );
    });
}

#[test]
fn pipelined_requests_on_a_wrong_shard_port_are_forwarded_and_answered_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "2"]);
    let table =
        tessera_schema::placement::shard_table(2, tessera_schema::placement::DEFAULT_VNODES);
    // Shard 0's own port; half of these keys belong to shard 1 and must cross the mesh.
    let shard0 = std::net::SocketAddr::new(node.addr.ip(), node.addr.port() + 1);
    let mut raw = Raw::connect(shard0);
    let keys: Vec<String> = (0..200).map(|i| format!("pipe:{i}")).collect();
    assert!(keys.iter().any(|k| table[usize::from(vnode_of(
        k.as_bytes(),
        tessera_schema::placement::DEFAULT_VNODES
    ))] == 1));
    let mut frames = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let request = Request::Put(put_req(key, key.as_bytes()));
        tessera_schema::wire::encode_request_frame(&mut frames, 1000 + i as u64, &request);
    }
    raw.send_bytes(&frames);
    let mut answered = BTreeSet::new();
    for _ in 0..keys.len() {
        let (id, response) = raw.recv().expect("response");
        assert!(
            matches!(response, Response::Op(ref r) if r.status == Status::Ok),
            "{response:?}"
        );
        assert!(answered.insert(id));
    }
    assert_eq!(answered, (1000..1200).collect());
    for (i, key) in keys.iter().enumerate() {
        let response = raw.call(
            5000 + i as u64,
            &Request::Get {
                key: key.clone().into_bytes(),
            },
        );
        let Response::Op(result) = response else {
            panic!("{response:?}")
        };
        assert_eq!(result.value.as_deref(), Some(key.as_bytes()));
    }
}

/// Regression test for glommio's poll-queue probe (PLATFORM.md, upstream #605): on a fresh data
/// directory the first DmaFile a shard opens is a new, empty segment; without the workaround in
/// `disk::probe_workaround` every read from disk then fails with EOPNOTSUPP.
#[test]
fn disk_reads_work_on_a_fresh_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "1"]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        // 64 KiB values: each flush leaves only the last partial block in memory, so the first
        // value must come back from the disk.
        for i in 0..4u8 {
            let put = PutRequest {
                durability: Durability::Sync,
                ..put_req(&format!("v{i}"), &[i; 65536])
            };
            client.put_with(put).await.unwrap();
        }
        assert_eq!(
            client.get(b"v0").await.unwrap().unwrap().0,
            vec![0u8; 65536]
        );
    });
}
