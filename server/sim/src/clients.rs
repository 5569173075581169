//! Simulated clients and what is checked of their answers.
//!
//! Two kinds of keys:
//! - shared keys: every client reads and writes them at `strong` (with compare-and-set and
//!   deletes); their history must be linearizable (`tessera-lincheck`);
//! - owned keys: each is written by one client only, at random levels, and read by it at
//!   `session`: every read must show the client's last write acknowledged at `session` or
//!   `strong` or a later one (read-your-writes), and at the end each key must hold every
//!   acknowledged write outside its level's loss window, or a later one (`loss.rs`).
//!
//! Writes go to the vnode's head and are answered by the replicator's `WriteDone`; reads go
//! to a random live replica and wait for what they reveal: a `strong` read for the key's
//! newest write to be committed, a `session` read for the replica to have applied the client's
//! token. Those rules and their time bounds are the node's own (`tessera_core::shard::ops`,
//! which `server/node/src/cluster_exec.rs` runs too); only the waiting is done here, in
//! virtual time. An answer a node gives is taken as of the moment it was asked
//! (the value it read then), and given once its barrier is passed.

use std::collections::BTreeMap;

use tessera_core::placement::NodeId;
use tessera_core::replication::{Level, Refusal, Ticket};
use tessera_core::shard::{ops, ReadWait, WriteStep};
use tessera_lincheck::{Call, Op, Outcome};
use tessera_schema::placement::vnode_of;
use tessera_store::{finish_read, Barrier, Lookup, Write, WriteError};

use crate::loss::Issued;
use crate::world::{Completion, World};

/// How long a client waits for a stopped (paused) node's answer before it gives up.
const READ_TIMEOUT_MS: u64 = 3_000;

#[derive(Debug)]
enum Pending {
    Write {
        node: NodeId,
        ticket: Ticket,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        version: u64,
        level: Level,
        call: Call,
        call_ms: u64,
    },
    /// An answer read at `call_ms`, held until what it waits for is visible
    /// (`tessera_core::shard::ops::read_wait`); `tries`: lookups made so far.
    Answer {
        node: NodeId,
        key: Vec<u8>,
        level: Level,
        outcome: Outcome,
        wait: ReadWait,
        tries: u32,
        call: Call,
        call_ms: u64,
    },
    /// A `session` read waiting for the replica to apply the client's token.
    SessionRead {
        node: NodeId,
        key: Vec<u8>,
        token: u64,
        call_ms: u64,
    },
}

struct Client {
    id: u32,
    pending: Option<Pending>,
    /// The newest sequence number per vnode this client wrote or read (its session token).
    tokens: BTreeMap<u16, u64>,
    /// Per owned key: the version of its last write acknowledged at `session` or `strong`.
    floor: BTreeMap<Vec<u8>, u64>,
    /// Per shared key: the version this client last saw (0: absent), for compare-and-set.
    seen: BTreeMap<Vec<u8>, u64>,
    written: u64,
}

pub struct Clients {
    clients: Vec<Client>,
    shared_keys: Vec<Vec<u8>>,
    /// Strong operations on shared keys, for the linearizability check.
    pub history: Vec<Op>,
    /// Per owned key, every write its owner issued (`loss.rs`).
    issued: BTreeMap<Vec<u8>, Vec<Issued>>,
    pub violations: Vec<String>,
    pub acked_writes: u64,
    pub reads: u64,
}

fn owned_key(client: u32, i: u64) -> Vec<u8> {
    format!("c{client}-k{i}").into_bytes()
}

impl Clients {
    pub fn new(count: u32, shared_keys: u32) -> Clients {
        Clients {
            clients: (0..count)
                .map(|id| Client {
                    id,
                    pending: None,
                    tokens: BTreeMap::new(),
                    floor: BTreeMap::new(),
                    seen: BTreeMap::new(),
                    written: 0,
                })
                .collect(),
            shared_keys: (0..shared_keys)
                .map(|i| format!("shared-{i}").into_bytes())
                .collect(),
            history: Vec::new(),
            issued: BTreeMap::new(),
            violations: Vec::new(),
            acked_writes: 0,
            reads: 0,
        }
    }

