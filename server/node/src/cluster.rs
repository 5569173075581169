//! A node's cluster: who the members are, its own id, the chain table, the cluster id.
//!
//! Members are given by `--peers`, the same client addresses on every node; a node's id is its
//! address's place in the sorted list, so every node numbers the members alike. The first
//! time a cluster starts, its nodes *form* it: each tells every other its shard count and zone
//! (a Hello with `forming` on shard 0's peer port, `PORT + 33`), so that every node plans the
//! same chains (weighted by shard count, zones kept apart), and the cluster id is the xxh3-64
//! of that description. Each node then records it in `cluster.meta`; a restart reads it and
//! needs nobody. A node asked to form with a different `--peers`, vnode count or replication
//! factor than another's refuses, naming the difference.
//!
//! Ports: a node uses `PORT` (clients, every shard), `PORT + 1 + i` (clients, shard i) and
//! `PORT + 33 + i` (peers, shard i): with at most 32 shards, nothing outside `PORT..=PORT + 64`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use tessera_core::placement::{plan, ChainTable, Member, NodeId};
use tessera_schema::frame::{FrameEvent, FrameReader};
use tessera_schema::msg::MemberInfo;

use crate::peer_wire::{decode_hello, encode_hello, Hello, HELLO};

/// Offset of shard 0's peer port from the client port.
pub const PEER_PORT_OFFSET: u16 = 33;
/// Most shards a node of a cluster may run (its ports stay within `PORT..=PORT + 64`).
pub const MAX_CLUSTER_SHARDS: u16 = 32;
const META_FILE: &str = "cluster.meta";

/// One member as the cluster records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMember {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub shards: u16,
    pub zone: String,
}

impl ClusterMember {
    /// The peer port of its shard `shard`.
    pub fn peer_addr(&self, shard: u16) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), self.addr.port() + PEER_PORT_OFFSET + shard)
    }
}

/// What every node of a cluster agrees on, and who this node is in it.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub id: u64,
    pub me: NodeId,
    pub members: Vec<ClusterMember>,
    pub vnodes: u32,
    pub replication_factor: usize,
    pub table: ChainTable,
    /// Formed in this run by all its members at once: every replica is empty, so heads need
    /// not ask their replicas before taking writes. False when any member answered as one
    /// that had formed before (this node may have lost its data) and on every restart.
    pub fresh: bool,
}

/// What this node brings to the cluster.
#[derive(Clone, Debug)]
pub struct Joining {
    pub peers: Vec<SocketAddr>,
    pub me: SocketAddr,
    pub shards: u16,
    pub zone: String,
    pub vnodes: u32,
    pub replication_factor: usize,
    /// Mutual TLS for the forming exchange, as on the peer ports (`tls.rs`).
    pub tls: Option<std::sync::Arc<crate::tls::PeerTls>>,
}

impl Joining {
    /// Sorted, deduplicated members; this node must be one of them.
    pub fn new(
        mut peers: Vec<SocketAddr>,
        me: SocketAddr,
        shards: u16,
        zone: String,
        vnodes: u32,
        replication_factor: usize,
    ) -> Result<Joining, String> {
        peers.sort();
        peers.dedup();
        if !peers.contains(&me) {
            return Err(format!(
                "--listen {me} is not in --peers ({}): every node lists every member, itself included",
                list(&peers)
            ));
        }
        if shards > MAX_CLUSTER_SHARDS {
            return Err(format!(
                "a node of a cluster runs at most {MAX_CLUSTER_SHARDS} shards (its ports stay within PORT..PORT+64), not {shards}"
            ));
        }
        Ok(Joining {
            peers,
            me,
            shards,
            zone,
            vnodes,
            replication_factor,
            tls: None,
        })
    }

    pub fn my_id(&self) -> NodeId {
        self.peers
            .iter()
            .position(|p| *p == self.me)
            .expect("checked") as NodeId
    }

    fn peers_digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(list(&self.peers).as_bytes())
    }

    fn hello(&self) -> Hello {
        Hello {
            from_node: self.my_id(),
            vnodes: self.vnodes,
            forming: true,
            shard_count: self.shards,
            zone: self.zone.clone(),
            replication_factor: self.replication_factor as u16,
            peers_digest: self.peers_digest(),
            ..Hello::default()
        }
    }
}

