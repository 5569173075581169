//! Every bound of the protocol, with the reason for its value. Each one that a request can exceed
//! has the status code it answers with next to it (see `verify.rs`).

/// Smallest key: an empty key has no vnode worth the name and is almost always a client bug.
/// Below it: BAD_REQUEST.
pub const MIN_KEY_BYTES: usize = 1;
/// Largest key. Keys live in the in-memory index, so they are kept small. Above it: KEY_TOO_LARGE.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value: the brief's hard limit of 1 MiB. Above it: VALUE_TOO_LARGE.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most operations in one BATCH. Above it: BATCH_TOO_LARGE.
pub const MAX_BATCH_OPS: usize = 1000;
/// Largest frame body. A single PUT at the value limit fits with room to spare, so that a value
/// one byte over the limit is still parsed and answered VALUE_TOO_LARGE. A larger frame is skipped
/// without being buffered and answered VALUE_TOO_LARGE (single op) or BATCH_TOO_LARGE (batch),
/// and the connection stays usable.
pub const MAX_FRAME_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest SCAN page. Above it the page is clamped, not refused: a page size is a hint.
pub const MAX_SCAN_PAGE: u32 = 10_000;
/// SCAN page size when the request says 0.
pub const DEFAULT_SCAN_PAGE: u32 = 100;
/// Longest error message a node sends; longer ones are cut.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest TTL: 100 years. Longer ones are BAD_REQUEST (they are almost always unit mistakes).
pub const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
/// Largest SCAN cursor a node hands out: 2 bytes of vnode, a flag byte, and a 16-byte key digest.
pub const MAX_CURSOR_BYTES: usize = 3 + 16;

/// Largest response body, in both directions' readers: the client refuses a larger frame, so
/// a node never builds one. A BATCH whose answer would pass it gets BATCH_TOO_LARGE on each GET
/// whose value does not fit (the rest of the batch runs, its writes included: fetch those keys
/// on their own); a SCAN page fits by construction (asserted below).
pub const MAX_RESPONSE_BODY_BYTES: usize = MAX_FRAME_BODY_BYTES;
/// What one result of a BATCH or one SCAN entry adds to a response body beyond its bytes
/// (flatbuffers table, vtable, vector offsets, alignment; measured at 40-56): used to size an
/// answer before building it.
pub const RESULT_OVERHEAD_BYTES: usize = 64;
/// Largest size a request may decode to: the bytes its keys and values take once copied out of
/// the frame, plus `DECODED_ITEM_BYTES` per batch item. Flatbuffers lets many items point at
/// the same bytes, so a 1 MiB frame can name gigabytes; such a frame is refused with
/// BATCH_TOO_LARGE (VALUE_TOO_LARGE for a single operation) before anything is copied.
pub const MAX_DECODED_REQUEST_BYTES: usize = MAX_FRAME_BODY_BYTES;
/// What one decoded batch item costs besides its key and value (the `BatchOp` and its vectors'
/// headers).
pub const DECODED_ITEM_BYTES: usize = 96;

// ---------------------------------------------------------------- connection budgets
// What one client can make a node hold (server/node/src/budget.rs has the mechanism). The brief
// sizes a node for 10 000 connections and a 4 GiB connection-buffer budget, 400 KB each on
// average; one connection may burst well past the average as long as the node's total holds.

/// Default of the node's budget for everything its client connections hold (`--connection-
/// memory`), split evenly among its shards: a quarter of the brief's 4 GiB, since the machines
/// that run tests and small deployments have far less memory than the brief's nodes.
pub const DEFAULT_CONNECTION_MEMORY_BYTES: u64 = 1 << 30;
/// Past this a connection is not read until its answers drain (TCP backpressure). 4 MiB lets
/// a pipelined client keep 1 000 small answers or a few large values in flight; a connection
/// with nothing outstanding is always read, so a request of any legal size still runs.
pub const CONNECTION_SOFT_BYTES: u64 = 4 << 20;
/// An operation may not copy values or keys that would take its connection past this: those
/// items are answered OVERLOADED. It leaves room for four largest answers in flight beside the
/// soft limit, and bounds what requests already admitted can add before reading stops.
pub const CONNECTION_HARD_BYTES: u64 = CONNECTION_SOFT_BYTES + 4 * MAX_RESPONSE_BODY_BYTES as u64;
/// A frame body over this is "large": it is taken only while its shard holds less than three
/// quarters of its budget, so that floods of large frames cannot crowd out small requests.
pub const LARGE_FRAME_BYTES: u64 = 64 * 1024;
/// What an open connection costs before it sends anything (its read buffer, its task, the
/// socket's bookkeeping), charged from accept to close.
pub const CONNECTION_BASE_BYTES: u64 = 24 * 1024;
/// What TLS adds to a client connection, charged from accept (its handshake included) to
/// close: rustls holds a record of up to 16 KiB coming in and one going out, plus the
/// handshake's flights (the certificate chain) and key schedule while it runs. So a flood of
/// handshakes, finished or stalled, fills the connection budget and is refused with a reason.
pub const TLS_CONNECTION_BYTES: u64 = 40 * 1024;
/// Bytes read from a socket at once.
pub const CONNECTION_READ_BYTES: usize = 16 * 1024;
/// Default of `--frame-timeout-ms`: a frame must arrive within this long of its first byte,
/// plus one second per MiB of its body
/// (a client slower than 1 MiB/s on a large frame, or one that stops half way, is cut off):
/// partial frames hold memory, and a stalled sender would hold it forever.
pub const FRAME_ARRIVAL_GRACE_MS: u64 = 10_000;
/// Default of the node's connection limit (`--max-connections`), split among its shards: the
/// brief's 10 000. Past it a new connection gets one UNAVAILABLE frame saying why and is closed.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Most requests one connection may have running; past it the node stops reading it.
pub const MAX_INFLIGHT_PER_CONNECTION: u64 = 1024;
/// SCANs one connection may have running; past it the node waits for one to finish before it
/// takes the connection's next frame. A page walks up to 10 000 index entries and reads keys
/// back: a pipeline of hundreds would otherwise stand between every other client and the core.
pub const MAX_SCANS_PER_CONNECTION: u64 = 4;
/// Frames a connection's reader handles between checks for other work to run first: one
/// connection's backlog delays the shard's other connections by at most this many requests'
/// work (or the executor's preemption interval, whichever comes first).
pub const FRAMES_PER_FAIRNESS_CHECK: u32 = 16;

