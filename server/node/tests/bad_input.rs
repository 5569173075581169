//! Limits and bad input against a real node: every limit answers its status and keeps the
//! connection; an undecodable frame closes only its own connection; random bytes never take the
//! node down.

mod common;

use common::{Node, Raw};
use tessera_schema::frame::encode_frame;
use tessera_schema::limits::*;
use tessera_schema::msg::*;

fn put(key: Vec<u8>, value: Vec<u8>) -> Request {
    Request::Put(PutRequest {
        key,
        value,
        ttl_ms: 0,
        if_version: None,
        durability: Durability::Default,
    })
}

fn status(response: &Response) -> Status {
    match response {
        Response::Error { status, .. } => *status,
        Response::Op(result) => result.status,
        _ => Status::Ok,
    }
}

#[test]
fn every_limit_answers_its_status_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "2"]);
    let mut raw = Raw::connect(node.addr);
    assert_eq!(
        status(&raw.call(1, &put(b"k".to_vec(), b"v".to_vec()))),
        Status::Ok
    );

    let over = raw.call(2, &put(b"k".to_vec(), vec![0; MAX_VALUE_BYTES + 1]));
    assert_eq!(status(&over), Status::ValueTooLarge);
    let Response::Op(got) = raw.call(3, &Request::Get { key: b"k".to_vec() }) else {
        panic!()
    };
    assert_eq!(
        got.value.as_deref(),
        Some(&b"v"[..]),
        "same connection serves a GET after the refusal"
    );

    assert_eq!(
        status(&raw.call(4, &put(vec![1; MAX_KEY_BYTES + 1], vec![]))),
        Status::KeyTooLarge
    );
    assert_eq!(
        status(&raw.call(5, &put(vec![], vec![1]))),
        Status::BadRequest
    );
    let ops = (0..=MAX_BATCH_OPS)
        .map(|_| BatchOp::Get { key: b"k".to_vec() })
        .collect();
    assert_eq!(
        status(&raw.call(6, &Request::Batch(ops))),
        Status::BatchTooLarge
    );
    let bad_cursor = Request::Scan(ScanRequest {
        cursor: vec![9, 9, 9],
        prefix: vec![],
        limit: 1,
    });
    assert_eq!(status(&raw.call(7, &bad_cursor)), Status::BadRequest);
    // Digest cursors: a short digest, an over-long cursor, and a well-formed one.
    let scan_from = |cursor: Vec<u8>| {
        Request::Scan(ScanRequest {
            cursor,
            prefix: vec![],
            limit: 1,
        })
    };
    let mut short = vec![0, 0, 1];
    short.extend_from_slice(&[7; 5]);
    assert_eq!(status(&raw.call(7, &scan_from(short))), Status::BadRequest);
    let long = vec![0; MAX_CURSOR_BYTES + 1];
    assert_eq!(status(&raw.call(7, &scan_from(long))), Status::BadRequest);
    let mut good = vec![3, 0, 1];
    good.extend_from_slice(&u128::MAX.to_le_bytes());
    assert!(matches!(raw.call(7, &scan_from(good)), Response::Scan(_)));
    let ttl = Request::Put(PutRequest {
        ttl_ms: MAX_TTL_MS + 1,
        ..match put(b"t".to_vec(), vec![]) {
            Request::Put(p) => p,
            _ => unreachable!(),
        }
    });
    assert_eq!(status(&raw.call(8, &ttl)), Status::BadRequest);

    // A frame over the frame limit is skipped unread and answered by its id.
    let mut header = Vec::new();
    encode_frame(&mut header, Opcode::Put as u8, 9, &[]);
    let body_len = (MAX_FRAME_BODY_BYTES + 1) as u32;
    header[4..8].copy_from_slice(&body_len.to_le_bytes());
    raw.send_bytes(&header);
    let chunk = vec![0u8; 1 << 20];
    let mut left = body_len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        raw.send_bytes(&chunk[..n]);
        left -= n;
    }
    let (id, response) = raw.recv().unwrap();
    assert_eq!((id, status(&response)), (9, Status::ValueTooLarge));
    assert_eq!(status(&raw.call(10, &Request::Ping)), Status::Ok);
}

