//! Hostile and careless clients against a real node (issue 9): none can take the node's memory
//! past its connection budget, its port, or its data, and while each one runs the node answers
//! PING and GET from another connection within a second.
//!
//! Memory is the server's resident set (`VmRSS` in `/proc/PID/status`), measured before and
//! during each attack; the budget is `--connection-memory` (small here, so that an attack that
//! escaped it would show quickly), and the value cache is kept small too.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Node, Raw};
use tessera_schema::frame::{encode_frame, FrameEvent, FrameReader};
use tessera_schema::limits::*;
use tessera_schema::msg::*;
use tessera_schema::wire::{
    decode_response, encode_request_frame, encode_shared_value_batch_frame,
};

const BUDGET_MIB: u64 = 256;
/// What the node may hold beyond its budget and the cache: allocator slack, thread stacks,
/// io_uring buffers, the index of the few keys these tests write.
const SLACK_MIB: u64 = 96;

/// One attack at a time: each test's claim is about one hostile client against an otherwise
/// quiet node, and ten attacks on two cores at once would measure the machine instead.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start(dir: &std::path::Path, extra: &[&str]) -> Node {
    let budget = format!("{BUDGET_MIB}MiB");
    let mut flags = vec![
        "--shards",
        "2",
        "--connection-memory",
        &budget,
        "--cache-bytes",
        "32MiB",
    ];
    flags.extend_from_slice(extra);
    Node::start(dir, &flags)
}

fn rss_mib(node: &Node) -> u64 {
    common::rss_bytes(node.pid()) >> 20
}

fn put(key: &[u8], value: Vec<u8>) -> Request {
    Request::Put(PutRequest {
        key: key.to_vec(),
        value,
        ttl_ms: 0,
        if_version: None,
        durability: Durability::Default,
    })
}

fn frame(id: u64, request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request_frame(&mut out, id, request);
    out
}

/// A PING and a GET from a fresh connection, each answered within a second.
fn assert_responsive(node: &Node, key: &[u8]) {
    let mut raw = Raw::connect(node.addr);
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let started = Instant::now();
    let Response::Op(pong) = raw.call(1, &Request::Ping) else {
        panic!("PING answered with something else")
    };
    assert_eq!(pong.status, Status::Ok);
    let Response::Op(got) = raw.call(2, &Request::Get { key: key.to_vec() }) else {
        panic!("GET answered with something else")
    };
    assert_eq!(
        got.status,
        Status::Ok,
        "GET from another connection: {got:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Checks, while `attack` runs on its own threads, that the node stays within its budget and
/// answers others; returns the highest RSS seen.
fn watch(node: &Node, key: &[u8], baseline_mib: u64, seconds: u64) -> u64 {
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        peak = peak.max(rss_mib(node));
        assert!(
            peak <= baseline_mib + BUDGET_MIB + SLACK_MIB,
            "RSS {peak} MiB: past the baseline {baseline_mib} MiB + budget {BUDGET_MIB} MiB"
        );
        assert_responsive(node, key);
        std::thread::sleep(Duration::from_millis(200));
    }
    peak
}

/// Sends `bytes` and keeps going until the node stops reading (our send blocks: TCP
/// backpressure) or `stop` is set.
fn flood(stream: &mut TcpStream, bytes: &[u8], stop: &AtomicBool) -> u64 {
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        match stream.write(bytes) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    sent
}

fn load_big_value(node: &Node, key: &[u8]) {
    let mut raw = Raw::connect(node.addr);
    let Response::Op(ok) = raw.call(1, &put(key, vec![7; MAX_VALUE_BYTES])) else {
        panic!()
    };
    assert_eq!(ok.status, Status::Ok);
}

#[test]
fn a_client_that_never_reads_its_answers_cannot_grow_the_node() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]);
    load_big_value(&node, b"big");
    let baseline = rss_mib(&node);
    // GETs of a 1 MiB value, pipelined without end, answers never read.
    let stop = Arc::new(AtomicBool::new(false));
    let mut stream = TcpStream::connect(node.addr).unwrap();
    let get = frame(
        9,
        &Request::Get {
            key: b"big".to_vec(),
        },
    );
    let gets: Vec<u8> = get.iter().copied().cycle().take(get.len() * 1000).collect();
    let attacker = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(&mut stream, &gets, &stop))
    };
    let peak = watch(&node, b"big", baseline, 4);
    stop.store(true, Ordering::Relaxed);
    let sent = attacker.join().unwrap();
    let held = peak.saturating_sub(baseline);
    eprintln!(
        "sent {} KB of GETs; the node held {held} MiB more",
        sent / 1000
    );
    assert!(sent > 100_000, "the attack sent little ({sent} bytes)");
    // The connection's own charge stops at its hard limit; RSS adds what malloc keeps of the
    // copies it freed on the way (encoding copies each value twice).
    assert!(
        held <= (CONNECTION_HARD_BYTES >> 20) + SLACK_MIB,
        "one connection held {held} MiB, past its hard limit"
    );
}