fn list(peers: &[SocketAddr]) -> String {
    peers
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Cluster {
    /// The cluster described by its members and settings: the plan, and the id that names it.
    fn from_members(
        members: Vec<ClusterMember>,
        me: NodeId,
        vnodes: u32,
        replication_factor: usize,
    ) -> Result<Cluster, String> {
        let planned: Vec<Member> = members
            .iter()
            .map(|m| Member {
                id: m.id,
                weight: u32::from(m.shards),
                zone: (!m.zone.is_empty()).then(|| m.zone.clone()),
            })
            .collect();
        let table = plan(&planned, vnodes, replication_factor).map_err(|e| e.to_string())?;
        let id =
            xxhash_rust::xxh3::xxh3_64(describe(&members, vnodes, replication_factor).as_bytes());
        Ok(Cluster {
            id: id.max(1),
            me,
            members,
            vnodes,
            replication_factor,
            table,
            fresh: false,
        })
    }

    pub fn member(&self, id: NodeId) -> &ClusterMember {
        &self.members[id as usize]
    }

    /// `member`'s shard for `vnode` (each node splits the vnodes into contiguous ranges).
    pub fn shard_of(&self, member: NodeId, vnode: u16) -> u16 {
        tessera_schema::placement::shard_of_vnode(vnode, self.member(member).shards, self.vnodes)
    }

    /// The members as TOPOLOGY describes them.
    pub fn member_infos(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .map(|m| MemberInfo {
                id: m.id,
                addr: m.addr.to_string(),
                shard_count: m.shards,
                zone: m.zone.clone(),
            })
            .collect()
    }

    /// Loads the cluster this data directory belongs to, or forms it with the other members.
    pub fn open_or_form(root: &Path, joining: &Joining) -> Result<Cluster, String> {
        if let Some(cluster) = read_meta(root, joining)? {
            return Ok(cluster);
        }
        let cluster = form(joining)?;
        write_meta(root, &cluster)?;
        tracing::info!(
            cluster_id = format_args!("{:016x}", cluster.id),
            members = cluster.members.len(),
            "formed the cluster"
        );
        Ok(cluster)
    }

    /// What a forming node is told by a node that belongs to this cluster already.
    pub fn hello_for_forming(&self, joining_digest_peers: &[SocketAddr]) -> Hello {
        let me = self.member(self.me);
        Hello {
            cluster_id: self.id,
            from_node: self.me,
            vnodes: self.vnodes,
            forming: true,
            shard_count: me.shards,
            zone: me.zone.clone(),
            replication_factor: self.replication_factor as u16,
            peers_digest: xxhash_rust::xxh3::xxh3_64(list(joining_digest_peers).as_bytes()),
            ..Hello::default()
        }
    }

    pub fn peer_addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.addr).collect()
    }
}

/// The canonical text of a cluster's description (its id is the hash of it).
fn describe(members: &[ClusterMember], vnodes: u32, replication_factor: usize) -> String {
    let mut text = format!("vnodes {vnodes}\nreplication_factor {replication_factor}\n");
    for m in members {
        let zone = if m.zone.is_empty() { "-" } else { &m.zone };
        text.push_str(&format!("node {} {} {} {zone}\n", m.id, m.addr, m.shards));
    }
    text
}

fn read_meta(root: &Path, joining: &Joining) -> Result<Option<Cluster>, String> {
    let path = root.join(META_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let bad = |why: &str| format!("{}: {why}", path.display());
    let mut lines = text.lines();
    if lines.next() != Some("tessera-cluster 1") {
        return Err(bad("not a tessera cluster.meta file"));
    }
    let mut vnodes = None;
    let mut replication_factor = None;
    let mut members = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["vnodes", n] => vnodes = n.parse().ok(),
            ["replication_factor", n] => replication_factor = n.parse().ok(),
            ["node", id, addr, shards, zone] => members.push(ClusterMember {
                id: id.parse().map_err(|_| bad("bad node id"))?,
                addr: addr.parse().map_err(|_| bad("bad node address"))?,
                shards: shards.parse().map_err(|_| bad("bad shard count"))?,
                zone: if *zone == "-" {
                    String::new()
                } else {
                    zone.to_string()
                },
            }),
            ["cluster_id", _] | [] => {}
            _ => return Err(bad(&format!("unknown line {line:?}"))),
        }
    }
    let (Some(vnodes), Some(replication_factor)) = (vnodes, replication_factor) else {
        return Err(bad("missing vnodes or replication_factor"));
    };
    let recorded: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    if recorded != joining.peers {
        return Err(format!(
            "{} belongs to a cluster of {}; --peers says {} (membership changes are not supported yet)",
            root.display(),
            list(&recorded),
            list(&joining.peers)
        ));
    }
    if vnodes != joining.vnodes || replication_factor != joining.replication_factor {
        return Err(format!(
            "{} belongs to a cluster of {vnodes} vnodes and replication factor {replication_factor}; the flags ask for {} and {}",
            root.display(),
            joining.vnodes,
            joining.replication_factor
        ));
    }
    Cluster::from_members(members, joining.my_id(), vnodes, replication_factor).map(Some)
}