    fn ns(ms: u64) -> u64 {
        ms * 1_000_000
    }

    /// Idle clients may start an operation.
    pub fn start_some(&mut self, world: &mut World) {
        for index in 0..self.clients.len() {
            if self.clients[index].pending.is_some() || world.rng.below(4) != 0 {
                continue;
            }
            let shared = world.rng.below(2) == 0;
            let pending = if shared {
                self.start_shared(index, world)
            } else {
                self.start_owned(index, world)
            };
            self.clients[index].pending = pending;
        }
    }

    fn start_shared(&mut self, index: usize, world: &mut World) -> Option<Pending> {
        let key = self.shared_keys[world.rng.below(self.shared_keys.len() as u64) as usize].clone();
        let id = self.clients[index].id;
        let call = match world.rng.below(10) {
            0..=3 => Call::Get,
            4..=6 => Call::Put {
                value: format!("c{id}-{}", world.now_ms).into_bytes(),
                if_version: None,
            },
            7 => Call::Put {
                value: format!("c{id}-cas-{}", world.now_ms).into_bytes(),
                if_version: Some(self.cas_version(index, &key, world)),
            },
            _ => Call::Delete { if_version: None },
        };
        match call {
            Call::Get => self.read(index, world, key, Level::Strong, Call::Get),
            _ => self.write(index, world, key, Level::Strong, call),
        }
    }

    /// The version a compare-and-set expects: with `cas_current`, often the one this client
    /// last saw (so that some succeed on a key that exists), else 0 or 1.
    fn cas_version(&self, index: usize, key: &[u8], world: &mut World) -> u64 {
        if world.config.more.cas_current && world.fault_rng.below(3) != 0 {
            return self.clients[index].seen.get(key).copied().unwrap_or(0);
        }
        world.rng.below(2)
    }

    /// Remembers the version an answer on a shared key showed.
    fn saw(&mut self, index: usize, key: &[u8], outcome: &Outcome) {
        let version = match outcome {
            Outcome::Found { version, .. } | Outcome::Written { version } => *version,
            Outcome::VersionMismatch { current } => *current,
            Outcome::NotFound | Outcome::Deleted => 0,
            _ => return,
        };
        self.clients[index].seen.insert(key.to_vec(), version);
    }

    fn start_owned(&mut self, index: usize, world: &mut World) -> Option<Pending> {
        let id = self.clients[index].id;
        let key = owned_key(id, world.rng.below(3));
        if world.rng.below(2) == 0 {
            return self.read(index, world, key, Level::Session, Call::Get);
        }
        let level = match world.rng.below(3) {
            0 => Level::Eventual,
            1 => Level::Session,
            _ => Level::Strong,
        };
        self.clients[index].written += 1;
        let text = format!("c{id}-w{}", self.clients[index].written);
        let value = (world.rng.below(5) != 0).then(|| world.owned_value(text));
        let call = match value {
            Some(value) => Call::Put {
                value,
                if_version: None,
            },
            None => Call::Delete { if_version: None },
        };
        self.write(index, world, key, level, call)
    }

    fn vnode(world: &World, key: &[u8]) -> u16 {
        vnode_of(key, world.config.vnodes)
    }

