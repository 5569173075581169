//! A shard's part in its cluster: it pumps the replication core (`tessera-core`) and carries
//! its messages over peer connections.
//!
//! Links: for every other member, the shard dials the member's shards that hold vnodes it
//! shares with it (each on its peer port, `PORT + 33 + shard`), opens each connection with a
//! Hello (cluster id, its node and shard), and then only writes batches of messages on it;
//! the member's answers come on the connections it dials here. The link to a member is up
//! when every connection to it and every connection from it is (the core's requests, a probe
//! or a pull, expect their answer on the other direction); when one breaks, the link goes down
//! (the core resends or transfers what was lost) and the shard dials again, backing off up to a
//! second. A member that dials again while its earlier connection still looks open here has
//! reset its side: this side resets too, so both agree on what may have been lost.
//!
//! Memory and flow control: the core counts what it hands to each link and pauses its streams
//! there past `PEER_OUTBOX_BYTES` until the writers report the bytes written
//! (`Replicator::handle_outbox`); its retention queues are bounded too, so a member that reads
//! slowly makes this node's writes OVERLOADED rather than its memory grow. What incoming
//! connections may hold is bounded in `peer_inbound.rs`.
//!
//! Liveness: every connection carries a frame at least every `HEARTBEAT` (an empty batch when
//! there is nothing to say). A member this shard has heard nothing from for `PEER_SILENCE`, or
//! that has written none of what waits for it for that long, has its link dropped (a stopped
//! process: its kernel still takes connections and bytes): it counts as down, its retention
//! queues give way, and `eventual` writes go on. This is not failure detection for the
//! cluster (the next step's control plane does that); it only keeps one shard from waiting
//! on a member that does not answer. A shard that was itself paused (its clock jumped) starts
//! counting again rather than blaming its members.
//!
//! The pump: after any input to the core (a message, a write, a durability change, a tick),
//! `pump` takes its effects: messages go to the outboxes, state reads start a transfer task,
//! finished writes wake their requests; then durability and commit changes of the store are fed
//! back, and waiting readers woken.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use tessera_core::placement::NodeId;
use tessera_core::replication::{Effect, PeerMsg, Replicator, Ticket, WriteFailure};

use crate::cluster::Cluster;
use crate::peer_stream::{self, PeerStream};
use crate::peer_wire::{self, encode_batch, encode_hello, Hello};
use crate::shard::{mono_ms, now, Shard};
use crate::tls::PeerTls;

/// Bytes handed to one member's connections and not yet written, past which streams pause.
pub const PEER_OUTBOX_BYTES: usize = 8 << 20;
/// How long a member may send nothing, or read none of what waits for it, before its link is
/// dropped.
const PEER_SILENCE: Duration = Duration::from_secs(6);
/// Each connection carries a frame at least this often.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Bytes of messages per frame.
const PEER_BATCH_BYTES: usize = 1 << 20;
/// How often the core's clock ticks (write deadlines).
const TICK: Duration = Duration::from_millis(50);
/// The longest a dialer waits between attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long a dial may take to connect and to write its Hello. Without it a dial to a member
/// behind a partition waits for the kernel's SYN retries (seconds apart, growing), and one
/// whose Hello meets a member that does not read waits until it does: links came back 12 s
/// and more after a long cut healed. With it, a member is dialed again within a second of
/// becoming reachable.
const DIAL_TIMEOUT: Duration = Duration::from_millis(500);

/// One connection to a member's shard.
#[derive(Default)]
struct Dial {
    /// Frames for the connection's writer; `None` while it is not connected.
    frames: Option<LocalSender<Vec<u8>>>,
    /// Bytes handed to the writer and not yet written.
    unwritten: Rc<Cell<usize>>,
    /// When the writer last finished a frame, or was handed one while idle (`mono_ms`).
    progress_ms: Rc<Cell<u64>>,
    /// When a frame was last handed to the writer (`mono_ms`).
    sent_ms: u64,
}

/// The link to one member: a connection to each of its shards this shard talks to.
#[derive(Default)]
struct Link {
    dials: BTreeMap<u16, Dial>,
    /// Messages waiting for the next flush, per remote shard.
    pending: BTreeMap<u16, Vec<PeerMsg>>,
    /// Connections from the member, by its shard: the id of the current one.
    inbound: BTreeMap<u16, u64>,
    up: bool,
    /// Bumped when the link goes down: dialers of an older generation reconnect.
    generation: u64,
    /// When a frame last came from the member, or the link came up (`mono_ms`).
    heard_ms: u64,
}

