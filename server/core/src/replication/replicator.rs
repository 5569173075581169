//! The replication of one shard's vnodes: inputs in, effects out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::clock::Now;
use super::msg::{Entry, KeepRange, Level, Outgoing, PeerMsg, Position};
use super::progress::{Progress, SuccessorLag};
use super::vnode::{Ctx, VnodeState};
use crate::placement::{Chain, NodeId};
pub use tessera_store::replicated::StatePart;

/// How soon a vnode that refused appends is looked at again when nothing else happens.
const REFUSED_RETRY_MS: u64 = 50;

/// In debug builds, panics if `state` reached a state it must never reach (the cheap checks of
/// `vnode/invariants.rs`; the simulator runs them all in every build).
fn debug_check(state: &VnodeState) {
    if cfg!(debug_assertions) {
        if let Some(violation) = state.quick_violation() {
            panic!("replication invariant broken: {violation}");
        }
    }
}

/// What replication needs of a shard's store (the shell implements it over `tessera-store`;
/// the simulator over the same store on an in-memory disk). Every call is synchronous.
pub trait VnodeStore {
    /// The vnode's newest applied write: its sequence number and version.
    fn position(&self, vnode: u16) -> Position;
    /// The vnode's writes are durable through this sequence number.
    fn durable_seq(&self, vnode: u16) -> u64;
    /// Applies a write of the vnode's head as it is (sequence numbers only grow).
    fn apply(&mut self, vnode: u16, entry: &Entry, epoch: u64, wall_ms: u64) -> Result<(), String>;
    /// A part of a state transfer lists the sender's live keys of a digest range: drops every
    /// key of that range not listed (and not written after `through`).
    fn drop_absent(
        &mut self,
        vnode: u16,
        keep: &KeepRange,
        through: Position,
        epoch: u64,
    ) -> Result<(), String>;
    /// A state transfer into the vnode starts with it at `seq`: remember across a restart that
    /// one is under way, before any part is applied.
    fn start_state(&mut self, vnode: u16, seq: u64) -> Result<(), String>;
    /// Ends a state transfer: moves the vnode's position to `through`, and remembers across a
    /// restart that no transfer is under way.
    fn finish_state(&mut self, vnode: u16, through: Position) -> Result<(), String>;
    /// Where a state transfer into the vnode started, if one was cut short by a restart: the
    /// copy may lack deletes that only its end would have brought.
    fn transfer_cut_short(&self, vnode: u16) -> Option<u64>;
    /// The chain has committed the vnode's writes through `seq`: `strong` reads may show them.
    fn set_committed(&mut self, vnode: u16, seq: u64);
    /// This replica's copy holds every committed write again (after a restart): reads may go
    /// once the commit point reaches `floor`. Until then every read of the vnode waits.
    fn release_reads(&mut self, vnode: u16, floor: u64);
    /// This replica's copy is not whole (a state transfer is filling it): every read of the
    /// vnode waits until `release_reads` again.
    fn hold_reads(&mut self, vnode: u16);
    /// Whether `apply` would take a write now (no full disk, no failed disk, room in the
    /// write buffer): a replica that refused writes asks for them again only then.
    fn accepts_writes(&self) -> bool;
}

#[derive(Clone, Debug)]
pub struct Config {
    pub me: NodeId,
    /// Writes count only once durable (`--fsync always`), for every level's ack and for commit.
    pub durable_commit: bool,
    /// Bytes the shard's retention queues may hold; past it writes are refused OVERLOADED.
    pub queue_limit_bytes: usize,
    /// How long a write waits for its ack point before it fails with "outcome unknown".
    pub write_timeout_ms: u64,
    /// Bytes of messages a link may hold unwritten before streams to it pause (flow control:
    /// the shell reports what it has not written yet with `handle_outbox`).
    pub outbox_limit_bytes: usize,
    /// Every replica of every vnode starts empty (a cluster whose members all formed it in
    /// this run): heads take writes at once instead of first asking their replicas whether
    /// any is ahead (a restarted head must ask: a replica may hold writes it lost).
    pub fresh: bool,
}

/// A client write waiting for its ack point.
pub type Ticket = u64;

