//! Who a client connection is: the node's logins (`--users`) and each connection's session.
//!
//! With users, a connection starts anonymous, unless its TLS client certificate names a user
//! (`certificate` in the users file). An anonymous connection may only AUTH; anything else is
//! answered UNAUTHENTICATED, and one that has not logged in within `--login-timeout-ms` is closed,
//! so a connection slot cannot be held without credentials. Passwords are checked with argon2
//! on the executor's blocking thread (glommio's `spawn_blocking`, unpinned: `main.rs`), never on
//! the shard's core, at most `VERIFYING_PER_SHARD` per shard at once (past it: OVERLOADED).
//! An address that failed `AUTH_FAILURES_PER_WINDOW` times in a window has its AUTHs refused
//! unchecked until the window ends (`access::FailureLimiter`, node-wide). A password that
//! passed argon2 before is known again without it (`users.rs`). Clients hear one
//! message for an unknown user and a wrong password, and an unknown user costs the same
//! argon2 time (`users::Check`).
//!
//! Without users, every connection may do everything (the node refuses to start so off
//! loopback unless `--insecure`: `main.rs`), and an AUTH is answered OK so that clients given
//! credentials work against such a node while a fleet turns users on.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tessera_schema::msg::{AuthRequest, OpResult, Request, Status};
use tessera_schema::verify::Refusal;

use crate::access::{authorize, FailureLimiter, Grant};
use crate::metrics::ShardMetrics;
use crate::users::{Attempt, User, Users};

/// Password checks (argon2, ~20 ms of a core each) running or queued per shard.
pub const VERIFYING_PER_SHARD: u32 = 4;

/// The node's users and what logging in needs across shards.
#[derive(Debug)]
pub struct Logins {
    pub users: Users,
    failures: Mutex<FailureLimiter>,
    verifying: AtomicU32,
    max_verifying: u32,
    /// How long a connection may stay anonymous (`--login-timeout-ms`).
    pub deadline: Duration,
}

impl Logins {
    pub fn new(users: Users, shards: u16, deadline: Duration) -> Logins {
        Logins {
            users,
            failures: Mutex::new(FailureLimiter::default()),
            verifying: AtomicU32::new(0),
            max_verifying: VERIFYING_PER_SHARD * u32::from(shards),
            deadline,
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.failures.lock().expect("login failures lock")
    }
}

enum Identity {
    /// The node has no users.
    Open,
    Anonymous,
    /// Logged in; `generation` is the users file's reading the user was found in.
    User {
        user: Arc<User>,
        generation: u64,
    },
}

/// One connection's login.
pub struct Session {
    logins: Option<Arc<Logins>>,
    address: IpAddr,
    identity: RefCell<Identity>,
    opened: Instant,
}

fn unauthenticated(message: impl Into<String>) -> Refusal {
    Refusal {
        status: Status::Unauthenticated,
        message: message.into(),
    }
}

impl Session {
    /// A connection from `address`, with the client certificate it presented, if any.
    pub fn new(
        logins: Option<Arc<Logins>>,
        address: IpAddr,
        certificate: Option<&CertificateDer<'_>>,
        metrics: &ShardMetrics,
    ) -> Session {
        let identity = match &logins {
            None => Identity::Open,
            Some(logins) => {
                let generation = logins.users.generation();
                let table = logins.users.current();
                match certificate.and_then(|cert| table.by_certificate(cert)) {
                    Some(user) => {
                        metrics.logged_in("certificate");
                        Identity::User {
                            user: user.clone(),
                            generation,
                        }
                    }
                    None => Identity::Anonymous,
                }
            }
        };
        Session {
            logins,
            address,
            identity: RefCell::new(identity),
            opened: Instant::now(),
        }
    }

    /// When the connection must have logged in, while it has not.
    pub fn deadline(&self) -> Option<Instant> {
        match (&*self.identity.borrow(), &self.logins) {
            (Identity::Anonymous, Some(logins)) => Some(self.opened + logins.deadline),
            _ => None,
        }
    }