impl Dial {
    /// Hands frames to the connection's writer (dropped when it is not connected).
    fn hand(&mut self, frames: Vec<Vec<u8>>, now_ms: u64) {
        let Some(writer) = &self.frames else {
            return;
        };
        if self.unwritten.get() == 0 {
            self.progress_ms.set(now_ms);
        }
        self.sent_ms = now_ms;
        for frame in frames {
            self.unwritten.set(self.unwritten.get() + frame.len());
            let _ = writer.try_send(frame);
        }
    }

    fn clone_counters(&self) -> (Rc<Cell<usize>>, Rc<Cell<u64>>) {
        (self.unwritten.clone(), self.progress_ms.clone())
    }
}

impl Link {
    fn complete(&self) -> bool {
        self.dials.values().all(|d| d.frames.is_some())
            && self.dials.keys().all(|s| self.inbound.contains_key(s))
    }
}

/// Readers waiting for one (vnode, seq).
type Waiters = Vec<oneshot::Sender<()>>;

/// A shard's cluster state.
pub struct Replica {
    pub cluster: Arc<Cluster>,
    pub replicator: RefCell<Replicator>,
    links: RefCell<BTreeMap<NodeId, Link>>,
    write_waiters: RefCell<HashMap<Ticket, oneshot::Sender<Result<(), WriteFailure>>>>,
    /// Session reads waiting for a vnode to be applied through a sequence number.
    applied_waiters: RefCell<BTreeMap<(u16, u64), Waiters>>,
    /// Writes waiting for a restarted head to take writes of a vnode (`Effect::TakesWrites`).
    recovered_waiters: RefCell<BTreeMap<u16, Waiters>>,
    pumping: Cell<bool>,
    /// Names accepted connections, so that a stale one's end is told from the current one's.
    next_inbound: Cell<u64>,
    /// The state transfers this shard sends (`transfer.rs`).
    pub transfers: crate::transfer::Transfers,
    /// What the shard's accepted peer connections hold (`peer_inbound.rs`).
    pub(crate) inbound: crate::peer_inbound::InboundBounds,
    /// Mutual TLS on the peer connections (`tls.rs`); `None`: plain TCP.
    pub(crate) tls: Option<Arc<PeerTls>>,
}

impl Replica {
    pub fn new(
        cluster: Arc<Cluster>,
        replicator: Replicator,
        transfers: crate::transfer::TransferSettings,
        tls: Option<Arc<PeerTls>>,
        peer_buffer_bytes: usize,
    ) -> Replica {
        Replica {
            cluster,
            replicator: RefCell::new(replicator),
            links: RefCell::new(BTreeMap::new()),
            write_waiters: RefCell::new(HashMap::new()),
            applied_waiters: RefCell::new(BTreeMap::new()),
            recovered_waiters: RefCell::new(BTreeMap::new()),
            pumping: Cell::new(false),
            next_inbound: Cell::new(0),
            transfers: crate::transfer::Transfers::new(transfers),
            inbound: crate::peer_inbound::InboundBounds::new(peer_buffer_bytes),
            tls,
        }
    }

    /// Whether a connection of `generation` from `node` is still its link's (the link was not
    /// reset since); if so, the member was just heard from.
    pub(crate) fn heard_on(&self, node: NodeId, generation: u64) -> bool {
        let mut links = self.links.borrow_mut();
        let Some(link) = links.get_mut(&node).filter(|l| l.generation == generation) else {
            return false;
        };
        link.heard_ms = mono_ms();
        true
    }

    /// Whether a connection of `generation` from `node` is still its link's.
    pub(crate) fn is_current(&self, node: NodeId, generation: u64) -> bool {
        self.links
            .borrow()
            .get(&node)
            .is_some_and(|l| l.generation == generation)
    }

    /// Whether this shard expects a connection from `node`'s shard `from_shard`.
    pub(crate) fn expects(&self, node: NodeId, from_shard: u16) -> bool {
        self.links
            .borrow()
            .get(&node)
            .is_some_and(|l| l.dials.contains_key(&from_shard))
    }

    /// Each member this shard links with, and whether its link is up.
    pub fn link_states(&self) -> Vec<(NodeId, bool)> {
        self.links
            .borrow()
            .iter()
            .map(|(n, l)| (*n, l.up))
            .collect()
    }

