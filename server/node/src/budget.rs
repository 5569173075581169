//! Memory budgets for client connections: what a client can make the node hold.
//!
//! Every byte a connection makes the node hold is charged to the connection and to the shard
//! that serves it: a partial frame (its claimed body reserved once its header is in), a decoded
//! request while it runs, the values and keys an operation copies out of the store, and the
//! encoded response until it is written to the socket. A [`Charge`] gives its bytes back when
//! dropped, so a cancelled request or a closed connection releases everything it held.
//!
//! The rules (numbers and reasons in `tessera_schema::limits`, "Connection budgets"):
//! - past `CONNECTION_SOFT_BYTES` the node stops reading the connection until its answers drain
//!   (TCP backpressure); a connection with nothing outstanding is always read, so one request
//!   of any legal size can always run;
//! - an operation may not copy bytes that would take its connection past
//!   `CONNECTION_HARD_BYTES` or its shard past its budget: that item is answered OVERLOADED;
//! - a frame over `LARGE_FRAME_BYTES` is taken only while the shard holds less than three
//!   quarters of its budget, so large frames can never crowd out small requests;
//! - a shard over its budget answers new requests OVERLOADED without buffering their bodies, and
//!   refuses new connections with a reason.
//!
//! The node's budget (`--connection-memory`) is split evenly among its shards. Charges are
//! atomic because an operation forwarded to another shard charges its bytes from there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tessera_schema::limits::{CONNECTION_HARD_BYTES, CONNECTION_SOFT_BYTES};

/// One shard's share of the node's connection budget.
#[derive(Debug)]
pub struct ShardBudget {
    used_bytes: AtomicU64,
    limit_bytes: u64,
}

impl ShardBudget {
    pub fn new(limit_bytes: u64) -> Arc<ShardBudget> {
        Arc::new(ShardBudget {
            used_bytes: AtomicU64::new(0),
            limit_bytes,
        })
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Over budget: new requests are answered OVERLOADED, new connections refused.
    pub fn is_over(&self) -> bool {
        self.used_bytes() >= self.limit_bytes
    }

    /// Whether `bytes` more fit; a large frame may only use three quarters of the budget.
    pub fn has_room(&self, bytes: u64, large: bool) -> bool {
        let limit = match large {
            true => self.limit_bytes / 4 * 3,
            false => self.limit_bytes,
        };
        self.used_bytes().saturating_add(bytes) <= limit
    }
}

/// What one connection holds, on top of its shard's total.
#[derive(Debug)]
pub struct ConnBudget {
    used_bytes: AtomicU64,
    shard: Arc<ShardBudget>,
}

impl ConnBudget {
    pub fn new(shard: &Arc<ShardBudget>) -> Arc<ConnBudget> {
        Arc::new(ConnBudget {
            used_bytes: AtomicU64::new(0),
            shard: shard.clone(),
        })
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn shard(&self) -> &Arc<ShardBudget> {
        &self.shard
    }

    /// Past the soft limit: stop reading until answers drain.
    pub fn is_over_soft(&self) -> bool {
        self.used_bytes() > CONNECTION_SOFT_BYTES
    }

    fn add(&self, bytes: u64) {
        self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.shard.used_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: u64) {
        self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.shard.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Bytes held for one purpose (a request, a response, a partial frame), given back on drop.
#[derive(Debug)]
pub struct Charge {
    conn: Arc<ConnBudget>,
    bytes: AtomicU64,
}

impl Charge {
    /// Charges `bytes` whatever the budgets say: for bytes already in memory.
    pub fn new(conn: &Arc<ConnBudget>, bytes: u64) -> Charge {
        conn.add(bytes);
        Charge {
            conn: conn.clone(),
            bytes: AtomicU64::new(bytes),
        }
    }

    /// Charges `bytes` more, if the connection stays within its hard limit and the shard
    /// within its budget; false (nothing charged) otherwise.
    pub fn try_add(&self, bytes: u64) -> bool {
        let conn = &self.conn;
        let fits = conn.used_bytes().saturating_add(bytes) <= CONNECTION_HARD_BYTES
            && conn.shard.has_room(bytes, false);
        if fits {
            conn.add(bytes);
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        fits
    }

    /// Makes this charge exactly `bytes` (the bytes it stands for changed form: a request and
    /// its values became an encoded response).
    pub fn set(&self, bytes: u64) {
        let old = self.bytes.swap(bytes, Ordering::Relaxed);
        if bytes >= old {
            self.conn.add(bytes - old);
        } else {
            self.conn.sub(old - bytes);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.conn.sub(*self.bytes.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_reach_the_connection_and_the_shard_and_come_back() {
        let shard = ShardBudget::new(100 << 20);
        let conn = ConnBudget::new(&shard);
        let request = Charge::new(&conn, 1000);
        assert!(request.try_add(500));
        assert_eq!((conn.used_bytes(), shard.used_bytes()), (1500, 1500));
        request.set(200);
        assert_eq!(shard.used_bytes(), 200);
        let other = ConnBudget::new(&shard);
        let response = Charge::new(&other, 300);
        assert_eq!(shard.used_bytes(), 500);
        drop(request);
        drop(response);
        assert_eq!((conn.used_bytes(), shard.used_bytes()), (0, 0));
    }

    #[test]
    fn a_connection_cannot_pass_its_hard_limit_nor_its_shard_its_budget() {
        let shard = ShardBudget::new(CONNECTION_HARD_BYTES * 4);
        let conn = ConnBudget::new(&shard);
        let charge = Charge::new(&conn, 0);
        assert!(charge.try_add(CONNECTION_HARD_BYTES));
        assert!(!charge.try_add(1), "the connection's hard limit");
        assert!(conn.is_over_soft());
        let small_shard = ShardBudget::new(1000);
        let conn = ConnBudget::new(&small_shard);
        let charge = Charge::new(&conn, 900);
        assert!(!charge.try_add(200), "the shard's budget");
        assert!(charge.try_add(100));
        assert!(small_shard.is_over());
    }

    #[test]
    fn large_frames_leave_a_quarter_of_the_budget_to_small_requests() {
        let shard = ShardBudget::new(1000);
        let conn = ConnBudget::new(&shard);
        let _held = Charge::new(&conn, 700);
        assert!(shard.has_room(50, true));
        assert!(!shard.has_room(100, true));
        assert!(shard.has_room(300, false));
    }
}