/// Why a write that was applied at the head was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteFailure {
    #[error("the write's ack point was not reached in time: the outcome is unknown (it may still be applied)")]
    Timeout,
    #[error("the write's outcome is unknown: {0}")]
    Stopped(String),
}

/// Why a write is refused before it is applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this node is not the head of vnode {vnode}: node {head} is")]
    NotHead { vnode: u16, head: NodeId },
    #[error("this node holds no replica of vnode {vnode}")]
    NotHeld { vnode: u16 },
    #[error("vnode {vnode}'s head restarted and is still checking its replicas; retry shortly")]
    Recovering { vnode: u16 },
    #[error(
        "the replication queues are full ({queued_bytes} bytes): a replica is behind; retry later"
    )]
    Overloaded { queued_bytes: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this message to the shard that holds its vnode on node `to`.
    Send(Outgoing),
    /// Read the store's state of `vnode` newer than `since` (`tessera-store`'s
    /// `TransferSource`) and give it, part by part, to `Replicator::handle_state_part` for
    /// `to`, while `Replicator::transfer_current` says the transfer still matters.
    ReadState {
        vnode: u16,
        to: NodeId,
        since: Position,
        transfer: u64,
    },
    /// A client write reached its ack point, or never will.
    WriteDone {
        ticket: Ticket,
        result: Result<(), WriteFailure>,
    },
    /// A restarted head has checked its replicas and takes writes of `vnode` now: writes that
    /// wait for that (`admit_write` said `Recovering`) may go.
    TakesWrites { vnode: u16 },
}

pub struct Replicator {
    config: Config,
    vnodes: BTreeMap<u16, VnodeState>,
    queued_bytes: usize,
    effects: VecDeque<Effect>,
    next_ticket: Ticket,
    links_up: BTreeSet<NodeId>,
    /// Per link: bytes handed to the shell and not yet written, as far as this core knows.
    outbox: BTreeMap<NodeId, usize>,
    /// Vnodes that refused appends (the queues were full, or the store took no writes).
    refused: BTreeSet<u16>,
    /// Vnodes with client writes waiting (a tick visits only these: with thousands of vnodes,
    /// visiting all of them every tick stalled the shard for milliseconds).
    waiting: BTreeSet<u16>,
    /// Per successor, the vnodes whose streams wait for room in its outbox.
    paused: BTreeMap<NodeId, BTreeSet<u16>>,
    progress: Progress,
    /// Names the next state transfer this shard sends.
    next_transfer: u64,
}