fn write_meta(root: &Path, cluster: &Cluster) -> Result<(), String> {
    let path = root.join(META_FILE);
    let temp = root.join("cluster.meta.tmp");
    let text = format!(
        "tessera-cluster 1\ncluster_id {:016x}\n{}",
        cluster.id,
        describe(&cluster.members, cluster.vnodes, cluster.replication_factor)
    );
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(root)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Exchanges Hellos with every other member until each one's shard count and zone are known.
fn form(joining: &Joining) -> Result<Cluster, String> {
    let me = joining.my_id();
    let listener_addr = SocketAddr::new(joining.me.ip(), joining.me.port() + PEER_PORT_OFFSET);
    let listener = reusable_listener(listener_addr)
        .map_err(|e| format!("cannot listen on {listener_addr} to form the cluster: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot set up {listener_addr}: {e}"))?;
    let mut known: BTreeMap<NodeId, Hello> = BTreeMap::new();
    known.insert(me, joining.hello());
    let mut last_note = Instant::now();
    while known.len() < joining.peers.len() {
        // Answer whoever dials us.
        while let Ok((stream, _)) = listener.accept() {
            match exchange(stream, joining, None) {
                Ok(hello) => record(&mut known, hello, joining)?,
                Err(why) if why.starts_with(REFUSED) => {
                    tracing::warn!("forming the cluster: {why}")
                }
                Err(_) => {}
            }
        }
        for (id, peer) in joining.peers.iter().enumerate() {
            let id = id as NodeId;
            if known.contains_key(&id) {
                continue;
            }
            let addr = SocketAddr::new(peer.ip(), peer.port() + PEER_PORT_OFFSET);
            if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                if let Ok(hello) = exchange(stream, joining, Some(peer.ip())) {
                    record(&mut known, hello, joining)?;
                }
            }
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            let missing: Vec<String> = (0..joining.peers.len() as NodeId)
                .filter(|id| !known.contains_key(id))
                .map(|id| joining.peers[id as usize].to_string())
                .collect();
            tracing::info!("forming the cluster: waiting for {}", missing.join(", "));
            last_note = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let fresh = known.values().all(|hello| hello.cluster_id == 0);
    let members = known
        .into_iter()
        .map(|(id, hello)| ClusterMember {
            id,
            addr: joining.peers[id as usize],
            shards: hello.shard_count,
            zone: hello.zone,
        })
        .collect();
    let cluster = Cluster::from_members(members, me, joining.vnodes, joining.replication_factor)?;
    Ok(Cluster { fresh, ..cluster })
}

/// A listener that binds the way the shards' listeners do (SO_REUSEADDR and SO_REUSEPORT), so
/// that connections of an earlier run still in TIME_WAIT on the port do not stop it.
fn reusable_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
        SockaddrStorage,
    };
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    use std::os::fd::AsRawFd;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, 64)?;
    Ok(TcpListener::from(fd))
}

/// Checks what another member said against what this node was told.
fn record(
    known: &mut BTreeMap<NodeId, Hello>,
    hello: Hello,
    joining: &Joining,
) -> Result<(), String> {
    let from = joining
        .peers
        .get(hello.from_node as usize)
        .map_or("?".to_string(), |a| a.to_string());
    if hello.peers_digest != joining.peers_digest() {
        return Err(format!(
            "member {from} was started with a different --peers list: every node must list the same members"
        ));
    }
    if hello.vnodes != joining.vnodes
        || usize::from(hello.replication_factor) != joining.replication_factor
    {
        return Err(format!(
            "member {from} runs with {} vnodes and replication factor {}, this node with {} and {}",
            hello.vnodes, hello.replication_factor, joining.vnodes, joining.replication_factor
        ));
    }
    known.insert(hello.from_node, hello);
    Ok(())
}

/// How `exchange` begins an error an operator must see: a certificate refused either way.
/// Others (a member that went away, the race of two members dialing each other) are routine.
const REFUSED: &str = "refused: ";

fn io_error(e: std::io::Error) -> String {
    match crate::tls::refused_peer(&e) {
        true => format!("{REFUSED}TLS: {e}"),
        false => e.to_string(),
    }
}