    fn write(
        &mut self,
        index: usize,
        world: &mut World,
        key: Vec<u8>,
        level: Level,
        call: Call,
    ) -> Option<Pending> {
        let vnode = Self::vnode(world, &key);
        let head = world.table.chain(u32::from(vnode)).head();
        let epoch = world.table.chain(u32::from(vnode)).epoch as u32;
        let now = world.now_ms;
        let clock = world.clock(head);
        if !world.serves(head) {
            return None;
        }
        let (value, if_version) = match &call {
            Call::Put { value, if_version } => (Some(value.clone()), *if_version),
            Call::Delete { if_version } => (None, *if_version),
            Call::Get => unreachable!("a write"),
        };
        let ttl_ms = match key.starts_with(b"shared") || value.is_none() {
            true => 0,
            false => world.owned_ttl_ms(),
        };
        let running = world.running(head)?;
        let write = Write {
            vnode,
            key: &key,
            value: value.as_deref(),
            ttl_ms,
            if_version,
            sync: false,
            epoch,
        };
        let step = ops::write_at_head(
            &mut running.store,
            &mut running.replicator,
            write,
            level,
            clock,
        );
        match step {
            WriteStep::Accepted { ack, ticket } => {
                world.drain(head);
                self.clients[index].tokens.insert(vnode, ack.vnode_seq);
                if !key.starts_with(b"shared") {
                    let chain = world.table.chain(u32::from(vnode));
                    self.issued.entry(key.clone()).or_default().push(Issued {
                        version: Some(ack.version),
                        value: value.clone(),
                        level,
                        head,
                        middle: chain.replicas.get(1).copied(),
                        acked_ms: None,
                        expiry_ms: ack.expiry_ms,
                    });
                }
                Some(Pending::Write {
                    node: head,
                    ticket,
                    key,
                    value,
                    version: ack.version,
                    level,
                    call,
                    call_ms: now,
                })
            }
            // A restarted head that has not heard from its replicas, or full queues: the
            // node answers UNAVAILABLE or OVERLOADED, and the write had no effect.
            WriteStep::Refused(Refusal::Recovering { .. } | Refusal::Overloaded { .. }) => None,
            WriteStep::Refused(other) => panic!("a write sent to its head was refused: {other}"),
            WriteStep::StoreRefused {
                error: error @ (WriteError::VersionMismatch { .. } | WriteError::NotFound),
                barrier,
            } => {
                let outcome = match error {
                    WriteError::VersionMismatch { current } => Outcome::VersionMismatch { current },
                    _ => Outcome::NotFound,
                };
                Some(Pending::Answer {
                    node: head,
                    key,
                    level,
                    outcome,
                    wait: barrier.map_or(ReadWait::None, ReadWait::Committed),
                    tries: 1,
                    call,
                    call_ms: now,
                })
            }
            // Refused before anything was written (a failed or full disk, a full write buffer):
            // the write had no effect.
            WriteStep::StoreRefused {
                error: WriteError::Failed(_) | WriteError::DiskFull(_) | WriteError::Overloaded,
                ..
            } => None,
            WriteStep::StoreRefused { error, .. } => {
                panic!("the simulated store refused a write: {error}")
            }
        }
    }

    fn read(
        &mut self,
        index: usize,
        world: &mut World,
        key: Vec<u8>,
        level: Level,
        call: Call,
    ) -> Option<Pending> {
        let vnode = Self::vnode(world, &key);
        let replicas = world.table.chain(u32::from(vnode)).replicas.clone();
        let node = replicas[world.rng.below(replicas.len() as u64) as usize];
        if !world.serves(node) {
            return None;
        }
        let now = world.now_ms;
        if level == Level::Session {
            let token = self.clients[index].tokens.get(&vnode).copied().unwrap_or(0);
            return Some(Pending::SessionRead {
                node,
                key,
                token,
                call_ms: now,
            });
        }
        let (outcome, barrier) = read_now(world, node, vnode, &key);
        Some(Pending::Answer {
            node,
            key,
            level,
            outcome,
            wait: ops::read_wait(level, barrier),
            tries: 1,
            call,
            call_ms: now,
        })
    }

    /// Finishes what can be finished: writes answered, reads whose barrier passed.
    pub fn progress(&mut self, world: &mut World) {
        let completions = std::mem::take(&mut world.completions);
        for completion in completions {
            self.complete_write(&completion, world);
        }
        for index in 0..self.clients.len() {
            let Some(pending) = self.clients[index].pending.take() else {
                continue;
            };
            self.clients[index].pending = self.advance(index, pending, world);
        }
    }