    /// The chain epoch of `vnode`.
    pub fn epoch(&self, vnode: u16) -> u64 {
        self.cluster.table.chain(u32::from(vnode)).epoch
    }

    /// Waits for a client write's ack point (`Effect::WriteDone`).
    pub fn wait_write(&self, ticket: Ticket) -> oneshot::Receiver<Result<(), WriteFailure>> {
        let (sender, receiver) = oneshot::channel();
        self.write_waiters.borrow_mut().insert(ticket, sender);
        receiver
    }

    /// Resolves once `vnode` is applied through `seq` here.
    pub fn wait_applied(&self, vnode: u16, seq: u64) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        let applied = self.replicator.borrow().applied(vnode).unwrap_or(0);
        if applied >= seq {
            let _ = sender.send(());
        } else {
            self.applied_waiters
                .borrow_mut()
                .entry((vnode, seq))
                .or_default()
                .push(sender);
        }
        receiver
    }

    /// Resolves once this head takes writes of `vnode` (at once if it does now).
    pub fn wait_takes_writes(&self, vnode: u16) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        let recovering = matches!(
            self.replicator.borrow().admit_write(vnode),
            Err(tessera_core::replication::Refusal::Recovering { .. })
        );
        if recovering {
            let mut waiters = self.recovered_waiters.borrow_mut();
            waiters.entry(vnode).or_default().push(sender);
        } else {
            let _ = sender.send(());
        }
        receiver
    }

    fn wake_applied(&self) {
        let replicator = self.replicator.borrow();
        let mut waiters = self.applied_waiters.borrow_mut();
        let ready: Vec<(u16, u64)> = waiters
            .keys()
            .filter(|(vnode, seq)| replicator.applied(*vnode).unwrap_or(0) >= *seq)
            .copied()
            .collect();
        for key in ready {
            for sender in waiters.remove(&key).into_iter().flatten() {
                let _ = sender.send(());
            }
        }
    }
}

/// Takes the core's effects and feeds back the store's changes, until both are quiet.
pub fn pump(shard: &Rc<Shard>) {
    let Some(replica) = &shard.replica else {
        return;
    };
    if replica.pumping.replace(true) {
        return; // an outer pump is running: it will see what this one would
    }
    loop {
        let effect = replica.replicator.borrow_mut().poll_effect();
        match effect {
            Some(Effect::Send(out)) => enqueue(replica, out.to, out.msg),
            Some(Effect::ReadState {
                vnode,
                to,
                since,
                transfer,
            }) => crate::transfer::spawn(shard, vnode, to, since, transfer),
            Some(Effect::WriteDone { ticket, result }) => {
                if let Some(sender) = replica.write_waiters.borrow_mut().remove(&ticket) {
                    let _ = sender.send(result);
                }
            }
            Some(Effect::TakesWrites { vnode }) => {
                let waiters = replica.recovered_waiters.borrow_mut().remove(&vnode);
                for sender in waiters.into_iter().flatten() {
                    let _ = sender.send(());
                }
            }
            None => {
                let changed = shard.store.borrow_mut().take_log_changes();
                if changed.is_empty() {
                    break;
                }
                let mut store = shard.store.borrow_mut();
                replica
                    .replicator
                    .borrow_mut()
                    .handle_durable(&changed, &mut *store, now());
                drop(store);
                shard.wake_visible(&changed);
            }
        }
    }
    replica.wake_applied();
    flush_links(replica);
    replica.pumping.set(false);
}

fn enqueue(replica: &Replica, to: NodeId, msg: PeerMsg) {
    let remote_shard = replica.cluster.shard_of(to, msg.vnode);
    let mut links = replica.links.borrow_mut();
    let link = links.entry(to).or_default();
    if !link.up {
        return; // the core resends what matters once the link is up again
    }
    link.pending.entry(remote_shard).or_default().push(msg);
}

/// Encodes what is pending for each connection and hands it to its writer.
fn flush_links(replica: &Replica) {
    let mut links = replica.links.borrow_mut();
    for link in links.values_mut() {
        for (remote_shard, messages) in std::mem::take(&mut link.pending) {
            let Some(dial) = link.dials.get_mut(&remote_shard) else {
                continue;
            };
            let frames: Vec<Vec<u8>> = batches(messages)
                .iter()
                .map(|chunk| {
                    let mut frame = Vec::new();
                    encode_batch(&mut frame, chunk);
                    frame
                })
                .collect();
            dial.hand(frames, mono_ms());
        }
    }
}