/// One Hello each way on a fresh connection (dialed to the member at `dialed`, or accepted),
/// over TLS when the peer ports use it; returns the other's.
fn exchange(stream: TcpStream, joining: &Joining, dialed: Option<IpAddr>) -> Result<Hello, String> {
    let io = |e: std::io::Error| e.to_string();
    stream.set_nonblocking(false).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io)?;
    let Some(tls) = &joining.tls else {
        return exchange_over(stream, joining, dialed.is_some());
    };
    let bad = |e: rustls::Error| format!("TLS: {e}");
    match dialed {
        Some(ip) => {
            let name = crate::tls::PeerTls::member_name(ip);
            let connection = rustls::ClientConnection::new(tls.client(), name).map_err(bad)?;
            exchange_over(rustls::StreamOwned::new(connection, stream), joining, true)
        }
        None => {
            let connection = rustls::ServerConnection::new(tls.server()).map_err(bad)?;
            let mut stream = rustls::StreamOwned::new(connection, stream);
            let hello = exchange_over(&mut stream, joining, false)?;
            let member = joining
                .peers
                .get(hello.from_node as usize)
                .ok_or_else(|| format!("a Hello from no member ({})", hello.from_node))?;
            let cert = stream
                .conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .ok_or("no peer certificate")?;
            crate::tls::names_member(cert, member.ip()).map_err(|why| format!("{REFUSED}{why}"))?;
            Ok(hello)
        }
    }
}

fn exchange_over<S: Read + Write>(
    mut stream: S,
    joining: &Joining,
    dialed: bool,
) -> Result<Hello, String> {
    let io = io_error;
    let mut frame = Vec::new();
    encode_hello(&mut frame, &joining.hello());
    if dialed {
        stream.write_all(&frame).map_err(io)?;
        stream.flush().map_err(io)?;
    }
    let hello = read_hello(&mut stream)?;
    if !hello.forming {
        // A member that formed already dialing to link its replicas: it will dial again once
        // this node serves, and this node learns about it by dialing it.
        return Err("not a forming Hello".into());
    }
    if !dialed {
        stream.write_all(&frame).map_err(io)?;
        stream.flush().map_err(io)?;
        // Let the dialer close first: the side that closes first keeps the port in TIME_WAIT,
        // and this one is the peer port the shard is about to listen on.
        let mut rest = [0u8; 64];
        while stream.read(&mut rest).is_ok_and(|n| n > 0) {}
    }
    Ok(hello)
}

/// Reads one Hello frame (blocking, with the stream's timeout).
pub fn read_hello(stream: &mut impl Read) -> Result<Hello, String> {
    let mut reader = FrameReader::new();
    let mut buffer = [0u8; 4096];
    loop {
        match reader.next_event() {
            Ok(Some(FrameEvent::Frame { header, body })) if header.opcode == HELLO => {
                return decode_hello(body)
            }
            Ok(Some(_)) => return Err("expected a Hello".into()),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = stream.read(&mut buffer).map_err(io_error)?;
        if n == 0 {
            return Err("closed".into());
        }
        reader.feed(&buffer[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u16) -> Vec<ClusterMember> {
        (0..n)
            .map(|i| ClusterMember {
                id: u32::from(i),
                addr: format!("127.0.0.1:{}", 7000 + i * 100).parse().unwrap(),
                shards: 1 + i % 2,
                zone: String::new(),
            })
            .collect()
    }

    #[test]
    fn every_node_plans_the_same_cluster_and_the_id_names_it() {
        let a = Cluster::from_members(members(3), 0, 64, 3).unwrap();
        let b = Cluster::from_members(members(3), 2, 64, 3).unwrap();
        assert_eq!((a.id, &a.table), (b.id, &b.table));
        let other = Cluster::from_members(members(4), 0, 64, 3).unwrap();
        assert_ne!(a.id, other.id, "another cluster has another id");
        // A member's vnodes split into contiguous ranges over its shards.
        assert_eq!(a.shard_of(1, 0), 0);
        assert_eq!(a.shard_of(1, 63), 1);
    }

    #[test]
    fn the_meta_file_keeps_the_cluster_and_refuses_other_flags() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::from_members(members(3), 1, 64, 3).unwrap();
        write_meta(dir.path(), &cluster).unwrap();
        let peers: Vec<SocketAddr> = cluster.members.iter().map(|m| m.addr).collect();
        let joining = Joining::new(peers.clone(), peers[1], 2, String::new(), 64, 3).unwrap();
        let read = read_meta(dir.path(), &joining).unwrap().unwrap();
        assert_eq!(
            (read.id, read.me, read.table),
            (cluster.id, 1, cluster.table)
        );
        let wider = Joining::new(peers.clone(), peers[1], 2, String::new(), 64, 2).unwrap();
        assert!(read_meta(dir.path(), &wider).is_err());
        let fewer = Joining::new(peers[..2].to_vec(), peers[1], 2, String::new(), 64, 3).unwrap();
        assert!(read_meta(dir.path(), &fewer)
            .unwrap_err()
            .contains("--peers"));
        assert!(Joining::new(
            peers.clone(),
            "127.0.0.1:1".parse().unwrap(),
            1,
            String::new(),
            64,
            3
        )
        .is_err());
    }
}
