//! Impostors on plain-TCP peer ports, against real three-node clusters (`--shards 1`). What an
//! outsider did before the peer ports were secured, each tried again:
//! - from an address that is not the member's (nodes in network namespaces, the test outside
//!   them): a Hello as a member, followed by forged writes, acks, an empty final State and a
//!   PullState, is refused at the Hello, and a Hello every 100 ms does not cut the member's link;
//! - from the member's own address (a cluster on loopback, where only TLS tells members apart,
//!   so the test poses as a stopped member): the node lets it in as that member but takes
//!   nothing that member's place in the chain does not allow.
//!
//! The same attempts over mutual TLS are in `peer_tls.rs`.

mod common;
#[path = "common/hello.rs"]
mod hello;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use common::{assert_strong_writes_commit, cli_verify, client_config, runtime, TestCluster};
use hello::{hello_frame, impostor_bytes};
use tessera_client::{Client, Level};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the node closed `stream` within `wait` (what it sent before is skipped).
fn closed_within(mut stream: TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// A Hello as `member`, then forged batches for the vnode of `key`, on one connection.
fn pose_as(peer: SocketAddr, client: &Client, member: u32, key: &[u8]) -> TcpStream {
    let routing = client.topology();
    let vnode = routing.vnode_of(key);
    let epoch = routing.topology().chain_epochs[usize::from(vnode)];
    let bytes = impostor_bytes(routing.cluster_id(), member, vnode, epoch, key);
    let mut stream = TcpStream::connect(peer).unwrap();
    // The node may close it part way through: what matters is what it took.
    let _ = stream.write_all(&bytes);
    stream
}

fn connect(cluster: &TestCluster, rt: &tokio::runtime::Runtime) -> Client {
    rt.block_on(Client::connect_with(
        &cluster.addr_list(),
        client_config(Level::Strong),
    ))
    .unwrap()
}

/// Every key in `keys` reads back "real" at `strong`, and every replica holds the same.
fn assert_untouched(
    cluster: &TestCluster,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    keys: &[String],
) {
    for key in keys {
        let got = rt.block_on(client.get(key.as_bytes())).unwrap();
        assert_eq!(got.map(|g| g.0).as_deref(), Some(&b"real"[..]), "{key}");
    }
    let (agree, text) = cli_verify(cluster);
    assert!(agree, "replicas differ:\n{text}");
}

fn write_real(rt: &tokio::runtime::Runtime, client: &Client, keys: &[String]) {
    rt.block_on(async {
        for key in keys {
            client.put(key.as_bytes(), b"real").await.unwrap();
        }
    });
}

#[test]
fn a_hello_as_a_member_from_another_address_is_refused_on_plain_peer_ports() {
    let _serial = serial();
    let cluster = TestCluster::start_in_namespaces(3, &["--vnodes", "16", "--insecure"]);
    let rt = runtime();
    let client = connect(&cluster, &rt);
    let keys: Vec<String> = (0..32).map(|i| format!("victim:{i}")).collect();
    write_real(&rt, &client, &keys);
    let peer = cluster.peer_addr(0);
    for member in [1, 2] {
        for key in &keys[..4] {
            let stream = pose_as(peer, &client, member, key.as_bytes());
            assert!(
                closed_within(stream, Duration::from_secs(8)),
                "a Hello as member {member} from the test's address was let in"
            );
        }
    }
    // A Hello every 100 ms as member 1 cut strong writes to a few dozen a second when it
    // replaced the member's link; refused, it leaves the link alone and every write commits.
    let id = client.topology().cluster_id();
    let flood = std::thread::spawn(move || {
        (0..30)
            .filter(|_| {
                std::thread::sleep(Duration::from_millis(100));
                let mut stream = TcpStream::connect(peer).unwrap();
                let _ = stream.write_all(&hello_frame(id, 1));
                !closed_within(stream, Duration::from_secs(8))
            })
            .count()
    });
    rt.block_on(async {
        for i in 0..200 {
            let key = format!("during-flood:{i}");
            client.put(key.as_bytes(), b"v").await.unwrap();
        }
    });
    assert_eq!(flood.join().unwrap(), 0, "some Hellos were let in");
    assert_strong_writes_commit(&cluster, "after-impostors");
    assert_untouched(&cluster, &rt, &client, &keys);
}

/// A member is let in as itself (here an impostor on loopback, where only TLS could tell), but
/// for a vnode whose chain has node 0 at its head and that member at its tail, the node takes
/// no write (node 0 has no predecessor), no ack (the member is not its successor), no state
/// and no state request (only the head asks) from it.
#[test]
fn a_member_cannot_write_ack_or_replace_state_outside_its_place_in_the_chain() {
    let _serial = serial();
    let mut cluster = TestCluster::start(3, &["--vnodes", "16"]);
    let rt = runtime();
    let client = connect(&cluster, &rt);
    let routing = client.topology();
    let vnode = (0..16u16)
        .find(|&v| routing.replicas(v)[0] == 0)
        .expect("node 0 heads some vnode");
    let tail = routing.replicas(vnode)[2];
    let keys: Vec<String> = (0..)
        .map(|i| format!("victim:{i}"))
        .filter(|k| routing.vnode_of(k.as_bytes()) == vnode)
        .take(8)
        .collect();
    write_real(&rt, &client, &keys);
    cluster.kill9(tail);
    let stream = pose_as(
        cluster.peer_addr(0),
        &client,
        tail as u32,
        keys[0].as_bytes(),
    );
    // Handled and dropped one by one: the member's connection stays.
    assert!(
        !closed_within(stream, Duration::from_secs(2)),
        "the node closed a member's connection"
    );
    cluster.restart(tail);
    assert_strong_writes_commit(&cluster, "after-impostor");
    assert_untouched(&cluster, &rt, &client, &keys);
}