/// Tells the core how much waits to be written to `node`; streams it paused go on once there
/// is room.
fn report_outbox(shard: &Rc<Shard>, node: NodeId) {
    let replica = shard.replica.as_ref().expect("cluster");
    let unwritten: usize = match replica.links.borrow().get(&node) {
        Some(link) if link.up => link.dials.values().map(|d| d.unwritten.get()).sum(),
        _ => return,
    };
    let resumed = {
        let mut store = shard.store.borrow_mut();
        replica
            .replicator
            .borrow_mut()
            .handle_outbox(node, unwritten, &mut *store, now())
    };
    if resumed {
        pump(shard);
    }
}

/// Links up whose member was silent for `PEER_SILENCE`, or wrote none of what waits for it.
fn silent_links(replica: &Replica, now_ms: u64) -> Vec<NodeId> {
    let silence_ms = PEER_SILENCE.as_millis() as u64;
    let stalled =
        |d: &Dial| d.unwritten.get() > 0 && now_ms.saturating_sub(d.progress_ms.get()) > silence_ms;
    replica
        .links
        .borrow()
        .iter()
        .filter(|(_, link)| link.up)
        .filter(|(_, link)| {
            now_ms.saturating_sub(link.heard_ms) > silence_ms || link.dials.values().any(stalled)
        })
        .map(|(&node, _)| node)
        .collect()
}

/// An empty batch on every connection that carried nothing for `HEARTBEAT`.
fn send_heartbeats(replica: &Replica, now_ms: u64) {
    let heartbeat_ms = HEARTBEAT.as_millis() as u64;
    let mut links = replica.links.borrow_mut();
    for dial in links
        .values_mut()
        .filter(|l| l.up)
        .flat_map(|l| l.dials.values_mut())
    {
        if dial.frames.is_none() {
            continue;
        }
        if now_ms.saturating_sub(dial.sent_ms) < heartbeat_ms {
            continue;
        }
        let mut frame = Vec::new();
        encode_batch(&mut frame, &[]);
        dial.hand(vec![frame], now_ms);
    }
}

/// After this shard was paused (a stopped process, a starved core), its members' silence is
/// its own: every link starts counting again.
fn forgive_pause(replica: &Replica, now_ms: u64) {
    let mut links = replica.links.borrow_mut();
    for link in links.values_mut() {
        link.heard_ms = now_ms;
        for dial in link.dials.values() {
            dial.progress_ms.set(now_ms);
        }
    }
}

