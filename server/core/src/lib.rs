//! tessera-core: the cluster's logic, with no I/O (DESIGN.md, "Sans-IO cores, thin shells").
//!
//! Inputs come in as `handle_*` calls with `now`, effects go out through `poll_*`; nothing here
//! opens a socket or a file, reads a clock or draws a random number, so that the same code runs
//! in the glommio shell, in unit tests and in the seeded simulator (`tessera-sim`).
//!
//! - [`placement`]: the chain table (vnode -> replicas, head first, with an epoch) and the
//!   planner that builds it and changes it with the fewest moves.
//! - [`replication`]: chain replication of a shard's vnodes: the head's stream, acks, the
//!   commit point, catch-up and state transfer, per-operation consistency.
//! - [`shard`]: a client operation at its level on one shard (admission, the store, what
//!   the answer waits for).

pub mod placement;
pub mod replication;
pub mod shard;