#[test]
fn an_undecodable_frame_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "2"]);
    let mut bystander = Raw::connect(node.addr);
    assert_eq!(status(&bystander.call(1, &Request::Ping)), Status::Ok);

    // A body that is not a flatbuffer, in a well-formed frame.
    let mut bad = Raw::connect(node.addr);
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        Opcode::Get as u8,
        77,
        b"definitely not a flatbuffer",
    );
    bad.send_bytes(&frame);
    let (id, response) = bad.recv().expect("an answer before the close");
    assert_eq!((id, status(&response)), (77, Status::BadRequest));
    assert!(bad.recv().is_none(), "the connection is closed");

    // Bytes that are not frames at all.
    let mut http = Raw::connect(node.addr);
    http.send_bytes(b"GET / HTTP/1.1\r\nHost: tessera\r\n\r\n");
    assert_eq!(status(&http.recv().unwrap().1), Status::BadRequest);
    assert!(http.recv().is_none());

    assert_eq!(status(&bystander.call(2, &Request::Ping)), Status::Ok);
}

#[test]
fn random_bytes_do_not_take_the_node_down() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &["--shards", "2"]);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let ports = [node.addr.port(), node.addr.port() + 1, node.addr.port() + 2];
    for round in 0..300 {
        let port = ports[round % ports.len()];
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let len = rng.gen_range(1..4096);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if round % 3 == 0 {
            // Start with a valid header so the garbage reaches the body decoder.
            let mut frame = Vec::new();
            encode_frame(&mut frame, rng.gen_range(0..12), rng.gen(), &bytes);
            if round % 2 == 0 {
                let flip = rng.gen_range(20..frame.len());
                frame[flip] ^= 0x10;
            }
            bytes = frame;
        }
        use std::io::Write;
        let _ = stream.write_all(&bytes);
    }
    assert!(node.is_running());
    let mut raw = Raw::connect(node.addr);
    assert_eq!(
        status(&raw.call(1, &put(b"still".to_vec(), b"here".to_vec()))),
        Status::Ok
    );
    let Response::Op(got) = raw.call(
        2,
        &Request::Get {
            key: b"still".to_vec(),
        },
    ) else {
        panic!()
    };
    assert_eq!(got.value.as_deref(), Some(&b"here"[..]));
}

#[test]
fn a_memory_limit_refuses_new_keys_with_a_clear_status_and_the_node_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--shards", "1", "--memory-limit", "1MiB", "--vnodes", "256"];
    let mut node = Node::start(dir.path(), &flags);
    let mut raw = Raw::connect(node.addr);
    let key = |n: u64| format!("key{n:012}").into_bytes();
    let mut stored = Vec::new();
    let mut refused = None;
    // About 50 bytes of index per key plus 300 KB of first tables: 1 MiB holds some 15 000 keys.
    'fill: for batch in 0..40u64 {
        let ops = (0..1000u64)
            .map(|i| match put(key(batch * 1000 + i), vec![1; 8]) {
                Request::Put(p) => BatchOp::Put(p),
                _ => unreachable!(),
            })
            .collect();
        let Response::Batch(results) = raw.call(100 + batch, &Request::Batch(ops)) else {
            panic!()
        };
        for (i, result) in results.into_iter().enumerate() {
            match result.status {
                Status::Ok => stored.push(key(batch * 1000 + i as u64)),
                Status::MemoryLimit => {
                    refused = Some((key(batch * 1000 + i as u64), result.message));
                    break 'fill;
                }
                other => panic!("unexpected {other}: {}", result.message),
            }
        }
    }
    let (refused_key, message) = refused.expect("the limit was reached");
    assert!(message.contains("memory limit"), "{message}");
    assert!(
        (5_000..25_000).contains(&stored.len()),
        "{} keys fit in 1 MiB",
        stored.len()
    );
    // Still refused, cleanly (its vnode's table is full); overwrites, reads and deletes go on.
    assert_eq!(
        status(&raw.call(1, &put(refused_key.clone(), b"v".to_vec()))),
        Status::MemoryLimit
    );
    assert_eq!(
        status(&raw.call(2, &put(stored[1].clone(), b"new".to_vec()))),
        Status::Ok
    );
    let Response::Op(got) = raw.call(
        3,
        &Request::Get {
            key: stored[1].clone(),
        },
    ) else {
        panic!()
    };
    assert_eq!(got.value.as_deref(), Some(&b"new"[..]));
    // Deleting a key of the same vnode makes room for the refused one.
    let vnode = tessera_schema::placement::vnode_of(&refused_key, 256);
    let neighbour = stored
        .iter()
        .find(|k| tessera_schema::placement::vnode_of(k, 256) == vnode)
        .expect("a stored key in the same vnode");
    let delete = Request::Delete(DeleteRequest {
        key: neighbour.clone(),
        if_version: None,
        durability: Durability::Default,
    });
    assert_eq!(status(&raw.call(4, &delete)), Status::Ok);
    assert_eq!(
        status(&raw.call(5, &put(refused_key, b"v".to_vec()))),
        Status::Ok,
        "room again"
    );
    assert!(node.is_running());
}
