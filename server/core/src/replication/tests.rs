//! The replication state machine on a tiny in-memory cluster: three replicas of one vnode,
//! a map for a store, messages delivered by hand so that each test can cut links, lose
//! messages and restart nodes where it wants.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};

use super::*;
use crate::placement::{Chain, NodeId};

const VNODE: u16 = 7;

fn digest(key: &[u8]) -> u128 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    u128::from(hasher.finish())
}

/// A store as replication sees it: keys with their newest write, and the vnode's watermarks.
/// Writes are durable when `sync` is called (or at once with `auto_durable`).
#[derive(Clone, Debug, Default)]
struct MapStore {
    data: BTreeMap<Vec<u8>, (Vec<u8>, u64, u64)>, // key -> (value, version, seq)
    position: Position,
    durable: u64,
    committed: u64,
    /// The floor the replicator released reads at, if it did.
    released: Option<u64>,
    auto_durable: bool,
    /// What was durable at the last `sync`: a crash goes back to it.
    durable_copy: Option<Box<MapStore>>,
    /// `apply` of this sequence number fails once (a full disk, say).
    fail_once_at: Option<u64>,
}

impl MapStore {
    fn sync(&mut self) {
        self.durable = self.position.seq;
        let mut copy = self.clone();
        copy.durable_copy = None;
        self.durable_copy = Some(Box::new(copy));
    }

    /// A crash: back to what was synced; nothing committed is known.
    fn crash(&self) -> MapStore {
        let mut back = self.durable_copy.as_deref().cloned().unwrap_or_default();
        back.committed = 0;
        back.released = None;
        back.auto_durable = self.auto_durable;
        back.durable_copy = Some(Box::new(back.clone()));
        back
    }

