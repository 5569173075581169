//! tessera-lincheck: is a recorded history of key-value operations linearizable?
//!
//! A history is the operations clients issued, each with the moment it was called, the moment
//! its answer came back, and the answer. It is linearizable when every operation can be given
//! one instant inside its own call..return window such that, taken in that order, the answers
//! are those of a single copy of the store. That is what `strong` promises, and what a single
//! node promises under `--fsync always` even while it is killed.
//!
//! The search is Wing and Gong's, with Lowe's memo of (operations linearized, state) pairs, as
//! Porcupine and Knossos run it. Linearizability is compositional (Herlihy and Wing), so each
//! key is checked on its own: a few hundred operations per key check in milliseconds.
//!
//! The model is a versioned register per key (`model.rs`): GET, PUT and DELETE with optional
//! compare-and-set on the version, versions that only grow. An operation whose outcome the
//! client never learned (the connection broke, the node was killed, the answer said "outcome
//! unknown") may have taken effect or not, at any instant between its call and the moment the
//! client gave up on it; give that moment as its return (after a kill -9 nothing can take
//! effect later), or `u64::MAX` when it could take effect at any time after its call.
//!
//! Why our own and not a crate: stateright's tester drags in its model checker and its
//! dependencies, Porcupine and Knossos are Go and Clojure; the search is a hundred lines and is
//! tested below against histories known to be wrong.

mod model;
mod search;

pub use model::{Call, Outcome, State};
pub use search::{check_key, KeyVerdict};

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Which client issued it (for the report only).
    pub client: u32,
    pub key: Vec<u8>,
    pub call: Call,
    pub outcome: Outcome,
    /// When the call was made, in nanoseconds on one clock for the whole history.
    pub call_ns: u64,
    /// When the answer arrived (or the client gave up on it); `u64::MAX`: never.
    pub return_ns: u64,
}

/// The answer for a whole history.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable {
        keys: usize,
        ops: usize,
    },
    /// No order explains this key's answers.
    Violation {
        key: Vec<u8>,
        report: String,
    },
    /// The search gave up before deciding (more than `max_steps` steps on one key).
    TooHard {
        key: Vec<u8>,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable { .. })
    }
}

/// Steps of the search allowed per key before it gives up: far beyond what the histories of
/// our tests need (they take thousands), and still a few seconds at most.
pub const DEFAULT_MAX_STEPS: u64 = 50_000_000;

/// Checks every key of `ops` on its own.
pub fn check(ops: &[Op]) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let keys = by_key.len();
    for (key, key_ops) in by_key {
        match check_key(&key_ops, DEFAULT_MAX_STEPS) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violation(report) => {
                return Verdict::Violation {
                    key: key.to_vec(),
                    report,
                }
            }
            KeyVerdict::TooHard => return Verdict::TooHard { key: key.to_vec() },
        }
    }
    Verdict::Linearizable {
        keys,
        ops: ops.len(),
    }
}

/// Records a history from many threads or tasks: `call` before sending, `finish` when the
/// answer (or the failure) is known. Times come from one monotonic clock.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }
}

/// An operation called and not yet finished.
#[must_use = "finish the operation with its outcome"]
pub struct Pending {
    client: u32,
    key: Vec<u8>,
    call: Call,
    call_ns: u64,
}

impl Recorder {
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn call(&self, client: u32, key: &[u8], call: Call) -> Pending {
        Pending {
            client,
            key: key.to_vec(),
            call,
            call_ns: self.now_ns(),
        }
    }

    /// The answer arrived now. An `Outcome::Unknown` finished now may have taken effect at
    /// any time up to now, and no later.
    pub fn finish(&self, pending: Pending, outcome: Outcome) {
        self.finish_at(pending, outcome, self.now_ns());
    }

    pub fn finish_at(&self, pending: Pending, outcome: Outcome, return_ns: u64) {
        let op = Op {
            client: pending.client,
            key: pending.key,
            call: pending.call,
            outcome,
            call_ns: pending.call_ns,
            return_ns,
        };
        self.ops.lock().expect("recorder lock").push(op);
    }

    /// A read that failed has no effect: it is left out of the history.
    pub fn forget(&self, pending: Pending) {
        drop(pending);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("recorder lock").clone()
    }
}

#[cfg(test)]
mod tests;