#[test]
fn a_batch_answer_never_passes_the_frame_limit() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]);
    for i in 0..20 {
        load_big_value(&node, format!("big{i}").as_bytes());
    }
    let baseline = rss_mib(&node);
    let mut raw = Raw::connect(node.addr);
    // 16 values of 1 MiB answer in more than 16 MiB: the ones that do not fit are left out.
    let gets = |n: usize| {
        Request::Batch(
            (0..n)
                .map(|i| BatchOp::Get {
                    key: format!("big{}", i % 20).into_bytes(),
                })
                .collect(),
        )
    };
    for items in [16, MAX_BATCH_OPS] {
        let Response::Batch(results) = raw.call(1, &gets(items)) else {
            panic!("a batch answer the client can read")
        };
        assert_eq!(results.len(), items);
        let found = results.iter().filter(|r| r.status == Status::Ok).count();
        let cut = results
            .iter()
            .filter(|r| r.status == Status::BatchTooLarge)
            .count();
        assert!(
            (14..16).contains(&found),
            "{found} values fit in one answer"
        );
        assert_eq!(found + cut, items, "every other item says why it was cut");
        assert!(rss_mib(&node) <= baseline + BUDGET_MIB + SLACK_MIB);
    }
    assert_responsive(&node, b"big0");
}

#[test]
fn items_sharing_bytes_are_refused_before_anything_is_copied() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]);
    load_big_value(&node, b"big");
    let baseline = rss_mib(&node);
    let mut raw = Raw::connect(node.addr);
    for id in 1..=5 {
        let mut bytes = Vec::new();
        encode_shared_value_batch_frame(&mut bytes, id, 2000, &vec![1u8; MAX_VALUE_BYTES]);
        raw.send_bytes(&bytes);
        let (got, response) = raw.recv().expect("an answer, and the connection open");
        assert_eq!(got, id);
        let Response::Error { status, .. } = response else {
            panic!("refused whole")
        };
        assert_eq!(status, Status::BatchTooLarge);
    }
    let grew = rss_mib(&node).saturating_sub(baseline);
    assert!(grew < 64, "refusing named gigabytes cost {grew} MiB");
    assert_responsive(&node, b"big");
}

#[test]
fn pipelined_scans_that_are_never_read_stay_within_the_budget() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]);
    // 20 000 keys of 1 KiB: a page of 10 000 of them is ~10 MB of answer.
    let mut raw = Raw::connect(node.addr);
    for chunk in 0..20 {
        let ops = (0..1000)
            .map(|i| {
                let mut key = format!("k{chunk}-{i}-").into_bytes();
                key.resize(MAX_KEY_BYTES, b'x');
                BatchOp::Put(PutRequest {
                    key,
                    value: b"v".to_vec(),
                    ttl_ms: 0,
                    if_version: None,
                    durability: Durability::Default,
                })
            })
            .collect();
        let Response::Batch(_) = raw.call(chunk, &Request::Batch(ops)) else {
            panic!()
        };
    }
    load_big_value(&node, b"big");
    let baseline = rss_mib(&node);
    let scan = frame(
        5,
        &Request::Scan(ScanRequest {
            cursor: Vec::new(),
            prefix: Vec::new(),
            limit: MAX_SCAN_PAGE,
        }),
    );
    let scans: Vec<u8> = scan
        .iter()
        .copied()
        .cycle()
        .take(scan.len() * 400)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut stream = TcpStream::connect(node.addr).unwrap();
    let attacker = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(&mut stream, &scans, &stop))
    };
    let peak = watch(&node, b"big", baseline, 4);
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    eprintln!("the node held {} MiB more", peak.saturating_sub(baseline));
}

#[test]
fn stalled_partial_frames_are_bounded_and_cut_off() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &["--frame-timeout-ms", "2000"]);
    load_big_value(&node, b"big");
    let baseline = rss_mib(&node);
    // 40 connections each send a 16 MiB frame's header and all of its body but one byte.
    let body_len = MAX_FRAME_BODY_BYTES;
    let mut header = Vec::new();
    encode_frame(&mut header, Opcode::Batch as u8, 3, &[]);
    header[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    let body = vec![0u8; body_len - 1];
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(node.addr).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let _ = stream.write_all(&header);
        let _ = stream.write_all(&body);
        stalled.push(stream);
    }
    let peak = watch(&node, b"big", baseline, 2);
    eprintln!(
        "40 stalled frames: the node held {} MiB more",
        peak - baseline
    );
    // Past the timeout (2 s + 16 s for the 16 MiB body) every one of them is closed.
    std::thread::sleep(Duration::from_secs(17));
    for mut stream in stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        let mut reader = FrameReader::new();
        reader.feed(&sink);
        let mut statuses = Vec::new();
        while let Ok(Some(FrameEvent::Frame { body, .. })) = reader.next_event() {
            if let Ok(Response::Error { status, .. }) = decode_response(body) {
                statuses.push(status);
            }
        }
        // Closed with a reason: refused up front (OVERLOADED) or cut off (BAD_REQUEST).
        assert!(
            statuses.contains(&Status::BadRequest) || statuses.contains(&Status::Overloaded),
            "{statuses:?}"
        );
    }
    assert_responsive(&node, b"big");
}

