//! The Wing-Gong-Lowe search over one key's operations.
//!
//! The operations' call and return events, in time order, form a doubly linked list. The search
//! walks it from the front: at a call it tries to linearize that operation now (the model must
//! accept its answer from the current state); if it can, the operation's two events are lifted
//! out of the list, the attempt is pushed on a stack, and the walk restarts from the front. At
//! a return event, the operation it closes was not linearized in time: the search pops the last
//! attempt, puts its events back, and tries that operation's next possible outcome or the next
//! candidate. The history is linearizable once the list is empty. Lowe's memo skips any
//! (set of operations linearized, state) pair met before, which keeps the search polynomial on
//! the histories real clients make.

use std::collections::HashSet;

use crate::model::{step, State};
use crate::Op;

const NIL: usize = usize::MAX;

/// The answer for one key.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    Linearizable,
    /// No order explains the answers; the report shows where the search got stuck.
    Violation(String),
    TooHard,
}

struct Node {
    op: usize,
    /// For a call event: the index of its return event; `NIL` for a return event.
    return_node: usize,
    prev: usize,
    next: usize,
}

struct Events {
    nodes: Vec<Node>,
}

impl Events {
    /// Node 0 is the head; then every call and return event in time order (a call before a
    /// return at the same instant: they overlap).
    fn new(ops: &[&Op]) -> Events {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            events.push((op.call_ns, false, index));
            events.push((op.return_ns.max(op.call_ns), true, index));
        }
        events.sort_unstable();
        let mut nodes = vec![Node {
            op: NIL,
            return_node: NIL,
            prev: NIL,
            next: 1,
        }];
        let mut return_of = vec![NIL; ops.len()];
        for (position, &(_, is_return, op)) in events.iter().enumerate() {
            if is_return {
                return_of[op] = position + 1;
            }
        }
        for (position, &(_, is_return, op)) in events.iter().enumerate() {
            let index = position + 1;
            nodes.push(Node {
                op,
                return_node: if is_return { NIL } else { return_of[op] },
                prev: index - 1,
                next: if index == events.len() {
                    NIL
                } else {
                    index + 1
                },
            });
        }
        if events.is_empty() {
            nodes[0].next = NIL;
        }
        Events { nodes }
    }

    fn unlink(&mut self, index: usize) {
        let (prev, next) = (self.nodes[index].prev, self.nodes[index].next);
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, index: usize) {
        let (prev, next) = (self.nodes[index].prev, self.nodes[index].next);
        self.nodes[prev].next = index;
        if next != NIL {
            self.nodes[next].prev = index;
        }
    }

    /// Takes an operation's call and return events out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].return_node);
    }

    /// Puts them back (the exact reverse of `lift`, so the last lifted comes back first).
    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].return_node);
        self.relink(call);
    }

    fn first(&self) -> usize {
        self.nodes[0].next
    }
}

/// Which operations are linearized, as a bit set.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Linearized(Vec<u64>);

impl Linearized {
    fn new(ops: usize) -> Linearized {
        Linearized(vec![0; ops.div_ceil(64)])
    }
    fn set(&mut self, op: usize) {
        self.0[op / 64] |= 1 << (op % 64);
    }
    fn clear(&mut self, op: usize) {
        self.0[op / 64] &= !(1 << (op % 64));
    }
}

/// One linearized operation on the stack: its call event, the state before it, and which of
/// its possible next states was taken.
struct Attempt {
    call: usize,
    before: State,
    alternative: usize,
}

/// Checks one key's operations, starting from an absent key, in at most `max_steps` steps.
pub fn check_key(ops: &[&Op], max_steps: u64) -> KeyVerdict {
    let mut events = Events::new(ops);
    let mut state: State = None;
    let mut linearized = Linearized::new(ops.len());
    let mut seen: HashSet<(Linearized, State)> = HashSet::new();
    let mut stack: Vec<Attempt> = Vec::new();
    let mut deepest: Vec<usize> = Vec::new();
    let (mut entry, mut first_alternative) = (events.first(), 0);
    let mut steps = 0u64;
    while events.first() != NIL {
        steps += 1;
        if steps > max_steps {
            return KeyVerdict::TooHard;
        }
        let node = &events.nodes[entry];
        if node.return_node == NIL {
            // A return event: the operation it closes had to be linearized by now.
            let Some(attempt) = stack.pop() else {
                return KeyVerdict::Violation(report(ops, &deepest));
            };
            state = attempt.before;
            linearized.clear(events.nodes[attempt.call].op);
            events.unlift(attempt.call);
            (entry, first_alternative) = (attempt.call, attempt.alternative + 1);
            continue;
        }
        let op = node.op;
        let nexts = step(&state, &ops[op].call, &ops[op].outcome);
        let mut taken = None;
        for (alternative, next) in nexts.iter().enumerate().skip(first_alternative) {
            linearized.set(op);
            if seen.insert((linearized.clone(), next.clone())) {
                taken = Some((alternative, next.clone()));
                break;
            }
            linearized.clear(op);
        }
        match taken {
            Some((alternative, next)) => {
                let before = std::mem::replace(&mut state, next);
                stack.push(Attempt {
                    call: entry,
                    before,
                    alternative,
                });
                events.lift(entry);
                if stack.len() > deepest.len() {
                    deepest = stack.iter().map(|a| events.nodes[a.call].op).collect();
                }
                (entry, first_alternative) = (events.first(), 0);
            }
            None => (entry, first_alternative) = (events.nodes[entry].next, 0),
        }
    }
    KeyVerdict::Linearizable
}

/// The longest order the search could explain, and the operations none of which could follow.
fn report(ops: &[&Op], deepest: &[usize]) -> String {
    let describe = |index: usize| {
        let op = ops[index];
        let return_ms = match op.return_ns {
            u64::MAX => "never".to_string(),
            ns => format!("{:.3}", ns as f64 / 1e6),
        };
        format!(
            "  #{index} client {} {} -> {} [{:.3} ms .. {return_ms} ms]",
            op.client,
            op.call,
            op.outcome,
            op.call_ns as f64 / 1e6
        )
    };
    let mut out = format!(
        "{} operations; the longest explainable order has {}; its last ones:\n",
        ops.len(),
        deepest.len()
    );
    for &index in deepest
        .iter()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .iter()
        .rev()
    {
        out.push_str(&describe(*index));
        out.push('\n');
    }
    let mut rest: Vec<usize> = (0..ops.len()).filter(|i| !deepest.contains(i)).collect();
    rest.sort_by_key(|&i| ops[i].return_ns);
    out.push_str("none of these can come next (earliest answers first):\n");
    for index in rest.into_iter().take(8) {
        out.push_str(&describe(index));
        out.push('\n');
    }
    out
}
