//! Chain replication of a shard's vnodes, as a state machine with no I/O.
//!
//! Every vnode is replicated along its chain (`placement.rs`): head, middle, tail. The head
//! takes the vnode's writes (the shell applies them to its store, which numbers them), and
//! streams them down the chain; each replica applies them in sequence order and acknowledges
//! upstream what it has applied and made durable, and what every replica after it has. Every
//! message carries the chain's epoch; other epochs are dropped.
//!
//! What each level waits for (DESIGN.md): `eventual` the head has it, `session` head and
//! middle have it, `strong` every replica has it ("has it": appended, or durable when the
//! request or `--fsync always` asks for durability, `Config::durable_commit`). A write whose
//! ack point is not reached within `Config::write_timeout_ms` fails with "outcome unknown".
//!
//! Commit: a write is committed once every replica has it (durable under `durable_commit`).
//! Each replica learns what its predecessors have from the `Append`s it receives (`prefix`) and
//! what its successors have from the `Ack`s (`suffix`), so every replica knows the commit point
//! and tells its store (`VnodeStore::set_committed`): `strong` reads anywhere in the chain show
//! only committed writes (CRAQ's clean reads, waiting instead of asking the tail).
//!
//! Catch-up: a replica that (re)connects to its predecessor sends its `Position`; the
//! predecessor resends from its retention queue (the entries its successor has not made
//! durable, bounded in bytes) when it holds them, and otherwise transfers the vnode's state
//! newer than that position in numbered parts (`vnode/transfer.rs`: values in version order, then
//! the live key digests by range, so that the receiver drops keys deleted meanwhile;
//! tombstones need not be kept for replicas that were away). Then the live stream goes on.
//! A transfer cut short resumes from the receiver's position, never from the queue.
//!
//! Restarts and invariants: every replica's copy is a prefix of the head's history. A head that
//! restarts may have lost writes it had streamed (they were not durable yet); before it takes
//! writes again it asks every replica where it stands (`Probe`) and pulls the state of the one
//! furthest ahead (`PullState`), so it never hands out a sequence number twice. A replica whose
//! successor is ahead of it (it lost writes in a crash that its successor kept) waits until it
//! has caught up from its predecessor before it streams again.
//!
//! Backpressure: a link's stream pauses while the shell reports more than
//! `Config::outbox_limit_bytes` unwritten on it (`Replicator::handle_outbox`). When a connected
//! successor is slow, the retention queues fill up to `Config::queue_limit_bytes`: the head
//! refuses new writes OVERLOADED, and a replica that is behind its successor refuses appends (it
//! asks for them again once its queues have room or its successor has caught up), so a slow
//! tail pushes back through the middle to the head. A tail always takes appends: every chain drains from its end, and refusals cannot
//! wait on each other in a cycle. When a successor is down, what does not fit is dropped and
//! the successor gets a state transfer when it returns, so `eventual` writes go on.

mod clock;
mod msg;
mod progress;
mod replicator;
mod store_adapter;
mod vnode;

pub use clock::Now;
pub use msg::{Body, Entry, KeepRange, Level, Outgoing, PeerMsg, Position, Watermarks};
pub use progress::{CatchUps, Progress, SuccessorLag};
pub use replicator::{
    Config, Effect, Refusal, Replicator, StatePart, Ticket, VnodeStore, WriteFailure,
};

#[cfg(test)]
mod testkit;
