//! The peer port before a Hello is let in, against a real three-node cluster (`--shards 1`,
//! loopback): a connection that says nothing is closed at the deadline, one that sends more
//! than a Hello's worth of bytes is closed at once, handshakes in progress are bounded, and no
//! other socket can bind beside the port; and a batch whose entries share offsets (small on
//! the wire, gigabytes once decoded) is refused before it is decoded. After the Hello: a frame
//! that stalls part way is closed at its deadline, a frame past the shard's peer budget is not
//! read and is closed at its deadline, and a PullState sent 400 000 times makes one waiting
//! transfer per vnode. Each time, the members' own links carry on (those the test stopped to
//! pose as them, once restarted).

mod common;
#[path = "common/hello.rs"]
mod hello;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{assert_strong_writes_commit, cluster_id, rss_bytes, wait_for_metric, TestCluster};
use hello::hello_frame;
use tessera_schema::limits::{
    MAX_FRAME_BODY_BYTES, PEER_FRAME_DEADLINE_MS, PEER_HELLO_DEADLINE_MS, PEER_PENDING_HANDSHAKES,
    PEER_PENDING_HANDSHAKES_PER_ADDRESS, PEER_PRE_HELLO_BYTES,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long after `since` the node closed `stream`; `None` if it was still open `wait` later.
fn closed_after(mut stream: TcpStream, since: Instant, wait: Duration) -> Option<Duration> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(since.elapsed())
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn a_peer_connection_that_never_says_hello_is_closed_at_the_deadline() {
    let _serial = serial();
    let cluster = TestCluster::start(3, &["--vnodes", "16"]);
    // Every link up first: what follows must not stand between members that are linked.
    assert_strong_writes_commit(&cluster, "before");
    let opened = Instant::now();
    let silent = TcpStream::connect(cluster.peer_addr(0)).unwrap();
    let mut trickle = TcpStream::connect(cluster.peer_addr(0)).unwrap();
    // A Hello's frame a byte a second keeps no connection past the deadline either.
    let mut hello = Vec::new();
    tessera_schema::frame::encode_frame(&mut hello, 0x40, 0, &[0u8; 100]);
    let trickled = std::thread::spawn(move || {
        for byte in hello
            .iter()
            .take((PEER_HELLO_DEADLINE_MS / 1000 + 5) as usize)
        {
            if trickle.write_all(&[*byte]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        false
    });
    let wait = Duration::from_millis(PEER_HELLO_DEADLINE_MS) * 3;
    let closed = closed_after(silent, opened, wait).expect("a silent connection stays open");
    eprintln!("a silent peer connection was closed {closed:?} after it opened");
    assert!(closed >= Duration::from_millis(PEER_HELLO_DEADLINE_MS - 100));
    assert!(
        trickled.join().unwrap(),
        "a trickling connection stayed open"
    );
    assert_strong_writes_commit(&cluster, "silent");
}

#[test]
fn a_peer_connection_sending_more_than_a_hello_without_one_is_closed() {
    let _serial = serial();
    let cluster = TestCluster::start(3, &["--vnodes", "16"]);
    // Every link up first: what follows must not stand between members that are linked.
    assert_strong_writes_commit(&cluster, "before");
    let mut stream = TcpStream::connect(cluster.peer_addr(0)).unwrap();
    // A Hello's frame header announcing 16 MiB, then its start: before the bound the node
    // buffered all of it for a connection that had not said who it was.
    let mut frame = Vec::new();
    tessera_schema::frame::encode_frame(&mut frame, 0x40, 0, &vec![0u8; 16 << 20]);
    let sent = Instant::now();
    let _ = stream.write_all(&frame[..PEER_PRE_HELLO_BYTES * 4]);
    let closed = closed_after(stream, sent, Duration::from_secs(2));
    assert!(
        closed.is_some(),
        "the node kept reading past a Hello's worth of bytes"
    );
    assert_strong_writes_commit(&cluster, "oversized");
}

/// A connection to `to` from loopback address `source` (any 127.x.y.z is this machine's).
fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(to) = to else {
        unreachable!("loopback v4")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    let from = std::net::SocketAddrV4::new(source.into(), 0);
    bind(fd.as_raw_fd(), &SockaddrIn::from(from)).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}

/// How many of `streams` the node closed (checked without waiting long).
fn closed_now(streams: &[TcpStream]) -> usize {
    streams
        .iter()
        .filter(|stream| {
            stream
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let mut byte = [0u8; 1];
            match (&**stream).read(&mut byte) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .count()
}

#[test]
fn handshakes_in_progress_are_bounded_per_shard_and_per_address() {
    let _serial = serial();
    let cluster = TestCluster::start(3, &["--vnodes", "16"]);
    // Every link up first: what follows must not stand between members that are linked.
    assert_strong_writes_commit(&cluster, "before");
    let peer = cluster.peer_addr(0);
    // One more than the bound from one address, none saying Hello: whichever the node accepts
    // last is closed at once (well before the Hello deadline), the others are kept; and
    // another address still gets a slot.
    let opened = Instant::now();
    let one_source: Vec<TcpStream> = (0..=PEER_PENDING_HANDSHAKES_PER_ADDRESS)
        .map(|_| connect_from([127, 0, 0, 2], peer))
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(closed_now(&one_source), 1, "per address");
    let other = vec![connect_from([127, 0, 0, 3], peer)];
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(closed_now(&other), 0, "another address was refused");
    drop((one_source, other));
    std::thread::sleep(Duration::from_millis(300));
    // One more than the shard's bound, spread over addresses under their own bound.
    let spread: Vec<TcpStream> = (0..=PEER_PENDING_HANDSHAKES)
        .map(|i| connect_from([127, 0, 1, (i % 16) as u8 + 2], peer))
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let closed = closed_now(&spread);
    assert!(
        opened.elapsed() < Duration::from_millis(PEER_HELLO_DEADLINE_MS),
        "too slow to tell the bounds from the deadline"
    );
    assert_eq!(
        closed,
        1,
        "{closed} of {} connections without a Hello were closed before the deadline",
        PEER_PENDING_HANDSHAKES + 1
    );
    assert_strong_writes_commit(&cluster, "pending");
    drop(spread);
}

#[test]
fn no_other_socket_binds_beside_a_peer_port() {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockType, SockaddrIn};
    let _serial = serial();
    let cluster = TestCluster::start(3, &["--vnodes", "16"]);
    // Every link up first: what follows must not stand between members that are linked.
    assert_strong_writes_commit(&cluster, "before");
    let SocketAddr::V4(peer) = cluster.peer_addr(0) else {
        unreachable!("loopback v4")
    };
    let socket = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    setsockopt(&socket, sockopt::ReusePort, &true).unwrap();
    setsockopt(&socket, sockopt::ReuseAddr, &true).unwrap();
    let bound = bind(
        std::os::fd::AsRawFd::as_raw_fd(&socket),
        &SockaddrIn::from(peer),
    );
    assert_eq!(
        bound,
        Err(nix::errno::Errno::EADDRINUSE),
        "a socket with SO_REUSEPORT bound beside member 0's peer port"
    );
    assert_strong_writes_commit(&cluster, "bind");
}

/// A replication batch of 1.5 GiB once decoded (1 500 entries naming one 1 MiB value), sent
/// as member 1 after a plain Hello: the node closes the connection without decoding it (its
/// RSS does not grow by the batch), and the cluster goes on. Before the bound, one such
/// 1.09 MiB batch decoded to ~1.5 GiB.
#[test]
fn a_batch_that_would_decode_to_gigabytes_is_refused_before_decoding() {
    let _serial = serial();
    let mut cluster = TestCluster::start(3, &["--vnodes", "16"]);
    assert_strong_writes_commit(&cluster, "before");
    let id = cluster_id(&cluster);
    let pid = cluster.node(0).pid();
    let before = rss_bytes(pid);
    let mut stream = TcpStream::connect(cluster.peer_addr(0)).unwrap();
    stream.write_all(&hello_frame(id, 1)).unwrap();
    let mut frame = Vec::new();
    tessera_schema::frame::encode_frame(&mut frame, 0x41, 0, &shared_offsets_batch(1500));
    let sent = Instant::now();
    let _ = stream.write_all(&frame);
    let closed = closed_after(stream, sent, Duration::from_secs(10));
    assert!(
        closed.is_some(),
        "the node kept a connection that sent such a batch"
    );
    let grew = rss_bytes(pid).saturating_sub(before);
    eprintln!("node 0's RSS grew by {} KiB", grew / 1024);
    assert!(grew < 256 << 20, "node 0's RSS grew by {grew} bytes");
    assert_strong_writes_commit(&cluster, "after-batch");
}

fn shared_offsets_batch(count: usize) -> Vec<u8> {
    use tessera_schema::peer_fb as pb;
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let key = builder.create_vector(b"k");
    let value = builder.create_vector(&vec![7u8; 1 << 20]);
    let args = pb::EntryArgs {
        seq: 1,
        version: 1,
        key: Some(key),
        value: Some(value),
        ..pb::EntryArgs::default()
    };
    let entry = pb::Entry::create(&mut builder, &args);
    let entries = builder.create_vector(&vec![entry; count]);
    let args = pb::AppendArgs {
        entries: Some(entries),
        ..pb::AppendArgs::default()
    };
    let append = pb::Append::create(&mut builder, &args);
    let args = pb::PeerMsgArgs {
        vnode: 0,
        epoch: 1,
        body_type: pb::Body::Append,
        body: Some(append.as_union_value()),
    };
    let msg = pb::PeerMsg::create(&mut builder, &args);
    let messages = builder.create_vector(&[msg]);
    let args = pb::PeerBatchArgs {
        messages: Some(messages),
    };
    let root = pb::PeerBatch::create(&mut builder, &args);
    builder.finish(root, None);
    builder.finished_data().to_vec()
}

/// A let-in connection as member `member` (which the test stopped, so that it does not dial
/// again and replace it) that sends the header of a frame of `body_bytes` and all its body
/// but the last `missing_bytes`.
fn partial_frame_as(
    cluster: &TestCluster,
    member: u32,
    body_bytes: usize,
    missing_bytes: usize,
) -> std::thread::JoinHandle<TcpStream> {
    let mut stream = TcpStream::connect(cluster.peer_addr(0)).unwrap();
    stream
        .write_all(&hello_frame(cluster_id(cluster), member))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    std::thread::spawn(move || {
        let mut frame = Vec::new();
        tessera_schema::frame::encode_frame(&mut frame, 0x41, 0, &vec![0u8; body_bytes]);
        let _ = stream.write_all(&frame[..frame.len() - missing_bytes]);
        stream
    })
}

#[test]
fn a_let_in_connection_that_stalls_mid_frame_is_closed_at_the_frame_deadline() {
    let _serial = serial();
    let mut cluster = TestCluster::start(3, &["--vnodes", "16", "--metrics-listen", "127.0.0.1:0"]);
    assert_strong_writes_commit(&cluster, "before");
    cluster.kill9(1);
    let sent = Instant::now();
    let stream = partial_frame_as(&cluster, 1, 100 * 1024, 99 * 1024)
        .join()
        .unwrap();
    let wait = Duration::from_millis(PEER_FRAME_DEADLINE_MS * 3);
    let closed = closed_after(stream, sent, wait).expect("a stalled frame kept its connection");
    eprintln!("a stalled frame's connection was closed {closed:?} after it began");
    assert!(closed >= Duration::from_millis(PEER_FRAME_DEADLINE_MS - 100));
    let counted = wait_for_metric(
        cluster.node(0).metrics_addr(),
        "tessera_peer_refused_total",
        "reason=\"frame_deadline\"",
        1.0,
    );
    assert!(counted >= 1.0, "the closing was not counted");
    cluster.restart(1);
    assert_strong_writes_commit(&cluster, "after-stalled-frame");
}

/// With `--peer-buffer-per-shard 17MiB`, a 16 MiB frame held part way in leaves no room for
/// an 8 MiB one from another connection: that one is not read, and is closed with `memory`
/// at its deadline (5 s plus 8 s), before the first one's (5 s plus 16 s).
#[test]
fn frames_past_the_shard_peer_budget_wait_and_are_closed_at_their_deadline() {
    let _serial = serial();
    let flags = [
        "--vnodes",
        "16",
        "--metrics-listen",
        "127.0.0.1:0",
        "--peer-buffer-per-shard",
        "17MiB",
    ];
    let mut cluster = TestCluster::start(3, &flags);
    assert_strong_writes_commit(&cluster, "before");
    cluster.kill9(1);
    cluster.kill9(2);
    let pid = cluster.node(0).pid();
    let before = rss_bytes(pid);
    let large = partial_frame_as(&cluster, 1, MAX_FRAME_BODY_BYTES, 1);
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let waiting = partial_frame_as(&cluster, 2, 8 << 20, 1);
    std::thread::sleep(Duration::from_secs(3));
    let grew = rss_bytes(pid).saturating_sub(before);
    eprintln!("node 0's resident set grew by {} MiB", grew >> 20);
    assert!(
        grew < 22 << 20,
        "the frame past the budget was read: {grew} bytes"
    );
    let waiting = waiting.join().unwrap();
    let closed = closed_after(waiting, sent, Duration::from_secs(30)).expect("never closed");
    eprintln!("the frame past the budget was closed after {closed:?}");
    assert!(closed >= Duration::from_millis(PEER_FRAME_DEADLINE_MS + 7_900));
    let metrics = cluster.node(0).metrics_addr();
    let refused = wait_for_metric(
        metrics,
        "tessera_peer_refused_total",
        "reason=\"memory\"",
        1.0,
    );
    assert!(refused >= 1.0, "the refusal was not counted");
    drop(large.join().unwrap());
    cluster.restart(1);
    cluster.restart(2);
    assert_strong_writes_commit(&cluster, "after-budget");
}

/// A batch of `count` PullStates (a restarted head asking for a replica's state), spread over
/// vnodes 0..16 at epoch 1.
fn pull_states_batch(count: usize) -> Vec<u8> {
    use tessera_schema::peer_fb as pb;
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let messages: Vec<_> = (0..count)
        .map(|i| {
            let since = pb::Position::new(0, 0);
            let pull = pb::PullState::create(
                &mut builder,
                &pb::PullStateArgs {
                    since: Some(&since),
                },
            );
            let args = pb::PeerMsgArgs {
                vnode: (i % 16) as u16,
                epoch: 1,
                body_type: pb::Body::PullState,
                body: Some(pull.as_union_value()),
            };
            pb::PeerMsg::create(&mut builder, &args)
        })
        .collect();
    let messages = builder.create_vector(&messages);
    let args = pb::PeerBatchArgs {
        messages: Some(messages),
    };
    let root = pb::PeerBatch::create(&mut builder, &args);
    builder.finish(root, None);
    builder.finished_data().to_vec()
}

/// A member (here an impostor on plain TCP) asking for the same state transfers again and
/// again: each request only updates the transfer already waiting, so 400 000 of them leave
/// the node's memory where it was (before, each started a task of its own).
#[test]
fn repeated_pull_states_make_one_waiting_transfer_each() {
    let _serial = serial();
    let mut cluster = TestCluster::start(3, &["--vnodes", "16"]);
    assert_strong_writes_commit(&cluster, "before");
    cluster.kill9(1);
    let pid = cluster.node(0).pid();
    let before = rss_bytes(pid);
    let mut stream = TcpStream::connect(cluster.peer_addr(0)).unwrap();
    stream
        .write_all(&hello_frame(cluster_id(&cluster), 1))
        .unwrap();
    let mut frame = Vec::new();
    tessera_schema::frame::encode_frame(&mut frame, 0x41, 0, &pull_states_batch(20_000));
    for _ in 0..20 {
        stream.write_all(&frame).unwrap();
    }
    // Time to handle the frames (400 000 messages take well under a second).
    std::thread::sleep(Duration::from_secs(2));
    let grew = rss_bytes(pid).saturating_sub(before);
    eprintln!("node 0's resident set grew by {} MiB", grew >> 20);
    assert!(
        grew < 64 << 20,
        "node 0's resident set grew by {grew} bytes"
    );
    drop(stream);
    cluster.restart(1);
    assert_strong_writes_commit(&cluster, "after-pulls");
}
