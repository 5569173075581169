//! What a connection's user may do with one request, and how often an address may fail to log
//! in. Pure decisions: the connection (conn.rs) applies them.
//!
//! A forbidden request is refused before any key is looked up, so PERMISSION_DENIED says
//! nothing of whether a key exists. A BATCH is checked item by item: the allowed items run,
//! the others answer PERMISSION_DENIED in their places. A SCAN whose prefix lies inside the
//! user's read prefixes runs as asked; one that only overlaps them runs and its page is
//! filtered key by key (a page may then hold fewer keys than asked, as pages with a prefix
//! already may); one that reaches none of them is refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tessera_schema::msg::{BatchOp, OpResult, Request, Response, Status};
use tessera_schema::verify::Refusal;

use crate::users::{ScanReach, User};

/// How a request may run.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    /// As asked.
    Whole,
    /// A SCAN whose answer keeps only the keys the user may read.
    FilteredScan,
    /// A BATCH whose items at these indices (ascending) are refused.
    PartBatch(Vec<usize>),
}

fn denied(message: String) -> Refusal {
    Refusal {
        status: Status::PermissionDenied,
        message,
    }
}

fn needs_admin(user: &User, what: &str) -> Result<Grant, Refusal> {
    match user.admin {
        true => Ok(Grant::Whole),
        false => Err(denied(format!(
            "{what} needs the admin permission; user {} has not",
            user.name
        ))),
    }
}

fn op_allowed(user: &User, op: &BatchOp) -> bool {
    match op {
        BatchOp::Get { key } => user.read.allows(key),
        BatchOp::Put(put) => user.write.allows(&put.key),
        BatchOp::Delete(delete) => user.write.allows(&delete.key),
    }
}

/// The refusal of one key operation (the same words whether or not the key exists).
pub fn op_refusal(user: &User, op: &BatchOp) -> Refusal {
    let right = match op {
        BatchOp::Get { .. } => "read",
        BatchOp::Put(_) | BatchOp::Delete(_) => "write",
    };
    denied(format!(
        "user {} may not {right} this key (outside its {right} prefixes)",
        user.name
    ))
}

/// What `user` may do of `request` (AUTH is the connection's business, not this).
pub fn authorize(user: &User, request: &Request) -> Result<Grant, Refusal> {
    match request {
        Request::Ping | Request::Auth(_) => Ok(Grant::Whole),
        Request::Get { key } => single(user, &BatchOp::Get { key: key.clone() }),
        Request::Put(put) => match user.write.allows(&put.key) {
            true => Ok(Grant::Whole),
            false => Err(op_refusal(user, &BatchOp::Put(put.clone()))),
        },
        Request::Delete(delete) => match user.write.allows(&delete.key) {
            true => Ok(Grant::Whole),
            false => Err(op_refusal(user, &BatchOp::Delete(delete.clone()))),
        },
        Request::Batch(ops) => {
            let refused: Vec<usize> = (0..ops.len())
                .filter(|&i| !op_allowed(user, &ops[i]))
                .collect();
            Ok(match refused.is_empty() {
                true => Grant::Whole,
                false => Grant::PartBatch(refused),
            })
        }
        Request::Scan(scan) => match user.read.scan_reach(&scan.prefix) {
            ScanReach::Whole => Ok(Grant::Whole),
            ScanReach::Part => Ok(Grant::FilteredScan),
            ScanReach::None => Err(denied(format!(
                "user {} may read no key this scan could list",
                user.name
            ))),
        },
        Request::Stats => needs_admin(user, "STATS"),
        Request::Verify { .. } => needs_admin(user, "VERIFY"),
        Request::Topology if user.route => Ok(Grant::Whole),
        Request::Topology => needs_admin(user, "TOPOLOGY (or the route permission)"),
    }
}

fn single(user: &User, op: &BatchOp) -> Result<Grant, Refusal> {
    match op_allowed(user, op) {
        true => Ok(Grant::Whole),
        false => Err(op_refusal(user, op)),
    }
}

/// Splits a batch granted in part: the items that may run, and the refused ones' results
/// with their places.
pub fn split_batch(
    user: &User,
    ops: Vec<BatchOp>,
    refused: &[usize],
) -> (Vec<BatchOp>, Vec<(usize, OpResult)>) {
    let mut kept = Vec::with_capacity(ops.len() - refused.len());
    let mut refusals = Vec::with_capacity(refused.len());
    for (index, op) in ops.into_iter().enumerate() {
        match refused.binary_search(&index) {
            Ok(_) => {
                let refusal = op_refusal(user, &op);
                refusals.push((index, OpResult::error(refusal.status, refusal.message)));
            }
            Err(_) => kept.push(op),
        }
    }
    (kept, refusals)
}

