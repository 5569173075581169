//! Connections accepted on a shard's peer port, and what they may make the node hold.
//!
//! Before its Hello is let in, a connection holds one of `PEER_PENDING_HANDSHAKES` slots (at
//! most `PEER_PENDING_HANDSHAKES_PER_ADDRESS` from one address), may send
//! `PEER_PRE_HELLO_BYTES` and has `PEER_HELLO_DEADLINE_MS` for it, its TLS handshake included.
//!
//! Once let in (a member, as its Hello and certificate say), a connection reads into a
//! `PEER_READ_BYTES` buffer and holds one frame at a time, whose size its header announces:
//! - **per connection**: at most one frame (`MAX_FRAME_BODY_BYTES`), which must arrive in full
//!   within `PEER_FRAME_DEADLINE_MS` of its first byte plus `PEER_FRAME_MS_PER_MIB` per MiB of
//!   its body (a member writes whole frames at once; a stalled partial frame would hold its
//!   memory for good, on a connection the member may already have replaced);
//! - **per shard**: the buffers and frames of all its accepted connections together stay
//!   within `--peer-buffer-per-shard` (64 MiB by default; the node within that times its
//!   shards), shown as `tessera_peer_buffered_bytes`. A frame's
//!   bytes are reserved when its header arrives; one that does not fit pauses the reading of
//!   its connection (TCP backpressure) until the others' frames are handled, within its
//!   deadline, and the connection is closed if they are not.
//!
//! A decoded batch is bounded before anything is copied (`MAX_DECODED_PEER_BATCH_BYTES`), and
//! what the messages make the shard do is bounded by the core (retention queues, outboxes,
//! transfers in `transfer.rs`). Each closed connection is counted in
//! `tessera_peer_refused_total` by reason.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use tessera_core::placement::NodeId;
use tessera_schema::frame::{FrameEvent, FrameReader, HEADER_BYTES};
use tessera_schema::limits::{
    PEER_FRAME_DEADLINE_MS, PEER_FRAME_MS_PER_MIB, PEER_HELLO_DEADLINE_MS, PEER_PENDING_HANDSHAKES,
    PEER_PENDING_HANDSHAKES_PER_ADDRESS, PEER_PRE_HELLO_BYTES, PEER_READ_BYTES,
};

use crate::peer_stream::{self, PeerStream};
use crate::peer_wire::{self, decode_batch, decode_hello, encode_hello};
use crate::replica::{deliver, inbound_closed, register_inbound, Replica};
use crate::shard::Shard;

/// What a shard's accepted peer connections hold: handshake slots and frame bytes.
pub struct InboundBounds {
    handshakes: Rc<RefCell<Handshakes>>,
    /// Bytes reserved by the let-in connections' buffers and frames, and the most they may.
    buffered_bytes: Rc<Cell<usize>>,
    limit_bytes: usize,
}

impl InboundBounds {
    /// Bounds with `limit_bytes` for the let-in connections' frames (`--peer-buffer-per-shard`).
    pub fn new(limit_bytes: usize) -> InboundBounds {
        InboundBounds {
            handshakes: Rc::default(),
            buffered_bytes: Rc::default(),
            limit_bytes,
        }
    }

    /// Bytes the let-in connections hold now (`tessera_peer_buffered_bytes`).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes.get()
    }
}

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let Ok(stream) = listener.accept().await else {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            continue;
        };
        glommio::spawn_local(serve_accepted(shard.clone(), stream)).detach();
    }
}