    fn live(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.data
            .iter()
            .map(|(k, (v, _, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// The head's side of a client write.
    fn write(&mut self, key: &[u8], value: Option<&[u8]>) -> Entry {
        let entry = Entry {
            seq: self.position.seq + 1,
            version: self.position.version + 1,
            expiry_ms: 0,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        };
        self.apply(VNODE, &entry, 1, 0).unwrap();
        entry
    }

    /// A transfer's parts from `since`, as `tessera-store` makes them but all at once: values
    /// in version order, `per_part` to a part, then the sorted digests, `per_part` to a part.
    fn state_parts(&self, since: Position, per_part: usize) -> Vec<StatePart> {
        let mut entries: Vec<Entry> = self
            .data
            .iter()
            .filter(|(_, (_, version, _))| *version > since.version)
            .map(|(key, (value, version, seq))| Entry {
                seq: *seq,
                version: *version,
                expiry_ms: 0,
                key: key.clone(),
                value: Some(value.clone()),
            })
            .collect();
        entries.sort_by_key(|e| e.version);
        let mut parts: Vec<StatePart> = entries
            .chunks(per_part)
            .map(|chunk| StatePart {
                entries: chunk.to_vec(),
                ..StatePart::default()
            })
            .collect();
        let mut digests: Vec<u128> = self.data.keys().map(|k| digest(k)).collect();
        digests.sort_unstable();
        let chunks: Vec<&[u128]> = match digests.is_empty() {
            true => vec![&[]],
            false => digests.chunks(per_part).collect(),
        };
        let mut after = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let upto = if last {
                u128::MAX
            } else {
                chunk[chunk.len() - 1]
            };
            parts.push(StatePart {
                entries: Vec::new(),
                through: self.position,
                keep: Some(KeepRange {
                    after,
                    upto,
                    digests: chunk.to_vec(),
                }),
                last: last.then_some(self.position.seq),
            });
            after = Some(upto);
        }
        parts
    }
}

impl VnodeStore for MapStore {
    fn position(&self, _vnode: u16) -> Position {
        self.position
    }
    fn durable_seq(&self, _vnode: u16) -> u64 {
        self.durable
    }
    fn apply(
        &mut self,
        _vnode: u16,
        entry: &Entry,
        _epoch: u64,
        _now_ms: u64,
    ) -> Result<(), String> {
        assert!(
            entry.seq > self.position.seq,
            "applied in order: {entry:?} after {:?}",
            self.position
        );
        if self.fail_once_at == Some(entry.seq) {
            self.fail_once_at = None;
            return Err("no space left on the device".into());
        }
        match &entry.value {
            Some(value) => {
                self.data
                    .insert(entry.key.clone(), (value.clone(), entry.version, entry.seq));
            }
            None => {
                self.data.remove(&entry.key);
            }
        }
        self.position = Position {
            seq: entry.seq,
            version: entry.version,
        };
        if self.auto_durable {
            self.sync();
        }
        Ok(())
    }
    fn drop_absent(
        &mut self,
        _vnode: u16,
        keep: &KeepRange,
        through: Position,
        _epoch: u64,
    ) -> Result<(), String> {
        let listed: BTreeSet<u128> = keep.digests.iter().copied().collect();
        let in_range = |d: u128| keep.after.is_none_or(|after| d > after) && d <= keep.upto;
        self.data.retain(|key, (_, version, _)| {
            let d = digest(key);
            !in_range(d) || listed.contains(&d) || *version > through.version
        });
        if self.auto_durable {
            self.sync();
        }
        Ok(())
    }
    fn finish_state(&mut self, _vnode: u16, through: Position) -> Result<(), String> {
        if through.seq > self.position.seq {
            self.position = through;
        }
        if self.auto_durable {
            self.sync();
        }
        Ok(())
    }
    fn hold_reads(&mut self, _vnode: u16) {
        self.released = None;
    }
    fn accepts_writes(&self) -> bool {
        true
    }
    fn set_committed(&mut self, _vnode: u16, seq: u64) {
        assert!(seq >= self.committed, "the commit point never goes back");
        self.committed = seq;
    }
    fn release_reads(&mut self, _vnode: u16, floor: u64) {
        if self.released.is_none_or(|old| floor > old) {
            self.released = Some(floor);
        }
    }
}

/// An `Effect::ReadState` a test serves by hand.
struct StashedRead {
    vnode: u16,
    to: NodeId,
    since: Position,
    transfer: u64,
}

struct Member {
    store: MapStore,
    replicator: Replicator,
}

/// Three replicas of `VNODE`, chain 1 -> 2 -> 3.
struct Cluster {
    members: BTreeMap<NodeId, Member>,
    chain: Chain,
    in_flight: VecDeque<(NodeId, NodeId, PeerMsg)>,
    links: BTreeSet<(NodeId, NodeId)>,
    done: BTreeMap<Ticket, Result<(), WriteFailure>>,
    now_ms: u64,
    config: Config,
    /// Values (and digests) per part of a state transfer.
    part_size: usize,
    /// State reads are kept here instead of served (a test serves them by hand).
    stash_state_reads: bool,
    stashed: Vec<(NodeId, Effect)>,
}

impl Cluster {
    fn new(durable_commit: bool) -> Cluster {
        let chain = Chain {
            replicas: vec![1, 2, 3],
            epoch: 1,
        };
        let config = Config {
            me: 0,
            durable_commit,
            queue_limit_bytes: 1 << 20,
            write_timeout_ms: 1000,
            outbox_limit_bytes: usize::MAX,
            fresh: false,
        };
        let mut cluster = Cluster {
            members: BTreeMap::new(),
            chain,
            in_flight: VecDeque::new(),
            links: BTreeSet::new(),
            done: BTreeMap::new(),
            now_ms: 1000,
            config,
            part_size: 1000,
            stash_state_reads: false,
            stashed: Vec::new(),
        };
        for node in 1..=3 {
            cluster.start(
                node,
                MapStore {
                    auto_durable: true,
                    ..MapStore::default()
                },
            );
        }
        for a in 1..=3 {
            for b in 1..=3 {
                if a < b {
                    cluster.connect(a, b);
                }
            }
        }
        cluster.run();
        cluster
    }

    fn start(&mut self, node: NodeId, store: MapStore) {
        let config = Config {
            me: node,
            ..self.config.clone()
        };
        let replicator = Replicator::new(config, [(VNODE, self.chain.clone())], &store);
        self.members.insert(node, Member { store, replicator });
    }

    fn connect(&mut self, a: NodeId, b: NodeId) {
        self.links.insert((a, b));
        self.links.insert((b, a));
        let now = self.now_ms;
        for (me, other) in [(a, b), (b, a)] {
            let member = self.members.get_mut(&me).unwrap();
            member
                .replicator
                .handle_link_up(other, &mut member.store, now);
        }
        self.collect();
    }

    fn disconnect(&mut self, a: NodeId, b: NodeId) {
        self.links.remove(&(a, b));
        self.links.remove(&(b, a));
        self.in_flight
            .retain(|(from, to, _)| !((*from, *to) == (a, b) || (*from, *to) == (b, a)));
        for (me, other) in [(a, b), (b, a)] {
            self.members
                .get_mut(&me)
                .unwrap()
                .replicator
                .handle_link_down(other);
        }
    }

    /// Kill -9 of `node`: its store goes back to what was durable; it restarts, and its links
    /// come back.
    fn crash_and_restart(&mut self, node: NodeId) {
        let others: Vec<NodeId> = self
            .members
            .keys()
            .copied()
            .filter(|&n| n != node)
            .collect();
        for &other in &others {
            self.disconnect(node, other);
        }
        let store = self.members[&node].store.crash();
        self.start(node, store);
        for other in others {
            self.connect(node, other);
        }
    }

    /// Takes every member's effects: messages go in flight, state reads are served at once.
    fn collect(&mut self) {
        let now = self.now_ms;
        let nodes: Vec<NodeId> = self.members.keys().copied().collect();
        for node in nodes {
            let member = self.members.get_mut(&node).unwrap();
            while let Some(effect) = member.replicator.poll_effect() {
                match effect {
                    Effect::Send(out) => {
                        if self.links.contains(&(node, out.to)) {
                            self.in_flight.push_back((node, out.to, out.msg));
                        }
                    }
                    effect @ Effect::ReadState { .. } if self.stash_state_reads => {
                        self.stashed.push((node, effect));
                    }
                    Effect::ReadState {
                        vnode,
                        to,
                        since,
                        transfer,
                    } => {
                        for part in member.store.state_parts(since, self.part_size) {
                            let replicator = &mut member.replicator;
                            if !replicator.handle_state_part(
                                vnode,
                                to,
                                transfer,
                                part,
                                &mut member.store,
                                now,
                            ) {
                                break;
                            }
                        }
                    }
                    Effect::WriteDone { ticket, result } => {
                        self.done.insert(ticket, result);
                    }
                }
            }
        }
    }

    /// The newest state read a member asked for while `stash_state_reads` held them.
    fn take_state_read(&mut self) -> (NodeId, StashedRead) {
        match self.stashed.pop().expect("a state read") {
            (
                node,
                Effect::ReadState {
                    vnode,
                    to,
                    since,
                    transfer,
                },
            ) => {
                let read = StashedRead {
                    vnode,
                    to,
                    since,
                    transfer,
                };
                (node, read)
            }
            (_, other) => unreachable!("only state reads are stashed: {other:?}"),
        }
    }

    /// Delivers the oldest message in flight from `from` to `to` (each link stays FIFO).
    fn deliver_on(&mut self, from: NodeId, to: NodeId) -> Option<Body> {
        self.collect();
        let at = self
            .in_flight
            .iter()
            .position(|(f, t, _)| (*f, *t) == (from, to))?;
        let (_, _, msg) = self.in_flight.remove(at).expect("found");
        let body = msg.body.clone();
        let now = self.now_ms;
        let member = self.members.get_mut(&to).unwrap();
        member
            .replicator
            .handle_message(from, msg, &mut member.store, now);
        self.collect();
        Some(body)
    }

    /// Delivers messages until none are left.
    fn run(&mut self) {
        self.collect();
        while let Some((from, to, msg)) = self.in_flight.pop_front() {
            let now = self.now_ms;
            let member = self.members.get_mut(&to).unwrap();
            member
                .replicator
                .handle_message(from, msg, &mut member.store, now);
            self.collect();
        }
    }

    fn write(&mut self, key: &str, value: Option<&str>, level: Level) -> Result<Ticket, Refusal> {
        let now = self.now_ms;
        let head = self.chain.head();
        let member = self.members.get_mut(&head).unwrap();
        member.replicator.admit_write(VNODE)?;
        let entry = member.store.write(key.as_bytes(), value.map(str::as_bytes));
        let ticket =
            member
                .replicator
                .handle_head_write(VNODE, entry, level, false, &mut member.store, now);
        self.collect();
        Ok(ticket)
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        let now = self.now_ms;
        for member in self.members.values_mut() {
            member.replicator.handle_tick(&mut member.store, now);
        }
        self.run();
    }

    fn live(&self, node: NodeId) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.members[&node].store.live()
    }

    fn assert_converged(&self) {
        let head = self.live(1);
        for node in [2, 3] {
            assert_eq!(self.live(node), head, "node {node} differs from the head");
            assert_eq!(
                self.members[&node].store.position,
                self.members[&1].store.position
            );
        }
    }
}

#[test]
fn a_strong_write_is_acknowledged_once_the_whole_chain_has_it() {
    let mut cluster = Cluster::new(false);
    let ticket = cluster.write("k", Some("v"), Level::Strong).unwrap();
    assert!(
        !cluster.done.contains_key(&ticket),
        "not before the chain has it"
    );
    cluster.run();
    assert_eq!(cluster.done.get(&ticket), Some(&Ok(())));
    cluster.assert_converged();
    for node in 1..=3 {
        assert_eq!(
            cluster.members[&node].store.committed, 1,
            "node {node} knows the commit"
        );
    }
}

#[test]
fn eventual_and_session_writes_are_acknowledged_earlier() {
    let mut cluster = Cluster::new(false);
    // The tail is cut off: eventual is done at once, session once the middle has it, strong
    // never (and fails at its deadline, outcome unknown).
    cluster.disconnect(2, 3);
    let eventual = cluster.write("a", Some("1"), Level::Eventual).unwrap();
    assert_eq!(cluster.done.get(&eventual), Some(&Ok(())));
    let session = cluster.write("b", Some("2"), Level::Session).unwrap();
    let strong = cluster.write("c", Some("3"), Level::Strong).unwrap();
    cluster.run();
    assert_eq!(cluster.done.get(&session), Some(&Ok(())));
    assert!(!cluster.done.contains_key(&strong));
    cluster.tick(2000);
    assert_eq!(cluster.done.get(&strong), Some(&Err(WriteFailure::Timeout)));
    // The tail comes back and catches up from the middle's queue; the chain converges.
    cluster.connect(2, 3);
    cluster.run();
    cluster.assert_converged();
    assert_eq!(cluster.members[&3].store.committed, 3);
}

#[test]
fn a_replica_that_missed_the_queue_gets_the_state_with_deletes() {
    let mut cluster = Cluster::new(false);
    for i in 0..20 {
        cluster
            .write(&format!("k{i}"), Some("v"), Level::Strong)
            .unwrap();
    }
    cluster.run();
    cluster.disconnect(2, 3);
    for i in 0..10 {
        cluster
            .write(&format!("k{i}"), None, Level::Eventual)
            .unwrap();
    }
    cluster.write("new", Some("x"), Level::Eventual).unwrap();
    cluster.run();
    // The middle's queue for the tail is lost (as after an overflow): a transfer it must be.
    cluster
        .members
        .get_mut(&2)
        .unwrap()
        .replicator
        .trim_all_queues_for_test();
    cluster.connect(2, 3);
    cluster.run();
    cluster.assert_converged();
    assert_eq!(
        cluster.live(3).len(),
        11,
        "the deletes reached the tail too"
    );
}

#[test]
fn a_head_that_lost_writes_in_a_crash_takes_them_back_before_new_ones() {
    let mut cluster = Cluster::new(false);
    // The head stops syncing: what it streams from now on is lost in its crash.
    cluster.members.get_mut(&1).unwrap().store.auto_durable = false;
    for i in 0..5 {
        cluster
            .write(&format!("k{i}"), Some("v"), Level::Session)
            .unwrap();
    }
    cluster.run();
    assert_eq!(cluster.members[&2].store.position.seq, 5);
    cluster.crash_and_restart(1);
    assert_eq!(
        cluster.members[&1].store.position.seq, 0,
        "the head lost them"
    );
    cluster.members.get_mut(&1).unwrap().store.auto_durable = true;
    // Until it has asked the others, it takes no writes; then it pulls what they have.
    assert_eq!(
        cluster.members[&1].replicator.admit_write(VNODE),
        Err(Refusal::Recovering { vnode: VNODE })
    );
    cluster.run();
    assert_eq!(cluster.members[&1].replicator.admit_write(VNODE), Ok(()));
    assert_eq!(cluster.members[&1].store.position.seq, 5, "pulled back");
    let ticket = cluster.write("after", Some("v"), Level::Strong).unwrap();
    cluster.run();
    assert_eq!(cluster.done.get(&ticket), Some(&Ok(())));
    assert_eq!(
        cluster.members[&3].store.position.seq, 6,
        "numbering went on, no reuse"
    );
    cluster.assert_converged();
}

#[test]
fn a_middle_that_lost_writes_waits_until_it_is_ahead_of_its_tail_again() {
    let mut cluster = Cluster::new(false);
    cluster.members.get_mut(&2).unwrap().store.auto_durable = false;
    for i in 0..8 {
        cluster
            .write(&format!("k{i}"), Some("v"), Level::Strong)
            .unwrap();
    }
    cluster.run();
    assert_eq!(cluster.members[&3].store.position.seq, 8);
    cluster.crash_and_restart(2);
    cluster.members.get_mut(&2).unwrap().store.auto_durable = true;
    cluster.run();
    cluster.assert_converged();
    let ticket = cluster.write("more", Some("v"), Level::Strong).unwrap();
    cluster.run();
    assert_eq!(cluster.done.get(&ticket), Some(&Ok(())));
    cluster.assert_converged();
}

#[test]
fn messages_of_another_epoch_are_dropped() {
    let mut cluster = Cluster::new(false);
    let stale = PeerMsg {
        vnode: VNODE,
        epoch: 0,
        body: Body::Append {
            after: 0,
            entries: vec![Entry {
                seq: 1,
                version: 1,
                expiry_ms: 0,
                key: b"x".to_vec(),
                value: Some(b"stale".to_vec()),
            }],
            prefix: Watermarks::ALL,
            committed: 0,
        },
    };
    let member = cluster.members.get_mut(&2).unwrap();
    member
        .replicator
        .handle_message(1, stale, &mut member.store, 0);
    assert!(
        cluster.live(2).is_empty(),
        "another epoch's write is not applied"
    );
}

#[test]
fn a_slow_connected_successor_fills_the_queue_and_writes_are_refused() {
    let mut cluster = Cluster::new(false);
    // Messages to the middle are never delivered, but its link stays up.
    let big = "x".repeat(100_000);
    let mut refused = None;
    for i in 0..40 {
        match cluster.write(&format!("k{i}"), Some(&big), Level::Eventual) {
            Ok(_) => cluster.in_flight.clear(),
            Err(refusal) => {
                refused = Some(refusal);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(Refusal::Overloaded { .. })),
        "{refused:?}"
    );
    // Once the successor is gone instead of slow, its queue gives way and writes go on.
    cluster.disconnect(1, 2);
    cluster
        .members
        .get_mut(&1)
        .unwrap()
        .replicator
        .trim_all_queues_for_test();
    assert!(cluster.write("after", Some("v"), Level::Eventual).is_ok());
}

#[test]
fn under_durable_commit_nothing_counts_before_it_is_synced() {
    let mut cluster = Cluster::new(true);
    for node in 1..=3 {
        cluster.members.get_mut(&node).unwrap().store.auto_durable = false;
    }
    let eventual = cluster.write("k", Some("v"), Level::Eventual).unwrap();
    cluster.run();
    assert!(
        !cluster.done.contains_key(&eventual),
        "not before the head's sync"
    );
    assert_eq!(cluster.members[&3].store.committed, 0);
    for node in 1..=3 {
        let member = cluster.members.get_mut(&node).unwrap();
        member.store.sync();
        member
            .replicator
            .handle_durable(&[VNODE], &mut member.store, 0);
    }
    cluster.run();
    assert_eq!(cluster.done.get(&eventual), Some(&Ok(())));
    for node in 1..=3 {
        assert_eq!(cluster.members[&node].store.committed, 1);
    }
}

#[test]
fn a_replica_that_lost_committed_writes_holds_reads_until_it_has_them_again() {
    // Writes count once applied (no durable commit): the tail applies, the chain commits, and
    // the tail loses them in a crash before its sync.
    let mut cluster = Cluster::new(false);
    cluster.members.get_mut(&3).unwrap().store.auto_durable = false;
    for i in 0..4 {
        cluster
            .write(&format!("k{i}"), Some("v"), Level::Strong)
            .unwrap();
    }
    cluster.run();
    assert_eq!(cluster.members[&3].store.committed, 4);
    cluster.crash_and_restart(3);
    assert_eq!(
        cluster.members[&3].store.position.seq, 0,
        "lost in the crash"
    );
    assert_eq!(
        cluster.members[&3].store.released, None,
        "no read of its stale copy before it hears from its chain"
    );
    cluster.run();
    let tail = &cluster.members[&3].store;
    assert_eq!(tail.position.seq, 4, "caught up");
    assert_eq!(
        tail.released,
        Some(4),
        "reads go once the copy reaches the commit point"
    );
    // With durable commit nothing committed can be lost, but a restarted replica may hold a
    // transfer its crash cut short: it releases reads once its predecessor's stream answers.
    let mut durable = Cluster::new(true);
    durable.write("k", Some("v"), Level::Strong).unwrap();
    durable.run();
    durable.crash_and_restart(3);
    assert_eq!(durable.members[&3].store.released, None);
    durable.run();
    assert_eq!(durable.members[&3].store.released, Some(1));
}

#[test]
fn lag_and_catch_ups_are_reported_per_successor() {
    let mut cluster = Cluster::new(false);
    cluster.write("a", Some("1"), Level::Strong).unwrap();
    cluster.run();
    let lag_of = |cluster: &Cluster, node: NodeId| {
        cluster.members[&node]
            .replicator
            .successor_lag()
            .get(&(node + 1))
            .copied()
            .unwrap()
    };
    assert_eq!(lag_of(&cluster, 1).writes, 0, "a caught-up successor");
    assert_eq!(lag_of(&cluster, 1).oldest_missing_version, None);
    assert!(cluster.members[&3].replicator.successor_lag().is_empty());
    // The tail is cut off: the middle counts what it lacks, from the oldest queued write.
    cluster.disconnect(2, 3);
    cluster.write("b", Some("2"), Level::Eventual).unwrap();
    cluster.write("c", Some("3"), Level::Eventual).unwrap();
    cluster.run();
    let lag = lag_of(&cluster, 2);
    assert_eq!(lag.writes, 2);
    let version_of_b = cluster.members[&2].store.data[b"b".as_slice()].1;
    assert_eq!(lag.oldest_missing_version, Some(version_of_b));
    assert_eq!(lag_of(&cluster, 1).writes, 0, "the middle has them");
    // Back: resent from the queue, counted once; then nothing is missing.
    cluster.connect(2, 3);
    cluster.run();
    let progress = cluster.members[&2].replicator.progress();
    let catch_ups = progress.catch_ups[&3];
    assert_eq!((catch_ups.from_queue, catch_ups.transfers), (1, 0));
    assert_eq!(lag_of(&cluster, 2).writes, 0);
    // Away again, past the queue: its oldest missing write is no longer queued, and one written
    // since is; a state transfer when it returns.
    cluster.disconnect(2, 3);
    cluster.write("d", Some("4"), Level::Eventual).unwrap();
    cluster.run();
    let middle = cluster.members.get_mut(&2).unwrap();
    middle.replicator.trim_all_queues_for_test();
    cluster.write("e", Some("5"), Level::Eventual).unwrap();
    cluster.run();
    let lag = lag_of(&cluster, 2);
    assert_eq!(lag.writes, 2);
    assert!(lag.unqueued, "d is gone from the queue: {lag:?}");
    assert_eq!(
        lag.oldest_missing_version, None,
        "e is queued but is not the oldest"
    );
    cluster.connect(2, 3);
    cluster.run();
    let catch_ups = cluster.members[&2].replicator.progress().catch_ups[&3];
    assert_eq!(catch_ups.from_queue, 1);
    assert!(catch_ups.transfers >= 1, "{catch_ups:?}");
    assert_eq!(lag_of(&cluster, 2), SuccessorLag::default());
    assert_eq!(cluster.members[&2].replicator.progress().chain_changes, 0);
    cluster.assert_converged();
    // A restarted middle does not know where its tail stands until the tail says so.
    cluster.disconnect(2, 3);
    cluster.disconnect(1, 2);
    let store = cluster.members[&2].store.clone();
    cluster.start(2, store);
    assert!(cluster.members[&2].replicator.successor_lag().is_empty());
}

/// Defect 1 of the catch-up issue: a member restarted while its vnode is idle learned the
/// commit point from nobody (its neighbours had nothing new to say), so `strong` reads of
/// keys written before the restart waited for ever. Every role, under both fsync policies.
#[test]
fn a_restarted_member_learns_the_commit_point_of_an_idle_vnode() {
    for durable_commit in [true, false] {
        for restarted in [1, 2, 3] {
            let mut cluster = Cluster::new(durable_commit);
            for key in ["a", "b", "c"] {
                cluster.write(key, Some("v"), Level::Strong).unwrap();
            }
            cluster.run();
            cluster.crash_and_restart(restarted);
            cluster.run();
            let store = &cluster.members[&restarted].store;
            assert_eq!(
                (store.committed, store.released),
                (3, Some(3)),
                "node {restarted} (durable commit {durable_commit}) knows the commit point and serves reads"
            );
        }
    }
}

// ------------------------------------------------------------------ state transfers (issue 16)

/// The tail is away while its middle's queue is lost; "doomed" is deleted meanwhile and three
/// large values are written: the tail's return needs a transfer of several parts, with the
/// delete only in the keep list.
fn transfer_pending(part_size: usize) -> Cluster {
    let mut c = Cluster::new(false);
    c.part_size = part_size;
    c.write("doomed", Some("x"), Level::Strong).unwrap();
    c.run();
    c.disconnect(2, 3);
    for key in ["a0", "a1"] {
        c.write(key, Some("v"), Level::Eventual).unwrap();
        c.run();
    }
    c.members
        .get_mut(&2)
        .unwrap()
        .replicator
        .trim_all_queues_for_test();
    c.write("doomed", None, Level::Eventual).unwrap();
    c.write("a2", Some("v"), Level::Eventual).unwrap();
    c.run();
    c
}

fn is_values_part(body: &Option<Body>) -> bool {
    matches!(body, Some(Body::State { keep: None, .. }))
}

/// Defect 2 (review F1): a transfer cut after the tail acknowledged its first parts, then
/// resumed, still brings the deletes that only the keep list carries, whether the link drops
/// or the tail is killed.
#[test]
fn a_transfer_cut_short_still_applies_the_deletes_it_carried() {
    for crash in [false, true] {
        let mut c = transfer_pending(1);
        c.connect(2, 3);
        // The tail's Position reaches the middle, which starts the transfer.
        assert!(matches!(c.deliver_on(3, 2), Some(Body::Position(_))));
        assert!(is_values_part(&c.deliver_on(2, 3)));
        assert!(is_values_part(&c.deliver_on(2, 3)));
        // The tail's acks of what it applied reach the middle.
        while c.deliver_on(3, 2).is_some() {}
        let tail = &c.members[&3].store;
        assert!(
            tail.data.contains_key(b"doomed".as_slice()),
            "not yet dropped"
        );
        assert_eq!(tail.released, None, "no read while the copy is partial");
        match crash {
            true => c.crash_and_restart(3),
            false => {
                c.disconnect(2, 3);
                c.connect(2, 3);
            }
        }
        c.run();
        c.assert_converged();
        let tail = &c.members[&3].store;
        assert!(
            !tail.data.contains_key(b"doomed".as_slice()),
            "crash {crash}"
        );
        assert!(
            tail.released.is_some(),
            "reads released once whole (crash {crash})"
        );
    }
}

/// Defect 3 (review F2): a store error in the middle of a transfer ends it there and the tail
/// asks again from its position; no later part is applied past the hole.
#[test]
fn a_store_error_inside_a_transfer_leaves_no_hole() {
    let mut c = transfer_pending(1);
    let a1 = c.members[&2].store.data[b"a1".as_slice()].2;
    c.members.get_mut(&3).unwrap().store.fail_once_at = Some(a1);
    c.connect(2, 3);
    c.run();
    c.tick(100); // the shard has room again: the tail asks again
    c.assert_converged();
    assert!(!c.live(3).contains_key(b"doomed".as_slice()));
}

/// Defect 4 (review F3): a key rewritten while the transfer was read is left out of it (its
/// write comes in the stream); the receiver serves no read until it has applied what the
/// sender had applied when it read its last value.
#[test]
fn a_key_rewritten_during_a_transfer_holds_reads_until_its_write_arrives() {
    let mut c = transfer_pending(1);
    c.stash_state_reads = true;
    c.connect(2, 3);
    c.run();
    let (
        node,
        StashedRead {
            vnode, to, since, ..
        },
    ) = c.take_state_read();
    assert_eq!((node, to), (2, 3));
    let mut parts = c.members[&2].store.state_parts(since, 1);
    // a1 is rewritten while the transfer is read: the reader leaves it out.
    c.disconnect(2, 3); // hold the rewrite's stream back from the tail for now
    c.connect(2, 3);
    c.run();
    let (_, StashedRead { transfer: id, .. }) = c.take_state_read();
    c.write("a1", Some("new"), Level::Eventual).unwrap();
    let caught_up_at = c.members[&2].store.position.seq;
    parts.retain(|p| !p.entries.iter().any(|e| e.key == b"a1"));
    parts.last_mut().unwrap().last = Some(caught_up_at);
    let middle = c.members.get_mut(&2).unwrap();
    for part in parts {
        assert!(middle
            .replicator
            .handle_state_part(vnode, 3, id, part, &mut middle.store, 0));
    }
    // Every part reaches the tail, but not yet the stream's rewrite of a1.
    while is_state(&c.deliver_on(2, 3)) {}
    let tail = &c.members[&3].store;
    assert!(
        tail.released.is_some_and(|floor| floor >= caught_up_at),
        "reads wait for the rewrite: {:?}",
        tail.released
    );
    c.run();
    c.assert_converged();
    assert_eq!(c.live(3)[b"a1".as_slice()], b"new");
}

fn is_state(body: &Option<Body>) -> bool {
    matches!(body, Some(Body::State { .. }))
}

/// Defect 5 (review F4): under `--fsync interval` a `session` write waiting for the middle is
/// acknowledged only once the middle has the transfer, not when it is handed to the shell.
#[test]
fn a_session_write_waits_for_the_transfer_to_arrive() {
    let mut c = Cluster::new(false);
    c.write("a", Some("1"), Level::Strong).unwrap();
    c.run();
    c.disconnect(1, 2);
    let ticket = c.write("b", Some("2"), Level::Session).unwrap();
    c.run();
    c.members
        .get_mut(&1)
        .unwrap()
        .replicator
        .trim_all_queues_for_test();
    c.connect(1, 2);
    assert!(matches!(c.deliver_on(2, 1), Some(Body::Position(_))));
    assert!(c
        .in_flight
        .iter()
        .any(|(f, t, m)| (*f, *t) == (1, 2) && matches!(m.body, Body::State { .. })));
    assert!(
        !c.done.contains_key(&ticket),
        "not before the middle has it"
    );
    c.run();
    assert_eq!(c.done.get(&ticket), Some(&Ok(())));
    c.assert_converged();
}

/// An unreadable record ends the transfer (never skipped): nothing more is sent, and the
/// successor catches up once it asks again.
#[test]
fn an_unreadable_record_abandons_the_transfer() {
    let mut c = transfer_pending(1);
    c.stash_state_reads = true;
    c.connect(2, 3);
    c.run();
    let (
        _,
        StashedRead {
            vnode,
            to,
            transfer,
            ..
        },
    ) = c.take_state_read();
    let middle = c.members.get_mut(&2).unwrap();
    assert!(middle.replicator.transfer_current(vnode, to, transfer));
    middle
        .replicator
        .handle_state_failed(vnode, to, transfer, &mut middle.store, 0);
    assert!(!middle.replicator.transfer_current(vnode, to, transfer));
    let part = StatePart::default();
    assert!(!middle
        .replicator
        .handle_state_part(vnode, to, transfer, part, &mut middle.store, 0));
    c.run();
    assert!(
        c.live(3).contains_key(b"doomed".as_slice()),
        "behind, not wrong"
    );
    c.stash_state_reads = false;
    c.disconnect(2, 3);
    c.connect(2, 3);
    c.run();
    c.assert_converged();
}

/// Defect 8: a replica whose store refused a streamed write (its write buffer full after a
/// pause) asks for it again once the store takes writes, even if the vnode gets no later
/// write to show the gap.
#[test]
fn a_streamed_write_the_store_refused_is_asked_for_again() {
    let mut c = Cluster::new(false);
    c.write("a", Some("1"), Level::Eventual).unwrap();
    c.run();
    c.members.get_mut(&3).unwrap().store.fail_once_at = Some(2);
    c.write("b", Some("2"), Level::Eventual).unwrap();
    c.run();
    c.tick(50);
    c.assert_converged();
}