/// The answer of a batch granted in part: the kept items' answer with the refused items put
/// back in their places. An answer that is not a batch's (the whole request failed) stays.
pub fn merge_batch(answer: Response, refusals: Vec<(usize, OpResult)>) -> Response {
    let Response::Batch(ran) = answer else {
        return answer;
    };
    let mut ran = ran.into_iter();
    let mut refusals = refusals.into_iter().peekable();
    let mut merged = Vec::new();
    loop {
        if refusals
            .peek()
            .is_some_and(|(index, _)| *index == merged.len())
        {
            merged.push(refusals.next().expect("peeked").1);
            continue;
        }
        match ran.next() {
            Some(result) => merged.push(result),
            None => break,
        }
    }
    merged.extend(refusals.map(|(_, result)| result));
    Response::Batch(merged)
}

/// A SCAN page with only the keys `user` may read.
pub fn filter_scan(user: &User, answer: Response) -> Response {
    match answer {
        Response::Scan(mut page) => {
            page.entries.retain(|entry| user.read.allows(&entry.key));
            Response::Scan(page)
        }
        other => other,
    }
}

/// Failed logins an address may make in one window before its AUTHs are refused unchecked.
pub const AUTH_FAILURES_PER_WINDOW: u32 = 10;
/// The window of `AUTH_FAILURES_PER_WINDOW`.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; past it, new addresses share one window (so a flood from many
/// addresses is limited together rather than forgetting the ones tracked).
pub const AUTH_TRACKED_ADDRESSES: usize = 16 * 1024;

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failed logins per source address, in fixed windows (as fail2ban counts them).
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: HashMap<IpAddr, Window>,
    /// The window shared by addresses that found the table full.
    overflow: Option<Window>,
}

impl FailureLimiter {
    fn window(&mut self, address: IpAddr, now: Instant) -> Option<&mut Window> {
        let live = |w: &Window| now.saturating_duration_since(w.started) < AUTH_FAILURE_WINDOW;
        if self.windows.get(&address).is_some_and(|w| !live(w)) {
            self.windows.remove(&address);
        }
        if self.overflow.as_ref().is_some_and(|w| !live(w)) {
            self.overflow = None;
        }
        if self.windows.contains_key(&address) {
            return self.windows.get_mut(&address);
        }
        match self.windows.len() >= AUTH_TRACKED_ADDRESSES {
            true => self.overflow.as_mut(),
            false => None,
        }
    }

