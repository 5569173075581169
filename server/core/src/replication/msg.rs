//! What replicas say to each other, and what a client asks for.

use crate::placement::NodeId;
pub use tessera_store::replicated::{Entry, KeepRange, Position};

/// How much a client asks of an operation (DESIGN.md, "Consistency per operation").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Write acknowledged once the head has it; read served by the replica reached.
    Eventual,
    /// Write acknowledged once head and middle have it; read served by any replica that has
    /// applied the session's token.
    Session,
    /// Write acknowledged once the whole chain has it; read shows only committed writes.
    #[default]
    Strong,
}

/// A message about one vnode between two of its replicas. Every message carries the chain's
/// epoch; a replica drops messages of any other epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMsg {
    pub vnode: u16,
    pub epoch: u64,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Predecessor -> successor: writes in sequence order, the first right after `after`.
    /// `prefix` is what every replica from the head to the sender has (applied and durable):
    /// with the acks coming back, every replica can tell what the whole chain has.
    Append {
        after: u64,
        entries: Vec<Entry>,
        prefix: Watermarks,
        /// The sender's commit point: a replica that restarted holds reads until its copy
        /// reaches it (it may have lost committed writes that were not durable).
        committed: u64,
    },
    /// Successor -> predecessor: what the successor has (`own`) and what it and every replica
    /// after it have (`suffix`).
    Ack { own: Watermarks, suffix: Watermarks },
    /// "Send me what comes after this": a successor on (re)connecting, or when a stream skipped;
    /// also the answer to a `Probe`.
    Position(Position),
    /// Like `Position`, from a successor whose copy a transfer left partial (it was cut short):
    /// its position is good only as the start of another transfer, never for a resend from
    /// the queue, which does not carry the deletes that only a transfer's keep list brings.
    ResumeTransfer(Position),
    /// A restarted head asks every replica where it stands before taking writes.
    Probe,
    /// Sender -> receiver: one part of a state transfer (`vnode/transfer.rs` has the protocol).
    /// Parts come in order: first each live key's newest write newer than `since`, in
    /// version order (so sequence numbers grow, with gaps); then the live key digests, by
    /// digest range, so that the receiver drops the keys the sender no longer holds.
    State {
        /// Names the transfer: parts of any other one are refused.
        transfer: u64,
        /// 0, 1, 2, ...: a part out of order ends the transfer at the receiver.
        part: u32,
        /// The transfer holds every key's newest write after this position: a receiver behind
        /// it would be left with a hole, and asks again from where it is instead.
        since: Position,
        /// The values were sent through this position (meaningful on parts with `keep`).
        through: Position,
        entries: Vec<Entry>,
        /// A range of the sender's live key digests (after the last part with entries).
        keep: Option<KeepRange>,
        /// The last part: the sender's applied sequence number when it read its last keep part.
        /// A key rewritten meanwhile was left out (its write comes in the stream after
        /// `through`): the receiver serves no read until it has applied this far.
        last: Option<u64>,
    },
    /// A restarted head asks the replica that is ahead of it for its state newer than `since`.
    PullState { since: Position },
    /// Receiver -> sender: every part of this transfer is applied (the receiver holds its
    /// `through`); the sender may resend from its queue again.
    StateDone { transfer: u64 },
}

impl Body {
    /// About the bytes the message takes on the wire (what flow control counts).
    pub fn bytes(&self) -> usize {
        const FIXED: usize = 64;
        match self {
            Body::Append { entries, .. } => FIXED + entries.iter().map(Entry::bytes).sum::<usize>(),
            Body::State { entries, keep, .. } => {
                FIXED
                    + entries.iter().map(Entry::bytes).sum::<usize>()
                    + keep.as_ref().map_or(0, |keep| keep.digests.len() * 16)
            }
            _ => FIXED,
        }
    }
}

/// Sequence numbers a replica (or a run of replicas) has applied and made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub applied: u64,
    pub durable: u64,
}

impl Watermarks {
    pub fn min(self, other: Watermarks) -> Watermarks {
        Watermarks {
            applied: self.applied.min(other.applied),
            durable: self.durable.min(other.durable),
        }
    }

    /// The one that counts: durable when writes must be durable to count.
    pub fn pick(self, durable: bool) -> u64 {
        if durable {
            self.durable
        } else {
            self.applied
        }
    }

    /// No information yet: nothing counts until a message says so.
    pub const NONE: Watermarks = Watermarks {
        applied: 0,
        durable: 0,
    };

    /// Everything: the identity of `min` (the end of a chain has nothing after it).
    pub const ALL: Watermarks = Watermarks {
        applied: u64::MAX,
        durable: u64::MAX,
    };
}

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: NodeId,
    pub msg: PeerMsg,
}
