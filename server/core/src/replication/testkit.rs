//! The test kit of the replication state machine: a tiny in-memory cluster of three replicas
//! of one vnode, a map for a store, messages delivered by hand so that each test can cut
//! links, lose messages and restart nodes where it wants. The tests sit beside the handlers
//! they exercise (`vnode/*_tests.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};

use super::*;
pub(crate) use crate::placement::{Chain, NodeId};

pub(crate) const VNODE: u16 = 7;

pub(crate) fn digest(key: &[u8]) -> u128 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    u128::from(hasher.finish())
}

/// A store as replication sees it: keys with their newest write, and the vnode's watermarks.
/// Writes are durable when `sync` is called (or at once with `auto_durable`).
#[derive(Clone, Debug, Default)]
pub(crate) struct MapStore {
    pub(crate) data: BTreeMap<Vec<u8>, (Vec<u8>, u64, u64)>, // key -> (value, version, seq)
    pub(crate) position: Position,
    pub(crate) durable: u64,
    pub(crate) committed: u64,
    /// The floor the replicator released reads at, if it did.
    pub(crate) released: Option<u64>,
    pub(crate) auto_durable: bool,
    /// What was durable at the last `sync`: a crash goes back to it.
    pub(crate) durable_copy: Option<Box<MapStore>>,
    /// `apply` of this sequence number fails once (a full disk, say).
    pub(crate) fail_once_at: Option<u64>,
    /// A transfer under way started at this position (the store's durable mark).
    pub(crate) transfer_started_at: Option<u64>,
}

impl MapStore {
    pub(crate) fn sync(&mut self) {
        self.durable = self.position.seq;
        let mut copy = self.clone();
        copy.durable_copy = None;
        self.durable_copy = Some(Box::new(copy));
    }

    /// A crash: back to what was synced; nothing committed is known.
    pub(crate) fn crash(&self) -> MapStore {
        let mut back = self.durable_copy.as_deref().cloned().unwrap_or_default();
        back.committed = 0;
        back.released = None;
        back.auto_durable = self.auto_durable;
        back.durable_copy = Some(Box::new(back.clone()));
        back
    }

    pub(crate) fn live(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.data
            .iter()
            .map(|(k, (v, _, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// The head's side of a client write.
    pub(crate) fn write(&mut self, key: &[u8], value: Option<&[u8]>) -> Entry {
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
    pub(crate) fn state_parts(&self, since: Position, per_part: usize) -> Vec<StatePart> {
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
    fn start_state(&mut self, _vnode: u16, seq: u64) -> Result<(), String> {
        self.transfer_started_at = Some(seq);
        if self.auto_durable {
            self.sync();
        }
        Ok(())
    }
    fn transfer_cut_short(&self, _vnode: u16) -> Option<u64> {
        self.transfer_started_at
    }
    fn finish_state(&mut self, _vnode: u16, through: Position) -> Result<(), String> {
        self.transfer_started_at = None;
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
pub(crate) struct StashedRead {
    pub(crate) vnode: u16,
    pub(crate) to: NodeId,
    pub(crate) since: Position,
    pub(crate) transfer: u64,
}

pub(crate) struct Member {
    pub(crate) store: MapStore,
    pub(crate) replicator: Replicator,
}

/// Three replicas of `VNODE`, chain 1 -> 2 -> 3.
pub(crate) struct Cluster {
    pub(crate) members: BTreeMap<NodeId, Member>,
    pub(crate) chain: Chain,
    pub(crate) in_flight: VecDeque<(NodeId, NodeId, PeerMsg)>,
    pub(crate) links: BTreeSet<(NodeId, NodeId)>,
    pub(crate) done: BTreeMap<Ticket, Result<(), WriteFailure>>,
    pub(crate) now_ms: u64,
    pub(crate) config: Config,
    /// Values (and digests) per part of a state transfer.
    pub(crate) part_size: usize,
    /// State reads are kept here instead of served (a test serves them by hand).
    pub(crate) stash_state_reads: bool,
    pub(crate) stashed: Vec<(NodeId, Effect)>,
    /// Every `Effect::TakesWrites`, with the member that said it.
    pub(crate) takes_writes: Vec<(NodeId, u16)>,
}

impl Cluster {
    pub(crate) fn new(durable_commit: bool) -> Cluster {
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
            takes_writes: Vec::new(),
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

    pub(crate) fn start(&mut self, node: NodeId, store: MapStore) {
        let config = Config {
            me: node,
            ..self.config.clone()
        };
        let replicator = Replicator::new(config, [(VNODE, self.chain.clone())], &store);
        self.members.insert(node, Member { store, replicator });
    }

    pub(crate) fn connect(&mut self, a: NodeId, b: NodeId) {
        self.links.insert((a, b));
        self.links.insert((b, a));
        let now = self.now_ms;
        for (me, other) in [(a, b), (b, a)] {
            let member = self.members.get_mut(&me).unwrap();
            member
                .replicator
                .handle_link_up(other, &mut member.store, Now::both(now));
        }
        self.collect();
    }

    pub(crate) fn disconnect(&mut self, a: NodeId, b: NodeId) {
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
    pub(crate) fn crash_and_restart(&mut self, node: NodeId) {
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
    pub(crate) fn collect(&mut self) {
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
                                Now::both(now),
                            ) {
                                break;
                            }
                        }
                    }
                    Effect::WriteDone { ticket, result } => {
                        self.done.insert(ticket, result);
                    }
                    Effect::TakesWrites { vnode } => self.takes_writes.push((node, vnode)),
                }
            }
        }
    }

    /// The newest state read a member asked for while `stash_state_reads` held them.
    pub(crate) fn take_state_read(&mut self) -> (NodeId, StashedRead) {
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
    pub(crate) fn deliver_on(&mut self, from: NodeId, to: NodeId) -> Option<Body> {
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
            .handle_message(from, msg, &mut member.store, Now::both(now));
        self.collect();
        Some(body)
    }

    /// Delivers messages until none are left.
    pub(crate) fn run(&mut self) {
        self.collect();
        while let Some((from, to, msg)) = self.in_flight.pop_front() {
            let now = self.now_ms;
            let member = self.members.get_mut(&to).unwrap();
            member
                .replicator
                .handle_message(from, msg, &mut member.store, Now::both(now));
            self.collect();
        }
    }

    pub(crate) fn write(
        &mut self,
        key: &str,
        value: Option<&str>,
        level: Level,
    ) -> Result<Ticket, Refusal> {
        let now = self.now_ms;
        let head = self.chain.head();
        let member = self.members.get_mut(&head).unwrap();
        member.replicator.admit_write(VNODE)?;
        let entry = member.store.write(key.as_bytes(), value.map(str::as_bytes));
        let ticket = member.replicator.handle_head_write(
            VNODE,
            entry,
            level,
            false,
            &mut member.store,
            Now::both(now),
        );
        self.collect();
        Ok(ticket)
    }

    pub(crate) fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        let now = self.now_ms;
        for member in self.members.values_mut() {
            member
                .replicator
                .handle_tick(&mut member.store, Now::both(now));
        }
        self.run();
    }

    pub(crate) fn live(&self, node: NodeId) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.members[&node].store.live()
    }

    pub(crate) fn assert_converged(&self) {
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