    /// `Err(retry after)` when `address` failed too often in its window.
    pub fn check(&mut self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.window(address, now) {
            Some(w) if w.failures >= AUTH_FAILURES_PER_WINDOW => {
                Err(AUTH_FAILURE_WINDOW.saturating_sub(now.saturating_duration_since(w.started)))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed login from `address`.
    pub fn failed(&mut self, address: IpAddr, now: Instant) {
        if let Some(window) = self.window(address, now) {
            window.failures += 1;
            return;
        }
        let fresh = Window {
            started: now,
            failures: 1,
        };
        if self.windows.len() >= AUTH_TRACKED_ADDRESSES {
            self.windows
                .retain(|_, w| now.saturating_duration_since(w.started) < AUTH_FAILURE_WINDOW);
        }
        if self.windows.len() < AUTH_TRACKED_ADDRESSES {
            self.windows.insert(address, fresh);
        } else {
            self.overflow = Some(fresh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::parse;
    use tessera_schema::msg::{DeleteRequest, Durability, PutRequest, ScanRequest};

    fn app() -> std::sync::Arc<User> {
        let text = "[[user]]\nname = \"app\"\ncertificate = \"app\"\nread = [\"app:\", \"pub:\"]\n\
                    write = [\"app:\"]\n";
        parse(text).unwrap().find("app").unwrap().clone()
    }

    fn put(key: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ttl_ms: 0,
            if_version: None,
            durability: Durability::Default,
        }
    }

    #[test]
    fn keys_are_checked_against_the_prefixes() {
        let user = app();
        let get = |k: &str| Request::Get { key: k.into() };
        assert_eq!(authorize(&user, &get("app:1")), Ok(Grant::Whole));
        assert_eq!(authorize(&user, &get("pub:1")), Ok(Grant::Whole));
        let refused = authorize(&user, &get("other")).unwrap_err();
        assert_eq!(refused.status, Status::PermissionDenied);
        assert_eq!(
            authorize(&user, &Request::Put(put("app:1"))),
            Ok(Grant::Whole)
        );
        assert!(authorize(&user, &Request::Put(put("pub:1"))).is_err());
        let delete = Request::Delete(DeleteRequest {
            key: b"pub:1".to_vec(),
            if_version: None,
            durability: Durability::Default,
        });
        assert!(authorize(&user, &delete).is_err());
    }

    #[test]
    fn batches_are_checked_item_by_item() {
        let user = app();
        let batch = Request::Batch(vec![
            BatchOp::Get {
                key: b"app:1".to_vec(),
            },
            BatchOp::Put(put("pub:1")),
            BatchOp::Get {
                key: b"pub:1".to_vec(),
            },
            BatchOp::Get {
                key: b"zzz".to_vec(),
            },
        ]);
        assert_eq!(authorize(&user, &batch), Ok(Grant::PartBatch(vec![1, 3])));
    }

    #[test]
    fn refused_items_answer_in_their_places() {
        let user = app();
        let ops = vec![
            BatchOp::Put(put("x")),
            BatchOp::Get {
                key: b"app:1".to_vec(),
            },
            BatchOp::Get { key: b"y".to_vec() },
            BatchOp::Get {
                key: b"app:2".to_vec(),
            },
            BatchOp::Get { key: b"z".to_vec() },
        ];
        let (kept, refusals) = split_batch(&user, ops, &[0, 2, 4]);
        assert_eq!(kept.len(), 2);
        let ran = Response::Batch(vec![OpResult::ok(1), OpResult::ok(2)]);
        let Response::Batch(merged) = merge_batch(ran, refusals) else {
            panic!("a batch answer")
        };
        let statuses: Vec<(Status, u64)> = merged.iter().map(|r| (r.status, r.version)).collect();
        let denied = (Status::PermissionDenied, 0);
        assert_eq!(
            statuses,
            [denied, (Status::Ok, 1), denied, (Status::Ok, 2), denied]
        );
        let failed = Response::error(Status::Overloaded, "busy");
        assert_eq!(merge_batch(failed.clone(), vec![]), failed);
    }

    #[test]
    fn scans_run_whole_filtered_or_not_at_all() {
        let user = app();
        let scan = |prefix: &str| {
            Request::Scan(ScanRequest {
                prefix: prefix.into(),
                ..ScanRequest::default()
            })
        };
        assert_eq!(authorize(&user, &scan("app:x")), Ok(Grant::Whole));
        assert_eq!(authorize(&user, &scan("")), Ok(Grant::FilteredScan));
        assert!(authorize(&user, &scan("zzz")).is_err());
    }

    #[test]
    fn operations_need_admin_and_topology_route() {
        let user = app();
        for request in [
            Request::Stats,
            Request::Topology,
            Request::Verify {
                from_vnode: 0,
                count: 1,
                values: false,
            },
        ] {
            let refused = authorize(&user, &request).unwrap_err();
            assert_eq!(refused.status, Status::PermissionDenied, "{request:?}");
        }
        let mut router = (*user).clone();
        router.route = true;
        assert_eq!(authorize(&router, &Request::Topology), Ok(Grant::Whole));
        assert!(authorize(&router, &Request::Stats).is_err());
        let mut admin = (*user).clone();
        admin.admin = true;
        assert_eq!(authorize(&admin, &Request::Stats), Ok(Grant::Whole));
        assert_eq!(authorize(&admin, &Request::Topology), Ok(Grant::Whole));
        assert_eq!(authorize(&user, &Request::Ping), Ok(Grant::Whole));
    }

    #[test]
    fn an_address_that_fails_too_often_waits_out_its_window() {
        let mut limiter = FailureLimiter::default();
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        for _ in 0..AUTH_FAILURES_PER_WINDOW {
            assert_eq!(limiter.check(a, start), Ok(()));
            limiter.failed(a, start);
        }
        let wait = limiter
            .check(a, start + Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(wait, AUTH_FAILURE_WINDOW - Duration::from_secs(1));
        assert_eq!(
            limiter.check(b, start),
            Ok(()),
            "another address is not held"
        );
        assert_eq!(limiter.check(a, start + AUTH_FAILURE_WINDOW), Ok(()));
    }

    #[test]
    fn addresses_past_the_table_share_one_window() {
        let mut limiter = FailureLimiter::default();
        let now = Instant::now();
        for i in 0..AUTH_TRACKED_ADDRESSES as u32 {
            limiter.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        let late = |i: u32| IpAddr::from((u32::MAX - i).to_be_bytes());
        for i in 0..AUTH_FAILURES_PER_WINDOW {
            assert_eq!(limiter.check(late(i), now), Ok(()));
            limiter.failed(late(i), now);
        }
        assert!(
            limiter.check(late(999), now).is_err(),
            "the overflow window is full"
        );
        assert_eq!(limiter.check(IpAddr::from([0, 0, 0, 1]), now), Ok(()));
        let later = now + AUTH_FAILURE_WINDOW;
        assert_eq!(limiter.check(late(999), later), Ok(()));
    }
}