    fn complete_write(&mut self, completion: &Completion, world: &World) {
        let (node, ticket) = (completion.node, completion.ticket);
        let ok = completion.result.is_ok();
        let Some(index) = self.clients.iter().position(|c| {
            matches!(&c.pending, Some(Pending::Write { node: n, ticket: t, .. }) if *n == node && *t == ticket)
        }) else {
            return;
        };
        let Some(Pending::Write {
            key,
            value,
            version,
            level,
            call,
            call_ms,
            ..
        }) = self.clients[index].pending.take()
        else {
            unreachable!()
        };
        let id = self.clients[index].id;
        if key.starts_with(b"shared") {
            let outcome = match (ok, &call) {
                (false, _) => Outcome::Unknown,
                (true, Call::Put { .. }) => Outcome::Written { version },
                (true, _) => Outcome::Deleted,
            };
            let return_ns = if ok { Self::ns(world.now_ms) } else { u64::MAX };
            self.saw(index, &key, &outcome);
            self.history.push(Op {
                client: id,
                key,
                call,
                outcome,
                call_ns: Self::ns(call_ms),
                return_ns,
            });
        } else if ok {
            if level != Level::Eventual {
                self.clients[index].floor.insert(key.clone(), version);
            }
            if let Some(last) = self.issued.get_mut(&key).and_then(|w| w.last_mut()) {
                if last.version == Some(version) && last.value == value {
                    last.acked_ms = Some(completion.at_ms);
                }
            }
        }
        if ok {
            self.acked_writes += 1;
        }
    }

    fn advance(&mut self, index: usize, pending: Pending, world: &mut World) -> Option<Pending> {
        let now = world.now_ms;
        match pending {
            Pending::Write { node, .. } if !world.is_up(node) => {
                // The head died under it: the outcome is unknown, and may still come true
                // (the write may be in its log and be committed after the restart).
                if let Pending::Write {
                    key, call, call_ms, ..
                } = pending
                {
                    if key.starts_with(b"shared") {
                        self.history.push(Op {
                            client: self.clients[index].id,
                            key,
                            call,
                            outcome: Outcome::Unknown,
                            call_ns: Self::ns(call_ms),
                            return_ns: u64::MAX,
                        });
                    }
                }
                None
            }
            Pending::Write { .. } => Some(pending),
            Pending::SessionRead { node, call_ms, .. } | Pending::Answer { node, call_ms, .. }
                if world.is_paused(node) =>
            {
                // A stopped node answers nothing; the client waits up to its timeout.
                (now < call_ms + READ_TIMEOUT_MS).then_some(pending)
            }
            Pending::SessionRead { node, .. } | Pending::Answer { node, .. }
                if !world.is_up(node) =>
            {
                None // the read died with its node: it has no effect
            }
            Pending::SessionRead {
                node,
                key,
                token,
                call_ms,
            } => {
                let vnode = Self::vnode(world, &key);
                let running = world.running(node).expect("up");
                if !ops::session_ready(&running.replicator, vnode, token) {
                    // The node answers UNAVAILABLE once its wait is over: no effect.
                    return (now < call_ms + ops::SESSION_WAIT_MS).then_some(
                        Pending::SessionRead {
                            node,
                            key,
                            token,
                            call_ms,
                        },
                    );
                }
                let applied = running.replicator.applied(vnode).unwrap_or(0);
                let (outcome, _) = read_now(world, node, vnode, &key);
                self.check_session_read(index, &key, &outcome, world);
                let tokens = &mut self.clients[index].tokens;
                let token = tokens.entry(vnode).or_default();
                *token = (*token).max(applied);
                self.reads += 1;
                None
            }
            Pending::Answer {
                node,
                key,
                level,
                outcome,
                wait,
                tries,
                call,
                call_ms,
            } => {
                let running = world.running(node).expect("up");
                let passed = match wait {
                    ReadWait::None => true,
                    ReadWait::Committed(b) | ReadWait::Whole(b) => running.store.is_visible(b),
                };
                if !passed {
                    // The node answers UNAVAILABLE once its wait is over: no effect.
                    return (now < call_ms + ops::COMMIT_WAIT_MS).then_some(Pending::Answer {
                        node,
                        key,
                        level,
                        outcome,
                        wait,
                        tries,
                        call,
                        call_ms,
                    });
                }
                if let ReadWait::Whole(_) = wait {
                    // The replica's copy was not whole when this was read (a restart): read
                    // again now that it is, as often as the node does.
                    if tries >= ops::STRONG_READ_TRIES {
                        return None;
                    }
                    let vnode = Self::vnode(world, &key);
                    let (outcome, barrier) = read_now(world, node, vnode, &key);
                    return Some(Pending::Answer {
                        node,
                        key,
                        level,
                        outcome,
                        wait: ops::read_wait(level, barrier),
                        tries: tries + 1,
                        call,
                        call_ms,
                    });
                }
                self.reads += 1;
                self.saw(index, &key, &outcome);
                self.history.push(Op {
                    client: self.clients[index].id,
                    key,
                    call,
                    outcome,
                    call_ns: Self::ns(call_ms),
                    return_ns: Self::ns(now),
                });
                None
            }
        }
    }