    /// The connection's user as the users file has it now (`None`: the node has no users).
    fn user(&self) -> Result<Option<Arc<User>>, Refusal> {
        let Some(logins) = &self.logins else {
            return Ok(None);
        };
        let mut identity = self.identity.borrow_mut();
        let (name, seen) = match &*identity {
            Identity::Open => return Ok(None),
            Identity::Anonymous => {
                return Err(unauthenticated(
                    "this node has users: send AUTH first (tessera --user, or a client \
                     certificate mapped to a user)",
                ))
            }
            Identity::User { user, generation } => (user.name.clone(), *generation),
        };
        let generation = logins.users.generation();
        if seen == generation {
            let Identity::User { user, .. } = &*identity else {
                unreachable!("matched above")
            };
            return Ok(Some(user.clone()));
        }
        match logins.users.current().find(&name) {
            Some(user) => {
                *identity = Identity::User {
                    user: user.clone(),
                    generation,
                };
                Ok(Some(user.clone()))
            }
            None => {
                *identity = Identity::Anonymous;
                Err(unauthenticated(format!(
                    "user {name} is no longer in the users file"
                )))
            }
        }
    }

    /// What the connection may do of `request`; the user for grants that need it later.
    pub fn authorize(
        &self,
        request: &Request,
        metrics: &ShardMetrics,
    ) -> Result<(Grant, Option<Arc<User>>), Refusal> {
        let refused = |refusal: Refusal| {
            let reason = match refusal.status {
                Status::Unauthenticated => "unauthenticated",
                _ => "permission_denied",
            };
            metrics.auth_failed(reason);
            refusal
        };
        let Some(user) = self.user().map_err(refused)? else {
            return Ok((Grant::Whole, None));
        };
        let grant = authorize(&user, request).map_err(refused)?;
        Ok((grant, Some(user)))
    }

    fn logged_in(&self, user: Arc<User>, generation: u64, metrics: &ShardMetrics) -> OpResult {
        metrics.logged_in("password");
        *self.identity.borrow_mut() = Identity::User { user, generation };
        OpResult::ok(0)
    }

    /// Checks an AUTH and logs the connection in on success.
    pub async fn login(&self, auth: AuthRequest, metrics: &ShardMetrics) -> OpResult {
        let Some(logins) = self.logins.clone() else {
            return OpResult {
                message: "this node has no users: AUTH is not needed".into(),
                ..OpResult::ok(0)
            };
        };
        if let Err(wait) = logins.failures().check(self.address, Instant::now()) {
            metrics.auth_failed("rate_limited");
            let message = format!(
                "too many failed logins from {}; retry in {} s",
                self.address,
                wait.as_secs().max(1)
            );
            return OpResult::error(Status::Unauthenticated, message);
        }
        let generation = logins.users.generation();
        let check = match logins.users.attempt(&auth.user, auth.password) {
            Attempt::Remembered(user) => return self.logged_in(user, generation, metrics),
            Attempt::Check(check) => check,
        };
        if logins.verifying.fetch_add(1, Ordering::SeqCst) >= logins.max_verifying {
            logins.verifying.fetch_sub(1, Ordering::SeqCst);
            metrics.auth_failed("busy");
            let message = "too many logins are being checked; retry shortly";
            return OpResult::error(Status::Overloaded, message);
        }
        let outcome = glommio::executor()
            .spawn_blocking(move || check.run())
            .await;
        logins.verifying.fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Ok(verified) => {
                let user = logins.users.remember(verified, generation);
                self.logged_in(user, generation, metrics)
            }
            Err(failure) => {
                metrics.auth_failed(failure.reason());
                logins.failures().failed(self.address, Instant::now());
                OpResult::error(Status::Unauthenticated, "bad user name or password")
            }
        }
    }
}