/// Splits messages into frames of about `PEER_BATCH_BYTES`.
fn batches(messages: Vec<PeerMsg>) -> Vec<Vec<PeerMsg>> {
    let mut out = vec![Vec::new()];
    let mut bytes = 0;
    for msg in messages {
        let size = peer_wire::message_bytes(&msg);
        if bytes + size > PEER_BATCH_BYTES && !out.last().expect("one").is_empty() {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        out.last_mut().expect("one").push(msg);
    }
    out
}

/// The link to `node` broke: every connection to it is dropped and dialed again.
fn link_down(replica: &Replica, node: NodeId) {
    let mut links = replica.links.borrow_mut();
    let Some(link) = links.get_mut(&node) else {
        return;
    };
    let was_up = link.up;
    link.up = false;
    link.generation += 1;
    link.pending.clear();
    link.inbound.clear();
    for dial in link.dials.values_mut() {
        dial.frames = None;
        dial.unwritten.set(0);
    }
    drop(links);
    if was_up {
        tracing::info!(
            node = replica.cluster.me,
            peer = node,
            "link to member down"
        );
        replica.replicator.borrow_mut().handle_link_down(node);
    }
}

/// Starts this shard's part of the cluster: its peer listener, a dialer per connection it
/// needs, and the core's clock.
pub fn start(shard: &Rc<Shard>, listener: TcpListener) {
    let replica = shard.replica.as_ref().expect("a cluster shard");
    replica.transfers.start();
    glommio::spawn_local(crate::peer_inbound::accept_loop(shard.clone(), listener)).detach();
    let needed = needed_connections(replica);
    for (node, remote_shards) in needed {
        let mut links = replica.links.borrow_mut();
        let link = links.entry(node).or_default();
        for &remote_shard in &remote_shards {
            link.dials.insert(remote_shard, Dial::default());
        }
        drop(links);
        for remote_shard in remote_shards {
            glommio::spawn_local(dial_loop(shard.clone(), node, remote_shard)).detach();
        }
    }
    glommio::spawn_local(tick_loop(shard.clone())).detach();
}

/// Per member, its shards that hold vnodes this shard holds.
fn needed_connections(replica: &Replica) -> BTreeMap<NodeId, BTreeSet<u16>> {
    let cluster = &replica.cluster;
    let mut needed: BTreeMap<NodeId, BTreeSet<u16>> = BTreeMap::new();
    for vnode in replica.replicator.borrow().vnodes() {
        for &node in &cluster.table.chain(u32::from(vnode)).replicas {
            if node != cluster.me {
                needed
                    .entry(node)
                    .or_default()
                    .insert(cluster.shard_of(node, vnode));
            }
        }
    }
    needed
}

async fn tick_loop(shard: Rc<Shard>) {
    let mut last_tick_ms = mono_ms();
    loop {
        glommio::timer::sleep(TICK).await;
        if shard.stopping.get() {
            return;
        }
        let replica = shard.replica.as_ref().expect("cluster");
        let now = mono_ms();
        if now.saturating_sub(last_tick_ms) > HEARTBEAT.as_millis() as u64 {
            forgive_pause(replica, now);
        }
        last_tick_ms = now;
        for node in silent_links(replica, now) {
            tracing::warn!(
                node = replica.cluster.me,
                peer = node,
                "a member sent nothing or read nothing for {PEER_SILENCE:?}: dropping the link"
            );
            link_down(replica, node);
        }
        send_heartbeats(replica, now);
        {
            let mut store = shard.store.borrow_mut();
            replica
                .replicator
                .borrow_mut()
                .handle_tick(&mut *store, crate::shard::now());
        }
        let nodes: Vec<NodeId> = replica.links.borrow().keys().copied().collect();
        for node in nodes {
            report_outbox(&shard, node);
        }
        pump(&shard);
    }
}

fn hello(shard: &Shard, replica: &Replica, to_shard: u16) -> Hello {
    Hello {
        cluster_id: replica.cluster.id,
        from_node: replica.cluster.me,
        from_shard: shard.index,
        to_shard,
        vnodes: replica.cluster.vnodes,
        ..Hello::default()
    }
}

/// Keeps one connection to `node`'s shard `remote_shard` up.
async fn dial_loop(shard: Rc<Shard>, node: NodeId, remote_shard: u16) {
    let replica = shard.replica.as_ref().expect("cluster");
    let addr: SocketAddr = replica.cluster.member(node).peer_addr(remote_shard);
    // From this member's own address: plain peer ports take a member only from there.
    let own = SocketAddr::new(replica.cluster.member(replica.cluster.me).addr.ip(), 0);
    let mut backoff = Duration::from_millis(20);
    loop {
        if shard.stopping.get() {
            return;
        }
        let dialed = TcpStream::connect_timeout_from(own, addr, DIAL_TIMEOUT).await;
        if let Err(glommio::GlommioError::IoError(error)) = &dialed {
            if error.kind() == std::io::ErrorKind::AddrNotAvailable {
                tracing::warn!(shard = shard.index, peer = node, %own,
                    "cannot dial from this member's own address (is it an address of this host?)");
            }
        }
        if let Ok(stream) = dialed {
            backoff = Duration::from_millis(20);
            match &replica.tls {
                None => serve_dialed(&shard, node, remote_shard, stream).await,
                Some(tls) => match peer_stream::dial(tls, addr.ip(), stream, DIAL_TIMEOUT).await {
                    Ok(stream) => serve_dialed(&shard, node, remote_shard, stream).await,
                    Err(failed) if failed.certificate => tracing::warn!(
                        shard = shard.index,
                        peer = node,
                        "dialing a member: {}",
                        failed.why
                    ),
                    Err(failed) => tracing::debug!(
                        shard = shard.index,
                        peer = node,
                        "dialing a member: {}",
                        failed.why
                    ),
                },
            }
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs one dialed connection until it breaks.
async fn serve_dialed<S: PeerStream>(
    shard: &Rc<Shard>,
    node: NodeId,
    remote_shard: u16,
    stream: S,
) {
    let replica = shard.replica.as_ref().expect("cluster");
    let _ = stream.tcp().set_nodelay(true);
    let (mut reader, mut writer) = stream.split();
    let mut first = Vec::new();
    encode_hello(&mut first, &hello(shard, replica, remote_shard));
    let wrote = async { writer.write_all(&first).await.is_ok() };
    let timeout = async {
        glommio::timer::sleep(DIAL_TIMEOUT).await;
        false
    };
    if !futures_lite::future::or(wrote, timeout).await {
        return;
    }
    let (frames, receiver) = local_channel::new_unbounded::<Vec<u8>>();
    let unwritten = {
        let mut links = replica.links.borrow_mut();
        let link = links.entry(node).or_default();
        let dial = link.dials.entry(remote_shard).or_default();
        dial.frames = Some(frames);
        // Counters of its own: a writer of an earlier connection may still finish a frame.
        dial.unwritten = Rc::default();
        dial.progress_ms = Rc::default();
        (dial.clone_counters(), link.generation)
    };
    let (counters, generation) = unwritten;
    check_link_up(shard, replica, node);
    // The member sends nothing on this connection: reading only notices that it closed.
    let closed = async {
        let mut byte = [0u8; 1];
        let _ = reader.read(&mut byte).await;
    };
    let write = write_frames(shard, node, &mut writer, receiver, counters);
    futures_lite::future::or(write, closed).await;
    let current = replica
        .links
        .borrow()
        .get(&node)
        .is_some_and(|l| l.generation == generation);
    if current {
        link_down(replica, node);
    }
}

/// Brings the link to `node` up once every connection each way is there.
fn check_link_up(shard: &Rc<Shard>, replica: &Replica, node: NodeId) {
    {
        let mut links = replica.links.borrow_mut();
        let Some(link) = links.get_mut(&node) else {
            return;
        };
        if link.up || !link.complete() {
            return;
        }
        link.up = true;
        link.heard_ms = mono_ms();
    }
    tracing::info!(node = replica.cluster.me, peer = node, "link to member up");
    let mut store = shard.store.borrow_mut();
    replica
        .replicator
        .borrow_mut()
        .handle_link_up(node, &mut *store, now());
    drop(store);
    pump(shard);
}

/// Records a connection from `node`'s shard `from_shard`; returns its id and the link's
/// generation. A second connection from the same shard means the member reset its side.
pub(crate) fn register_inbound(
    shard: &Rc<Shard>,
    replica: &Replica,
    node: NodeId,
    from_shard: u16,
) -> (u64, u64) {
    let replaced = replica
        .links
        .borrow()
        .get(&node)
        .is_some_and(|l| l.inbound.contains_key(&from_shard));
    if replaced {
        link_down(replica, node);
    }
    let id = replica.next_inbound.get();
    replica.next_inbound.set(id + 1);
    let generation = {
        let mut links = replica.links.borrow_mut();
        let link = links.entry(node).or_default();
        link.inbound.insert(from_shard, id);
        link.generation
    };
    check_link_up(shard, replica, node);
    (id, generation)
}

/// A connection from `node` ended: if it was the current one, the link is down.
pub(crate) fn inbound_closed(replica: &Replica, node: NodeId, from_shard: u16, id: u64) {
    let current = replica
        .links
        .borrow()
        .get(&node)
        .is_some_and(|l| l.inbound.get(&from_shard) == Some(&id));
    if current {
        link_down(replica, node);
    }
}

/// Writes a connection's frames as they come, reporting the bytes written to the core.
async fn write_frames<W: futures::AsyncWrite + Unpin>(
    shard: &Rc<Shard>,
    node: NodeId,
    writer: &mut W,
    frames: LocalReceiver<Vec<u8>>,
    (unwritten, progress_ms): (Rc<Cell<usize>>, Rc<Cell<u64>>),
) {
    while let Some(frame) = frames.recv().await {
        let len = frame.len();
        if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        unwritten.set(unwritten.get().saturating_sub(len));
        progress_ms.set(mono_ms());
        shard.metrics.peer_sent(node, len);
        report_outbox(shard, node);
    }
}

/// Hands a member's messages to the core.
pub(crate) fn deliver(shard: &Rc<Shard>, replica: &Replica, from: NodeId, messages: Vec<PeerMsg>) {
    {
        let mut store = shard.store.borrow_mut();
        let mut replicator = replica.replicator.borrow_mut();
        let now = crate::shard::now();
        for msg in messages {
            replicator.handle_message(from, msg, &mut *store, now);
        }
    }
    shard.kick_flusher();
    pump(shard);
}
