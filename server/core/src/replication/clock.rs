//! The two clocks a replication decision may need, passed in by the caller (the core reads
//! no clock).
//!
//! Deadlines (and later leases; the shell's link silences too) run on a monotonic clock: a wall clock that NTP
//! steps back or forward would time writes out early, never, or hand out a lease twice. Wall
//! time is only for values that mean a date: a write's version and expiry are assigned by the
//! head's store, and a replica's store checks expiries against its own wall clock.

/// Now, on both clocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds since an arbitrary start (the process's, the simulation's).
    pub mono_ms: u64,
    /// Unix milliseconds.
    pub wall_ms: u64,
}

impl Now {
    /// Both clocks at `ms`: for tests and simulations whose clocks agree.
    pub fn both(ms: u64) -> Now {
        Now {
            mono_ms: ms,
            wall_ms: ms,
        }
    }
}
