//! States a replica must never reach: checked in debug builds after every input that goes
//! through the `Replicator` (messages, writes, ticks, links up and down, durability, dropped
//! queues; `quick_violation`, no walk of the queue), and in full by the simulator after every
//! step in every build (`invariant_violation`).
//!
//! A violation is a bug in this crate, never bad input: a peer's message can make a replica
//! drop it or ask again, but no message may move these values into a state below. The
//! cross-replica rule (one head per vnode and epoch) needs every replica's view, so the
//! simulator checks it with `Replicator::heads`.

use super::VnodeState;

impl VnodeState {
    /// What is wrong with this replica's state, if anything: every check, walking the whole
    /// retention queue (the simulator, tests).
    pub fn invariant_violation(&self) -> Option<String> {
        self.quick_violation().or_else(|| {
            self.check_queue_entries()
                .map(|what| format!("vnode {} on node {}: {what}", self.vnode, self.me))
        })
    }

    /// The checks that cost no walk of the queue, so that a debug build can make them after
    /// every input (a walk there made a 300 000-entry queue quadratic).
    pub fn quick_violation(&self) -> Option<String> {
        self.check_watermarks()
            .or_else(|| self.check_queue_ends())
            .or_else(|| self.check_roles())
            .map(|what| format!("vnode {} on node {}: {what}", self.vnode, self.me))
    }

    /// Applied is never behind durable or the commit point: durable means "applied and synced",
    /// and committed writes are ones this replica applied.
    fn check_watermarks(&self) -> Option<String> {
        if self.own.durable > self.own.applied {
            return Some(format!("durable {} past applied", self.own.durable));
        }
        if self.committed > self.own.applied {
            return Some(format!(
                "committed {} past applied {}",
                self.committed, self.own.applied
            ));
        }
        if self.ack_cap.is_some_and(|cap| cap > self.own.applied) {
            return Some(format!("ack cap {:?} past applied", self.ack_cap));
        }
        None
    }

    /// The retention queue's ends: after its base, no further than what this replica has, as
    /// many entries as the run between them holds; and nothing sent past what it has.
    fn check_queue_ends(&self) -> Option<String> {
        let down = self.down.as_ref()?;
        if let (Some(front), Some(back)) = (down.queue.front(), down.queue.back()) {
            let run = back.seq.checked_sub(front.seq).map(|d| d + 1);
            if run != Some(down.queue.len() as u64) {
                return Some(format!(
                    "queue gap: {} entries from seq {} to {}",
                    down.queue.len(),
                    front.seq,
                    back.seq
                ));
            }
            if back.seq > self.own.applied {
                return Some(format!("queued seq {} past applied", back.seq));
            }
            if down.base.is_some_and(|base| base.seq >= front.seq) {
                return Some(format!(
                    "queue base {:?} not before {}",
                    down.base, front.seq
                ));
            }
        }
        if down.sent.is_some_and(|sent| sent > self.own.applied) {
            return Some(format!("sent {:?} past applied", down.sent));
        }
        None
    }

    /// Every queued entry follows the one before it, and the byte count is right.
    fn check_queue_entries(&self) -> Option<String> {
        let down = self.down.as_ref()?;
        let mut expected = down.queue.front().map(|e| e.seq);
        let mut bytes = 0;
        for entry in &down.queue {
            if Some(entry.seq) != expected {
                return Some(format!("queue gap before seq {}", entry.seq));
            }
            expected = Some(entry.seq + 1);
            bytes += entry.bytes();
        }
        if bytes != down.queue_bytes {
            return Some(format!(
                "queue holds {bytes} bytes, counted {}",
                down.queue_bytes
            ));
        }
        None
    }

    /// A replica streams to its successor in its own chain only, and only a head recovers.
    fn check_roles(&self) -> Option<String> {
        if self.chain.position(self.me).is_none() {
            return Some("not in its own chain".into());
        }
        if let Some(down) = &self.down {
            if self.chain.successor(self.me) != Some(down.node) {
                return Some(format!("streams to {}, not its successor", down.node));
            }
        }
        if self.recovery.is_some() && !self.is_head() {
            return Some("recovering but not the head".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::Downstream;
    use super::*;
    use crate::placement::Chain;
    use crate::replication::msg::{Entry, Position, Watermarks};

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            version: seq * 10,
            expiry_ms: 0,
            key: vec![b'k'],
            value: Some(vec![b'v']),
        }
    }

    fn head_with_queue(seqs: &[u64]) -> VnodeState {
        let chain = Chain {
            replicas: vec![1, 2, 3],
            epoch: 1,
        };
        let mut state = VnodeState::at(7, chain, 1, Watermarks::NONE, 0, true);
        state.own = Watermarks {
            applied: 5,
            durable: 5,
        };
        let mut down = Downstream::new(2, Position::default());
        for &seq in seqs {
            let e = entry(seq);
            down.queue_bytes += e.bytes();
            down.queue.push_back(e);
        }
        state.down = Some(down);
        state
    }

    #[test]
    fn a_sound_state_passes() {
        assert_eq!(head_with_queue(&[1, 2, 3]).invariant_violation(), None);
    }

    #[test]
    fn durable_past_applied_is_caught() {
        let mut state = head_with_queue(&[]);
        state.own.durable = 6;
        let what = state.invariant_violation().expect("a violation");
        assert!(what.contains("durable 6 past applied"), "{what}");
    }

    #[test]
    fn a_sequence_gap_in_the_queue_is_caught() {
        let what = head_with_queue(&[1, 2, 4]).quick_violation();
        assert!(what.expect("a violation").contains("queue gap"));
        let what = head_with_queue(&[1, 3, 3]).invariant_violation();
        assert!(what.expect("a violation").contains("gap before seq 3"));
    }

    #[test]
    fn a_queue_past_applied_is_caught() {
        let what = head_with_queue(&[5, 6]).quick_violation();
        assert!(what
            .expect("a violation")
            .contains("queued seq 6 past applied"));
    }

    #[test]
    fn a_wrong_byte_count_is_caught() {
        let mut state = head_with_queue(&[1]);
        state.down.as_mut().expect("down").queue_bytes += 1;
        assert!(state.invariant_violation().is_some());
    }

    #[test]
    fn recovering_as_a_middle_is_caught() {
        let chain = Chain {
            replicas: vec![1, 2, 3],
            epoch: 1,
        };
        let mut state = VnodeState::at(7, chain, 2, Watermarks::NONE, 0, true);
        state.recovery = Some(Default::default());
        let what = state.invariant_violation().expect("a violation");
        assert!(what.contains("recovering but not the head"), "{what}");
    }
}