impl Replicator {
    /// Replication of the vnodes this shard holds (`held`: vnode and its chain).
    pub fn new(
        config: Config,
        held: impl IntoIterator<Item = (u16, Chain)>,
        store: &dyn VnodeStore,
    ) -> Replicator {
        let me = config.me;
        let vnodes = held
            .into_iter()
            .map(|(vnode, chain)| {
                let state = VnodeState::new(vnode, chain, me, store, config.fresh);
                (vnode, state)
            })
            .collect();
        Replicator {
            config,
            vnodes,
            queued_bytes: 0,
            effects: VecDeque::new(),
            next_ticket: 1,
            links_up: BTreeSet::new(),
            outbox: BTreeMap::new(),
            refused: BTreeSet::new(),
            waiting: BTreeSet::new(),
            paused: BTreeMap::new(),
            progress: Progress::default(),
            next_transfer: 1,
        }
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    #[allow(clippy::too_many_arguments)]
    fn ctx<'a>(
        effects: &'a mut VecDeque<Effect>,
        next_transfer: &'a mut u64,
        outbox: &'a mut BTreeMap<NodeId, usize>,
        progress: &'a mut Progress,
        config: &Config,
        queued_bytes: usize,
        store: &'a mut dyn VnodeStore,
        now: Now,
    ) -> Ctx<'a> {
        Ctx {
            store,
            effects,
            durable_commit: config.durable_commit,
            now,
            outbox,
            outbox_limit: config.outbox_limit_bytes,
            congested: queued_bytes >= config.queue_limit_bytes,
            progress,
            next_transfer,
        }
    }

    /// Runs `f` on one vnode and then flushes its output.
    fn with_vnode(
        &mut self,
        vnode: u16,
        store: &mut dyn VnodeStore,
        now: Now,
        f: impl FnOnce(&mut VnodeState, &mut Ctx<'_>) -> isize,
    ) {
        let Some(state) = self.vnodes.get_mut(&vnode) else {
            return;
        };
        let mut cx = Self::ctx(
            &mut self.effects,
            &mut self.next_transfer,
            &mut self.outbox,
            &mut self.progress,
            &self.config,
            self.queued_bytes,
            store,
            now,
        );
        let delta = f(state, &mut cx);
        state.flush(&mut cx);
        debug_check(state);
        self.queued_bytes = self.queued_bytes.saturating_add_signed(delta);
        if state.refused {
            self.refused.insert(vnode);
        }
        if state.has_waiters() {
            self.waiting.insert(vnode);
        } else {
            self.waiting.remove(&vnode);
        }
        let paused_on = state.paused_on();
        for (node, vnodes) in self.paused.iter_mut() {
            if Some(*node) != paused_on {
                vnodes.remove(&vnode);
            }
        }
        if let Some(node) = paused_on {
            self.paused.entry(node).or_default().insert(vnode);
        }
    }

    /// The vnodes that refused appends ask for them again once they would take them.
    /// A vnode resumes as soon as it would take appends again: when the shard's queues have
    /// room, or when its own successor has caught up even though they do not. Waiting for
    /// room alone could wait in a cycle (simulator, seed 332 with compaction: node 0's queue
    /// held a write for node 1, which had refused it while behind its own tail; node 1's queue
    /// held one for node 0, which had refused it likewise; both tails caught up, and neither
    /// shard ever had room again).
    fn resume_refused(&mut self, store: &mut dyn VnodeStore, now: Now) {
        if self.refused.is_empty() || !store.accepts_writes() {
            return;
        }
        let congested = self.queued_bytes >= self.config.queue_limit_bytes;
        let ready: Vec<u16> = self
            .refused
            .iter()
            .copied()
            .filter(|v| !congested || self.vnodes.get(v).is_none_or(|s| !s.behind_successor()))
            .collect();
        for vnode in ready {
            self.refused.remove(&vnode);
            self.with_vnode(vnode, store, now, |state, cx| {
                state.resume_refused(cx);
                0
            });
        }
    }

    // ------------------------------------------------------------------ links

    pub fn handle_link_up(&mut self, node: NodeId, store: &mut dyn VnodeStore, now: Now) {
        self.links_up.insert(node);
        self.outbox.remove(&node); // a new connection: nothing waits on it
        let vnodes: Vec<u16> = self.vnodes.keys().copied().collect();
        for vnode in vnodes {
            self.with_vnode(vnode, store, now, |state, cx| {
                state.handle_link_up(node, cx);
                0
            });
        }
    }

    pub fn handle_link_down(&mut self, node: NodeId) {
        self.links_up.remove(&node);
        self.outbox.remove(&node);
        for state in self.vnodes.values_mut() {
            state.handle_link_down(node);
        }
        self.trim_queues();
        self.vnodes.values().for_each(debug_check);
    }

    /// The shell's word on the link to `node`: `unwritten_bytes` of what it was handed are
    /// not written yet. Streams paused by a full outbox go on once it has room; returns
    /// whether they did.
    pub fn handle_outbox(
        &mut self,
        node: NodeId,
        unwritten_bytes: usize,
        store: &mut dyn VnodeStore,
        now: Now,
    ) -> bool {
        let was_full = self.outbox_full(node);
        self.outbox.insert(node, unwritten_bytes);
        let resumed = was_full && !self.outbox_full(node);
        if resumed {
            let vnodes = self.paused.remove(&node).unwrap_or_default();
            for vnode in vnodes {
                self.with_vnode(vnode, store, now, |_, _| 0);
            }
        }
        resumed
    }

    /// Whether streams to `node` wait for its outbox to drain.
    pub fn outbox_full(&self, node: NodeId) -> bool {
        self.outbox.get(&node).copied().unwrap_or(0) >= self.config.outbox_limit_bytes
    }

    pub fn link_up(&self, node: NodeId) -> bool {
        self.links_up.contains(&node)
    }

    // ------------------------------------------------------------------ messages

    pub fn handle_message(
        &mut self,
        from: NodeId,
        msg: PeerMsg,
        store: &mut dyn VnodeStore,
        now: Now,
    ) {
        let epoch_matches = self
            .vnodes
            .get(&msg.vnode)
            .is_some_and(|s| s.chain.epoch == msg.epoch);
        if !epoch_matches {
            return; // another epoch (or a vnode not held here): dropped
        }
        self.with_vnode(msg.vnode, store, now, |state, cx| {
            state.handle_message(from, msg.body, cx)
        });
        self.trim_queues();
        self.resume_refused(store, now);
    }

    /// Whether the transfer an `Effect::ReadState` asked for is still wanted (a link that
    /// went down, a newer transfer or a finished one end it): the reader stops when not.
    pub fn transfer_current(&self, vnode: u16, to: NodeId, transfer: u64) -> bool {
        self.vnodes
            .get(&vnode)
            .is_some_and(|s| s.sending_transfer(to, transfer))
    }

    /// The shell read one part of a transfer: sends it. False when the transfer is no longer
    /// wanted (the reader stops).
    pub fn handle_state_part(
        &mut self,
        vnode: u16,
        to: NodeId,
        transfer: u64,
        part: StatePart,
        store: &mut dyn VnodeStore,
        now: Now,
    ) -> bool {
        let mut sent = false;
        self.with_vnode(vnode, store, now, |state, cx| {
            let (ok, delta) = state.send_state_part(to, transfer, part, cx);
            sent = ok;
            delta
        });
        sent
    }

    /// The shell could not read a transfer (an unreadable record): it is abandoned, and the
    /// successor stays behind until it asks again (it is reported, never skipped).
    pub fn handle_state_failed(
        &mut self,
        vnode: u16,
        to: NodeId,
        transfer: u64,
        store: &mut dyn VnodeStore,
        now: Now,
    ) {
        self.with_vnode(vnode, store, now, |state, _| {
            state.abandon_transfer(to, transfer);
            0
        });
    }

    // ------------------------------------------------------------------ writes

    /// Whether a write of `vnode` may be applied here now.
    pub fn admit_write(&self, vnode: u16) -> Result<(), Refusal> {
        let state = self.vnodes.get(&vnode).ok_or(Refusal::NotHeld { vnode })?;
        if !state.is_head() {
            return Err(Refusal::NotHead {
                vnode,
                head: state.chain.head(),
            });
        }
        if !state.takes_writes() {
            return Err(Refusal::Recovering { vnode });
        }
        if self.queued_bytes >= self.config.queue_limit_bytes {
            return Err(Refusal::Overloaded {
                queued_bytes: self.queued_bytes,
            });
        }
        Ok(())
    }

    /// A write the shell applied to the store as head (after `admit_write`): streams it, and
    /// returns the ticket that `Effect::WriteDone` answers once its ack point is reached.
    /// `durable`: the write counts only once durable (the request asked, or `durable_commit`).
    pub fn handle_head_write(
        &mut self,
        vnode: u16,
        entry: Entry,
        level: Level,
        durable: bool,
        store: &mut dyn VnodeStore,
        now: Now,
    ) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let deadline_ms = now.mono_ms.saturating_add(self.config.write_timeout_ms);
        let durable = durable || self.config.durable_commit;
        let durable_seq = store.durable_seq(vnode);
        self.with_vnode(vnode, store, now, |state, _| {
            let waiter = Some((ticket, level, durable, deadline_ms));
            state.handle_head_write(entry, waiter, durable_seq)
        });
        self.trim_queues();
        ticket
    }

    /// The store made more of these vnodes' writes durable.
    pub fn handle_durable(&mut self, vnodes: &[u16], store: &mut dyn VnodeStore, now: Now) {
        for &vnode in vnodes {
            let durable = store.durable_seq(vnode);
            self.with_vnode(vnode, store, now, |state, _| {
                state.handle_durable(durable);
                0
            });
        }
    }

    /// When `handle_tick` is next needed (monotonic ms): the earliest deadline of a waiting
    /// write, or `REFUSED_RETRY_MS` from `now` while vnodes that refused appends wait to ask
    /// again (a store that took no writes tells no one when it takes them again); `None` when
    /// neither. Visits only the vnodes with writes waiting.
    pub fn poll_timeout(&self, now: Now) -> Option<u64> {
        let retry = (!self.refused.is_empty()).then(|| now.mono_ms + REFUSED_RETRY_MS);
        self.waiting
            .iter()
            .filter_map(|vnode| self.vnodes.get(vnode)?.next_deadline_ms())
            .chain(retry)
            .min()
    }

    /// Time passed: writes past their deadline fail.
    pub fn handle_tick(&mut self, store: &mut dyn VnodeStore, now: Now) {
        let vnodes: Vec<u16> = self.waiting.iter().copied().collect();
        for vnode in vnodes {
            self.with_vnode(vnode, store, now, |_, _| 0);
        }
        self.resume_refused(store, now);
    }

    /// The store stopped taking writes: every write waiting here fails.
    pub fn fail_writes(&mut self, reason: &str, store: &mut dyn VnodeStore, now: Now) {
        for state in self.vnodes.values_mut() {
            let mut cx = Self::ctx(
                &mut self.effects,
                &mut self.next_transfer,
                &mut self.outbox,
                &mut self.progress,
                &self.config,
                self.queued_bytes,
                store,
                now,
            );
            state.fail_waiters(WriteFailure::Stopped(reason.to_string()), &mut cx);
        }
    }

    /// When successors are down, their queues give way first: what does not fit is dropped and
    /// they get a state transfer when they return.
    fn trim_queues(&mut self) {
        if self.queued_bytes <= self.config.queue_limit_bytes {
            return;
        }
        for state in self.vnodes.values_mut() {
            if !state.successor_link_up() {
                self.queued_bytes -= state.drop_queue();
                debug_check(state);
            }
        }
    }

    /// Drops every retention queue whose successor is down (tests: as an overflow would).
    #[cfg(test)]
    pub(crate) fn trim_all_queues_for_test(&mut self) {
        for state in self.vnodes.values_mut() {
            if !state.successor_link_up() {
                self.queued_bytes -= state.drop_queue();
            }
        }
    }

    // ------------------------------------------------------------------ queries

    /// This node's position in `vnode`'s chain, if it holds it.
    pub fn chain(&self, vnode: u16) -> Option<&Chain> {
        self.vnodes.get(&vnode).map(|s| &s.chain)
    }

    /// What this replica has applied of `vnode` (a `session` read waits for its token), as
    /// it may claim it: while a transfer here is incomplete, no more than where it started.
    pub fn applied(&self, vnode: u16) -> Option<u64> {
        self.vnodes.get(&vnode).map(|s| s.claimed().applied)
    }

    /// The commit point this replica knows for `vnode`.
    pub fn committed(&self, vnode: u16) -> Option<u64> {
        self.vnodes.get(&vnode).map(|s| s.committed)
    }

    /// The whole state of one vnode, for a failing simulation's report.
    pub fn describe(&self, vnode: u16) -> Option<String> {
        self.vnodes.get(&vnode).map(|s| s.describe())
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Catch-ups and chain changes so far.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// How far each successor is behind, over every vnode held here (a walk of them all: for
    /// metrics, a few times a second at most).
    pub fn successor_lag(&self) -> BTreeMap<NodeId, SuccessorLag> {
        let mut lags: BTreeMap<NodeId, SuccessorLag> = BTreeMap::new();
        for (node, lag) in self.vnodes.values().filter_map(|s| s.successor_lag()) {
            lags.entry(node).or_default().add(lag);
        }
        lags
    }

    /// The first broken invariant among the vnodes held here (`vnode/invariants.rs`): a walk of
    /// every vnode and queue, for the simulator and tests.
    pub fn invariant_violation(&self) -> Option<String> {
        self.vnodes.values().find_map(|s| s.invariant_violation())
    }

    /// The vnodes this replica heads, with their chains' epochs (the simulator checks that no
    /// two replicas head one vnode in one epoch).
    pub fn heads(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.vnodes
            .values()
            .filter(|s| s.is_head())
            .map(|s| (s.vnode, s.chain.epoch))
    }

    /// The vnodes held here.
    pub fn vnodes(&self) -> impl Iterator<Item = u16> + '_ {
        self.vnodes.keys().copied()
    }
}