/// The shard's accepted peer connections that have not said Hello yet: in all, and by source.
#[derive(Default)]
struct Handshakes {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A slot among the shard's pending handshakes, given back when dropped.
struct Handshake {
    pending: Rc<RefCell<Handshakes>>,
    source: IpAddr,
}

impl Handshake {
    /// A slot for a connection from `source`, or why there is none.
    fn take(pending: &Rc<RefCell<Handshakes>>, source: IpAddr) -> Result<Handshake, String> {
        let mut counts = pending.borrow_mut();
        if counts.total >= PEER_PENDING_HANDSHAKES {
            return Err(format!(
                "{PEER_PENDING_HANDSHAKES} others have not said Hello yet"
            ));
        }
        let from_source = counts.by_source.entry(source).or_default();
        if *from_source >= PEER_PENDING_HANDSHAKES_PER_ADDRESS {
            return Err(format!(
                "{PEER_PENDING_HANDSHAKES_PER_ADDRESS} others from {source} have not said Hello yet"
            ));
        }
        *from_source += 1;
        counts.total += 1;
        Ok(Handshake {
            pending: pending.clone(),
            source,
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut counts = self.pending.borrow_mut();
        counts.total -= 1;
        if let Some(count) = counts.by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

/// A let-in connection's share of its shard's peer buffer budget, given back when dropped.
struct Reserved {
    total: Rc<Cell<usize>>,
    limit_bytes: usize,
    bytes: usize,
}

impl Reserved {
    fn new(bounds: &InboundBounds) -> Reserved {
        Reserved {
            total: bounds.buffered_bytes.clone(),
            limit_bytes: bounds.limit_bytes,
            bytes: 0,
        }
    }

    /// Makes the reservation `bytes` if the shard's connections stay within their budget;
    /// false (nothing changed) if they would not. Giving bytes back always succeeds.
    fn try_set(&mut self, bytes: usize) -> bool {
        let others = self.total.get() - self.bytes;
        if bytes > self.bytes && others + bytes > self.limit_bytes {
            return false;
        }
        self.total.set(others + bytes);
        self.bytes = bytes;
        true
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.total.set(self.total.get() - self.bytes);
    }
}

/// The frame a let-in connection is part way through: when its first byte came.
#[derive(Default)]
struct FrameClock {
    started: Option<Instant>,
}

impl FrameClock {
    /// After `handled` frames were taken from `frames`: a frame still partial started now
    /// unless it is the one that was partial before.
    fn update(&mut self, frames: &FrameReader, handled: usize, now: Instant) {
        self.started = match (frames.is_partial(), handled, self.started) {
            (false, _, _) => None,
            (true, 0, Some(started)) => Some(started),
            (true, _, _) => Some(now),
        };
    }

    /// When the partial frame must be in (its size known once its header is).
    fn deadline(&self, frames: &FrameReader) -> Option<Instant> {
        let body_mib = frames
            .partial_header()
            .map_or(0, |h| u64::from(h.body_len) >> 20);
        let allowed_ms = PEER_FRAME_DEADLINE_MS + body_mib * PEER_FRAME_MS_PER_MIB;
        Some(self.started? + Duration::from_millis(allowed_ms))
    }
}

/// The bytes a let-in connection holds: its read buffer, and the whole of the frame part way
/// in once its header says how large it is.
fn held_bytes(frames: &FrameReader, buffer_bytes: usize) -> usize {
    let frame = frames
        .partial_header()
        .map_or(0, |h| HEADER_BYTES + h.body_len as usize);
    buffer_bytes + frame.max(frames.buffered_bytes())
}

/// Waits until `reserved` can grow to `bytes` (true), or `until` passes or `still_wanted`
/// says the connection is not (false).
async fn room_for(
    reserved: &mut Reserved,
    bytes: usize,
    until: Instant,
    still_wanted: impl Fn() -> bool,
) -> bool {
    loop {
        if reserved.try_set(bytes) {
            return true;
        }
        if Instant::now() >= until || !still_wanted() {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// How often a connection part way through a frame looks whether it was replaced.
const REPLACED_POLL: Duration = Duration::from_millis(100);

/// Ends when the link that `inbound` belongs to was reset (its member dialed again, or went
/// silent): the frame it is part way through will be thrown away, so its memory goes now
/// rather than at its deadline.
async fn replaced(replica: &Replica, inbound: Inbound) {
    while replica.is_current(inbound.node, inbound.generation) {
        glommio::timer::sleep(REPLACED_POLL).await;
    }
}

/// Serves a connection accepted on the peer port: a slot among the pending handshakes, the
/// TLS handshake if the peer ports speak TLS, then `serve_inbound`.
async fn serve_accepted(shard: Rc<Shard>, stream: TcpStream) {
    let replica = shard.replica.as_ref().expect("cluster");
    let source = stream
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let handshake = match Handshake::take(&replica.inbound.handshakes, source) {
        Ok(handshake) => handshake,
        Err(why) => {
            shard.metrics.peer_refused("handshakes_full");
            tracing::warn!(shard = shard.index, "closing a peer connection: {why}");
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_millis(PEER_HELLO_DEADLINE_MS);
    let _ = stream.set_nodelay(true);
    let Some(tls) = &replica.tls else {
        return serve_inbound(shard.clone(), stream, handshake, deadline).await;
    };
    let limit = deadline.saturating_duration_since(Instant::now());
    match peer_stream::accept(tls, stream, limit).await {
        Ok(stream) => serve_inbound(shard.clone(), stream, handshake, deadline).await,
        Err(failed) if failed.certificate => {
            shard.metrics.peer_refused("tls");
            tracing::warn!(
                shard = shard.index,
                "closing a peer connection: {}",
                failed.why
            )
        }
        Err(failed) => tracing::debug!(
            shard = shard.index,
            "closing a peer connection: {}",
            failed.why
        ),
    }
}

/// A connection's state while it is served.
struct Serving {
    handshake: Option<Handshake>,
    hello_deadline: Instant,
    frames: FrameReader,
    buffer: Vec<u8>,
    received_bytes: usize,
    from: Option<Inbound>,
    clock: FrameClock,
    reserved: Reserved,
}

impl Serving {
    /// When the next read must bring something: the Hello's deadline, then the partial
    /// frame's (none while no frame is part way in).
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        match self.from {
            None => Some((self.hello_deadline, "hello_deadline")),
            Some(_) => Some((self.clock.deadline(&self.frames)?, "frame_deadline")),
        }
    }
}

/// Reads a member's messages for this shard until the connection closes or misbehaves (bad
/// frames, another cluster's id, the wrong shard, a bound of this module's header): only this
/// connection is closed.
async fn serve_inbound<S: PeerStream>(
    shard: Rc<Shard>,
    mut stream: S,
    handshake: Handshake,
    hello_deadline: Instant,
) {
    let replica = shard.replica.as_ref().expect("cluster");
    let mut serving = Serving {
        handshake: Some(handshake),
        hello_deadline,
        frames: FrameReader::new(),
        buffer: vec![0u8; PEER_PRE_HELLO_BYTES],
        received_bytes: 0,
        from: None,
        clock: FrameClock::default(),
        reserved: Reserved::new(&replica.inbound),
    };
    let why = loop {
        match serve_one_read(&shard, replica, &mut stream, &mut serving).await {
            Ok(()) => {}
            Err(None) => break None,
            Err(Some((reason, why))) => {
                shard.metrics.peer_refused(reason);
                break Some(why);
            }
        }
    };
    if let Some(why) = why {
        tracing::warn!(shard = shard.index, "closing a peer connection: {why}");
    }
    if let Some(inbound) = serving.from {
        inbound_closed(replica, inbound.node, inbound.from_shard, inbound.id);
    }
}

/// Why a connection is closed: nothing to say (`None`: it closed, or was replaced), or the
/// reason for `tessera_peer_refused_total` and the log.
type Closing = Option<(&'static str, String)>;

/// One read from the connection and what it brought.
async fn serve_one_read<S: PeerStream>(
    shard: &Rc<Shard>,
    replica: &Replica,
    stream: &mut S,
    serving: &mut Serving,
) -> Result<(), Closing> {
    let deadline = serving.deadline();
    let timeout = deadline.map(|(at, _)| at.saturating_duration_since(Instant::now()));
    let late = |reason: &'static str| {
        let why = match reason {
            "hello_deadline" => format!("no Hello within {PEER_HELLO_DEADLINE_MS} ms"),
            _ => "a frame did not arrive in full in time".to_string(),
        };
        Some((reason, why))
    };
    if let (Some((_, reason)), Some(left)) = (deadline, timeout) {
        if left.is_zero() {
            return Err(late(reason));
        }
    }
    if stream.tcp().set_read_timeout(timeout).is_err() {
        return Err(None);
    }
    let read = async { Some(stream.read(&mut serving.buffer).await) };
    let read = match serving.from {
        Some(inbound) if serving.frames.is_partial() => {
            futures_lite::future::or(read, async {
                replaced(replica, inbound).await;
                None
            })
            .await
        }
        Some(inbound) if !replica.is_current(inbound.node, inbound.generation) => None,
        _ => read.await,
    };
    let Some(read) = read else {
        return Err(None); // replaced: what it was sending goes nowhere
    };
    let n = match read {
        Ok(0) => return Err(None),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(late(deadline.map_or("frame_deadline", |(_, r)| r)))
        }
        Err(_) => return Err(None),
        Ok(n) => n,
    };
    serving.received_bytes += n;
    if serving.from.is_none() && serving.received_bytes > PEER_PRE_HELLO_BYTES {
        let why = format!("{} bytes and no Hello", serving.received_bytes);
        return Err(Some(("pre_hello_bytes", why)));
    }
    serving.frames.feed(&serving.buffer[..n]);
    let read = read_frames(
        shard,
        replica,
        &mut serving.frames,
        &mut serving.from,
        stream,
    )
    .await;
    let handled = match read {
        Ok(handled) => handled,
        Err(why) => {
            let reason = if serving.from.is_some() {
                "batch"
            } else {
                "hello"
            };
            return Err(why.map(|why| (reason, why)));
        }
    };
    if serving.from.is_some() && serving.handshake.take().is_some() {
        // Let in: a member's batches come in larger reads.
        serving.buffer.resize(PEER_READ_BYTES, 0);
    }
    if serving.from.is_none() {
        return Ok(());
    }
    // A large frame's buffer goes with it: what the connection holds is what it reserved.
    serving.frames.shrink_when_empty();
    let now = Instant::now();
    serving.clock.update(&serving.frames, handled, now);
    let held = held_bytes(&serving.frames, serving.buffer.len());
    let until = serving.clock.deadline(&serving.frames).unwrap_or(now);
    let inbound = serving.from.expect("let in");
    let current = || replica.is_current(inbound.node, inbound.generation);
    if !room_for(&mut serving.reserved, held, until, current).await {
        if !current() {
            return Err(None);
        }
        let why = format!(
            "no room for a frame of {held} bytes: this shard's peer connections hold {} of \
             {} (--peer-buffer-per-shard)",
            replica.inbound.buffered_bytes(),
            replica.inbound.limit_bytes
        );
        return Err(Some(("memory", why)));
    }
    Ok(())
}

/// An accepted connection once its Hello was let in.
#[derive(Clone, Copy)]
struct Inbound {
    node: NodeId,
    from_shard: u16,
    id: u64,
    generation: u64,
}

/// Handles the frames buffered on an accepted connection; how many. `Err` closes it: with the
/// reason to log, or `None` when there is nothing to say (a forming node's Hello was answered,
/// or the link was reset since the connection came).
async fn read_frames<S: PeerStream>(
    shard: &Rc<Shard>,
    replica: &Replica,
    frames: &mut FrameReader,
    from: &mut Option<Inbound>,
    stream: &mut S,
) -> Result<usize, Option<String>> {
    let mut handled = 0;
    loop {
        let (opcode, body) = match frames.next_event() {
            Ok(Some(FrameEvent::Frame { header, body })) => (header.opcode, body.to_vec()),
            Ok(None) => return Ok(handled),
            Ok(Some(FrameEvent::Oversized { .. })) | Err(_) => {
                return Err(Some("bad frame".into()))
            }
        };
        handled += 1;
        match (*from, opcode) {
            (None, peer_wire::HELLO) => {
                let (node, from_shard) = accept_hello(shard, replica, &body, stream).await?;
                let (id, generation) = register_inbound(shard, replica, node, from_shard);
                *from = Some(Inbound {
                    node,
                    from_shard,
                    id,
                    generation,
                });
            }
            (Some(inbound), peer_wire::BATCH) => {
                if !replica.heard_on(inbound.node, inbound.generation) {
                    return Err(None);
                }
                let Ok(messages) = decode_batch(&body) else {
                    return Err(Some(format!(
                        "undecodable batch from member {}",
                        inbound.node
                    )));
                };
                deliver(shard, replica, inbound.node, messages);
            }
            _ => return Err(Some(format!("unexpected frame (opcode {opcode:#04x})"))),
        }
    }
}

/// Checks a connection's Hello: a forming node is told who this node is; a member of this
/// cluster dialing this shard from one of its shards this shard shares vnodes with is let in.
async fn accept_hello<S: PeerStream>(
    shard: &Shard,
    replica: &Replica,
    body: &[u8],
    stream: &mut S,
) -> Result<(NodeId, u16), Option<String>> {
    let hello = decode_hello(body).map_err(|e| Some(format!("undecodable Hello: {e}")))?;
    let cluster = &replica.cluster;
    if hello.forming {
        let mut answer = Vec::new();
        encode_hello(
            &mut answer,
            &cluster.hello_for_forming(&cluster.peer_addrs()),
        );
        let _ = stream.write_all(&answer).await;
        return Err(None);
    }
    let expected = replica.expects(hello.from_node, hello.from_shard);
    if hello.cluster_id != cluster.id || !expected || hello.to_shard != shard.index {
        return Err(Some(format!(
            "refused a Hello from cluster {:016x}, node {} shard {}, for shard {} (this is cluster {:016x}, shard {})",
            hello.cluster_id,
            hello.from_node,
            hello.from_shard,
            hello.to_shard,
            cluster.id,
            shard.index
        )));
    }
    let ip = cluster.member(hello.from_node).addr.ip();
    if replica.tls.is_none() {
        // Plain TCP proves nothing but the source address (members dial from their own,
        // `replica.rs`): a Hello as a member from anywhere else is an impostor's. Members that
        // share an address (a cluster on one host's loopback) are told apart only by TLS.
        let source = stream.tcp().peer_addr().ok().map(|a| a.ip().to_canonical());
        if source != Some(ip.to_canonical()) {
            let source = source.map_or("an unknown address".into(), |ip| ip.to_string());
            return Err(Some(format!(
                "refused a Hello as member {} from {source}, not that member's address {ip}",
                hello.from_node
            )));
        }
    }
    if replica.tls.is_some() {
        // The CA vouched for a member; this checks it is the one the Hello names.
        let named = stream
            .peer_certificate()
            .ok_or_else(|| "no peer certificate".to_string())
            .and_then(|cert| crate::tls::names_member(cert, ip));
        if let Err(why) = named {
            return Err(Some(format!(
                "refused a Hello as member {}: {why}",
                hello.from_node
            )));
        }
    }
    Ok((hello.from_node, hello.from_shard))
}