#[test]
fn one_flooding_connection_does_not_hold_the_others() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]);
    let mut raw = Raw::connect(node.addr);
    raw.call(1, &put(b"small", b"v".to_vec()));
    // Small GETs as fast as the socket takes them, answers read and thrown away.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = TcpStream::connect(node.addr).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 20];
        while reader.read(&mut buffer).is_ok_and(|n| n > 0) {}
    });
    let get = frame(
        9,
        &Request::Get {
            key: b"small".to_vec(),
        },
    );
    let gets: Vec<u8> = get.iter().copied().cycle().take(get.len() * 2000).collect();
    let attacker = {
        let (stop, mut stream) = (stop.clone(), stream);
        std::thread::spawn(move || {
            let sent = flood(&mut stream, &gets, &stop);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            sent
        })
    };
    for _ in 0..10 {
        assert_responsive(&node, b"small");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(attacker.join().unwrap() > 1_000_000, "the flood flowed");
    drain.join().unwrap();
}

#[test]
fn work_stops_and_memory_returns_when_its_client_goes_away() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]);
    for i in 0..8 {
        load_big_value(&node, format!("big{i}").as_bytes());
    }
    let baseline = rss_mib(&node);
    let mut peak = 0;
    for _ in 0..3 {
        // A batch of large GETs per frame, pipelined, never read, then the socket closes.
        let batch = frame(
            1,
            &Request::Batch(
                (0..64)
                    .map(|i| BatchOp::Get {
                        key: format!("big{}", i % 8).into_bytes(),
                    })
                    .collect(),
            ),
        );
        let mut stream = TcpStream::connect(node.addr).unwrap();
        let stop = AtomicBool::new(false);
        let many: Vec<u8> = batch
            .iter()
            .copied()
            .cycle()
            .take(batch.len() * 200)
            .collect();
        std::thread::scope(|scope| {
            scope.spawn(|| flood(&mut stream, &many, &stop));
            std::thread::sleep(Duration::from_secs(1));
            peak = peak.max(rss_mib(&node));
            stop.store(true, Ordering::Relaxed);
        });
        drop(stream);
    }
    // What those connections held is given back (most of it: malloc keeps some of what it
    // hands out, in partly used pages), and the node serves on.
    let allowed = baseline + 64.max(peak.saturating_sub(baseline) / 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rss_mib(&node) > allowed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = rss_mib(&node);
    eprintln!("baseline {baseline} MiB, peak {peak} MiB, after {after} MiB");
    assert!(
        after <= allowed,
        "{after} MiB resident after the clients left (baseline {baseline} MiB, peak {peak} MiB)"
    );
    assert_responsive(&node, b"big0");
}

#[test]
fn past_the_connection_limit_a_client_is_told_why() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &["--max-connections", "4"]);
    // Two shards: two connections each; the client port spreads them, so fill the shard
    // ports, which pin them.
    let base = node.addr.port();
    let held: Vec<Raw> = (0..4)
        .map(|i| {
            let mut addr = node.addr;
            addr.set_port(base + 1 + (i % 2));
            let mut raw = Raw::connect(addr);
            raw.call(1, &Request::Ping);
            raw
        })
        .collect();
    let mut addr = node.addr;
    addr.set_port(base + 1);
    let mut refused = Raw::connect(addr);
    let (id, response) = refused.recv().expect("a reason before the close");
    assert_eq!(id, 0, "the node's word on the whole connection");
    let Response::Error { status, message } = response else {
        panic!()
    };
    assert_eq!(status, Status::Unavailable);
    assert!(message.contains("connection limit"), "{message}");
    assert!(refused.recv().is_none(), "then it is closed");
    drop(held);
    // Room again once they are gone.
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Raw::connect(addr);
    assert!(matches!(again.call(2, &Request::Ping), Response::Op(_)));
}

#[test]
fn a_second_server_on_a_served_port_refuses_to_start() {
    let _serial = serial();
    let first_dir = tempfile::tempdir().unwrap();
    let first = start(first_dir.path(), &[]);
    let second_dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::server_binary())
        .arg("--data-dir")
        .arg(second_dir.path())
        .args(["--listen", &first.addr(), "--shards", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(
        !second_dir.path().join("node.meta").exists(),
        "nothing was written for the refused node"
    );
    // Something else on a shard port is refused the same way.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port() - 1;
    let output = std::process::Command::new(common::server_binary())
        .arg("--data-dir")
        .arg(second_dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--shards", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let mut raw = Raw::connect(first.addr);
    raw.call(1, &put(b"small", b"v".to_vec()));
    assert_responsive(&first, b"small");
}

#[test]
fn bad_flags_are_refused_before_anything_is_written() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for flags in [
        &["--shards", "0"][..],
        &["--shards", "300"],
        &["--max-connections", "0"],
        &["--frame-timeout-ms", "0"],
        &["--space-factor", "0.5"],
    ] {
        let output = std::process::Command::new(common::server_binary())
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{flags:?} was accepted");
        assert!(!data.exists(), "{flags:?} left {} behind", data.display());
    }
    // And the directory still starts a node afterwards.
    drop(start(&data, &[]));
}
