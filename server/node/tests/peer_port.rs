//! The peer port before a Hello is let in, against a real three-node cluster (`--shards 1`,
//! loopback): a connection that says nothing is closed at the deadline, one that sends more
//! than a Hello's worth of bytes is closed at once, handshakes in progress are bounded, and no
//! other socket can bind beside the port. Each time, the members' own links carry on.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{client_config, runtime, TestCluster};
use tessera_client::{Client, Level};
use tessera_schema::limits::{
    PEER_HELLO_DEADLINE_MS, PEER_PENDING_HANDSHAKES, PEER_PRE_HELLO_BYTES,
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

/// Strong writes need every replica: they commit only while the members' links are up.
fn assert_strong_writes_commit(cluster: &TestCluster, what: &str) {
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect_with(&cluster.addr_list(), client_config(Level::Strong))
            .await
            .unwrap();
        for i in 0..20 {
            let key = format!("after:{what}:{i}");
            client.put(key.as_bytes(), b"v").await.unwrap();
        }
    });
}

#[test]
fn a_peer_connection_that_never_says_hello_is_closed_at_the_deadline() {
    let _serial = serial();
    let cluster = TestCluster::start(3, &["--vnodes", "16"]);
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

#[test]
fn handshakes_in_progress_are_bounded_per_shard() {
    let _serial = serial();
    let cluster = TestCluster::start(3, &["--vnodes", "16"]);
    let held: Vec<TcpStream> = (0..PEER_PENDING_HANDSHAKES)
        .map(|_| TcpStream::connect(cluster.peer_addr(0)).unwrap())
        .collect();
    // The accepts are served in order: give the node a moment to take all of them.
    std::thread::sleep(Duration::from_millis(500));
    let one_more = TcpStream::connect(cluster.peer_addr(0)).unwrap();
    let tried = Instant::now();
    let closed = closed_after(one_more, tried, Duration::from_secs(2));
    assert!(
        closed.is_some(),
        "a connection past {PEER_PENDING_HANDSHAKES} pending handshakes was kept"
    );
    assert_strong_writes_commit(&cluster, "pending");
    drop(held);
}

#[test]
fn no_other_socket_binds_beside_a_peer_port() {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockType, SockaddrIn};
    let _serial = serial();
    let cluster = TestCluster::start(3, &["--vnodes", "16"]);
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
