//! One shard's decisions about client operations, sans-IO: the rules the node's shell
//! (`server/node/src/cluster_exec.rs`) and the simulator (`server/sim/src/clients.rs`) both
//! follow, so that the simulator checks the rules that ship.
//!
//! - [`ops`]: a write at its vnode's head and a read at its level: what each takes from the
//!   store and the replicator, and what its answer must wait for.
//!
//! Not built yet (issue 17, item 2): the shard's store, replicator and these rules as one
//! `ShardCore` value with `handle_*` inputs, `poll_*` effects and one pump loop in the shell.

pub mod ops;

pub use ops::{
    read_wait, refusal_barrier, session_ready, write_at_head, ReadWait, WriteStep, COMMIT_WAIT_MS,
    RECOVERY_WAIT_MS, SESSION_WAIT_MS, STRONG_READ_TRIES,
};