/// What one replication batch may decode to: its entries' keys and values, 32 bytes for each
/// entry and message, and its keep lists. A batch that holds each byte once decodes to less
/// than its frame; one whose entries share offsets (the same 1 MiB value named a thousand
/// times) is refused before anything is copied. Before this bound, one 1.09 MiB batch decoded
/// to ~1.5 GiB.
pub const MAX_DECODED_PEER_BATCH_BYTES: usize = MAX_FRAME_BODY_BYTES;
/// Bookkeeping counted for each decoded entry and message (`MAX_DECODED_PEER_BATCH_BYTES`).
pub const DECODED_PEER_ITEM_BYTES: usize = 32;

/// How long a connection accepted on a peer port may take to send a Hello that is let in;
/// it is closed then. Before this bound, half-handshakes stayed open for good.
pub const PEER_HELLO_DEADLINE_MS: u64 = 5_000;
/// Bytes a connection accepted on a peer port may send before its Hello is let in (a Hello is
/// under 100 bytes); more closes it. Before this bound, a frame header announcing 16 MiB made
/// the node buffer up to 16 MiB for a connection that had not said who it was.
pub const PEER_PRE_HELLO_BYTES: usize = 4 * 1024;
/// Connections accepted on one shard's peer port that have not yet said Hello; one more is
/// closed at once. Members dial each shard once per shard of theirs it shares vnodes with, and
/// say Hello at once, so a member never comes near it.
pub const PEER_PENDING_HANDSHAKES: usize = 64;
/// Of those, from one source address: one address cannot take every slot and keep members
/// that must dial again (a restart, a link dropped) out until its connections time out.
pub const PEER_PENDING_HANDSHAKES_PER_ADDRESS: usize = 8;

/// Bytes a let-in peer connection reads from its socket at once.
pub const PEER_READ_BYTES: usize = 64 * 1024;
/// A frame on a let-in peer connection must arrive in full within this long of its first
/// byte, plus `PEER_FRAME_MS_PER_MIB` per MiB of its body. A member writes whole frames at
/// once; a partial frame that stalls would otherwise hold up to 16 MiB for good, on a
/// connection its member may already have replaced.
pub const PEER_FRAME_DEADLINE_MS: u64 = 5_000;
/// See `PEER_FRAME_DEADLINE_MS`: a member slower than 1 MiB/s on a large frame is cut off.
pub const PEER_FRAME_MS_PER_MIB: u64 = 1_000;
/// Default of `--peer-buffer-per-shard`: what the let-in connections of one shard's peer port
/// may hold together, their read buffers and the frames part way in, each frame reserved whole
/// once its header arrives. A frame that does not fit waits (its connection is not read) until
/// others are handled, within its deadline. Members' frames are about 1 MiB (a batch, a
/// transfer part), so room for four of the largest is far more than a shard's links need at
/// once; an impostor's frames (on plain-TCP peer ports, or with a stolen certificate) cannot
/// take more.
pub const DEFAULT_PEER_SHARD_BUFFER_BYTES: u64 = 64 << 20;
/// The least `--peer-buffer-per-shard`: one largest frame and its connection's read buffer,
/// so that any frame a member may send gets through.
pub const MIN_PEER_SHARD_BUFFER_BYTES: u64 =
    (MAX_FRAME_BODY_BYTES + PEER_READ_BYTES + crate::frame::HEADER_BYTES) as u64;
const _: () = assert!(DEFAULT_PEER_SHARD_BUFFER_BYTES >= 2 * MIN_PEER_SHARD_BUFFER_BYTES);

const _: () = assert!(CONNECTION_BASE_BYTES as usize > CONNECTION_READ_BYTES);
const _: () = assert!(CONNECTION_SOFT_BYTES < CONNECTION_HARD_BYTES);
const _: () = assert!((MAX_FRAME_BODY_BYTES as u64) < CONNECTION_HARD_BYTES);

const _: () = assert!(MAX_VALUE_BYTES + MAX_KEY_BYTES + 4096 < MAX_FRAME_BODY_BYTES);
const _: () = assert!(MAX_FRAME_BODY_BYTES <= u32::MAX as usize);
// A full SCAN page of the longest keys fits in one response.
const _: () = assert!(
    MAX_SCAN_PAGE as usize * (MAX_KEY_BYTES + RESULT_OVERHEAD_BYTES) + 4096
        < MAX_RESPONSE_BODY_BYTES
);
// One value of the largest size always fits in a BATCH answer.
const _: () = assert!(MAX_VALUE_BYTES + RESULT_OVERHEAD_BYTES + 4096 < MAX_RESPONSE_BODY_BYTES);
// A batch of the most items with the longest keys and no values decodes within the limit.
const _: () =
    assert!(MAX_BATCH_OPS * (MAX_KEY_BYTES + DECODED_ITEM_BYTES) <= MAX_DECODED_REQUEST_BYTES);