    fn check_session_read(&mut self, index: usize, key: &[u8], outcome: &Outcome, world: &World) {
        let Some(&floor) = self.clients[index].floor.get(key) else {
            return;
        };
        // What the client wrote from its floor write on: any of them may be what it sees.
        let writes = &self.issued[key];
        let from = writes
            .iter()
            .position(|w| w.version == Some(floor))
            .expect("the floor write was issued");
        let ok = match outcome {
            Outcome::Found { version, .. } => *version >= floor,
            _ => writes[from..]
                .iter()
                .any(|w| w.value.is_none() || world.may_have_expired(w.expiry_ms)),
        };
        if !ok {
            self.violations.push(format!(
                "client {}: a session read of {} showed {outcome}, older than its own write {floor}",
                self.clients[index].id,
                String::from_utf8_lossy(key)
            ));
        }
    }

    /// Stops every client: operations still in flight end with an unknown outcome.
    pub fn stop(&mut self) {
        for client in &mut self.clients {
            if let Some(Pending::Write {
                key, call, call_ms, ..
            }) = client.pending.take()
            {
                if key.starts_with(b"shared") {
                    self.history.push(Op {
                        client: client.id,
                        key,
                        call,
                        outcome: Outcome::Unknown,
                        call_ns: call_ms * 1_000_000,
                        return_ns: u64::MAX,
                    });
                }
            }
        }
    }

    /// Every owned key holds the last write that had to survive (`loss.rs`), or a later one
    /// its owner issued.
    pub fn check_nothing_lost(
        &mut self,
        final_values: &BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
        world: &World,
    ) {
        for (key, writes) in &self.issued {
            let found = final_values.get(key);
            self.violations
                .extend(crate::loss::violation(key, writes, found, world));
        }
    }
}

/// A read on a replica now: the answer, and the barrier of the key's newest write (a
/// `strong` read leaves once it is committed).
fn read_now(world: &mut World, node: NodeId, vnode: u16, key: &[u8]) -> (Outcome, Option<Barrier>) {
    let now_ms = world.clock(node).wall_ms;
    let slot = &mut world.nodes[node as usize];
    let running = slot.running.as_mut().expect("up");
    let (lookup, barrier) = running.store.read(vnode, key, now_ms);
    let outcome = match lookup {
        Lookup::NotFound => Outcome::NotFound,
        Lookup::InMemory { value, version } => Outcome::Found {
            value: value.to_vec(),
            version,
        },
        Lookup::OnDisk(read) => {
            let bytes = slot.disk.read(&read);
            let value = finish_read(&read, key, &bytes).expect("intact records");
            running
                .store
                .handle_read_done(vnode, key, &read, &value, now_ms);
            Outcome::Found {
                value,
                version: read.version,
            }
        }
    };
    (outcome, barrier)
}
