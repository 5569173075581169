//! The checker against histories known to be right and known to be wrong.

use crate::*;

fn put(value: &str) -> Call {
    Call::Put {
        value: value.as_bytes().to_vec(),
        if_version: None,
    }
}

fn cas(value: &str, if_version: u64) -> Call {
    Call::Put {
        value: value.as_bytes().to_vec(),
        if_version: Some(if_version),
    }
}

fn found(value: &str, version: u64) -> Outcome {
    Outcome::Found {
        value: value.as_bytes().to_vec(),
        version,
    }
}

/// An operation on key "k" by client 0 over [call_ms, return_ms].
fn op(call: Call, outcome: Outcome, call_ms: u64, return_ms: u64) -> Op {
    Op {
        client: 0,
        key: b"k".to_vec(),
        call,
        outcome,
        call_ns: call_ms * 1_000_000,
        return_ns: return_ms.saturating_mul(1_000_000),
    }
}

fn linearizable(ops: &[Op]) -> bool {
    let verdict = check(ops);
    assert!(!matches!(verdict, Verdict::TooHard { .. }), "{verdict:?}");
    verdict.is_linearizable()
}

#[test]
fn a_sequential_history_is_linearizable() {
    let ops = [
        op(Call::Get, Outcome::NotFound, 0, 1),
        op(put("a"), Outcome::Written { version: 5 }, 2, 3),
        op(Call::Get, found("a", 5), 4, 5),
        op(Call::Delete { if_version: None }, Outcome::Deleted, 6, 7),
        op(Call::Get, Outcome::NotFound, 8, 9),
    ];
    assert!(linearizable(&ops));
}

#[test]
fn a_stale_read_after_an_acknowledged_write_is_not() {
    let ops = [
        op(put("a"), Outcome::Written { version: 5 }, 0, 1),
        op(put("b"), Outcome::Written { version: 6 }, 2, 3),
        op(Call::Get, found("a", 5), 4, 5),
    ];
    assert!(!linearizable(&ops));
}

#[test]
fn a_read_overlapping_a_write_may_see_either_value() {
    for seen in [found("a", 5), found("b", 6)] {
        let ops = [
            op(put("a"), Outcome::Written { version: 5 }, 0, 1),
            op(put("b"), Outcome::Written { version: 6 }, 2, 10),
            op(Call::Get, seen, 3, 4),
        ];
        assert!(linearizable(&ops));
    }
}

#[test]
fn reads_cannot_go_back_in_time() {
    // Two reads during one write: once one saw the new value, a later one cannot see the old.
    let ops = [
        op(put("a"), Outcome::Written { version: 5 }, 0, 1),
        op(put("b"), Outcome::Written { version: 6 }, 2, 20),
        op(Call::Get, found("b", 6), 3, 4),
        op(Call::Get, found("a", 5), 5, 6),
    ];
    assert!(!linearizable(&ops));
}

/// The shape issue 8 found: a read shows a write still in flight, the node is killed before
/// the write is durable, and after the restart the key holds the older value.
#[test]
fn a_read_of_a_write_a_crash_took_back_is_not() {
    let ops = [
        op(put("old"), Outcome::Written { version: 5 }, 0, 1),
        // In flight at the kill (t = 10): it may have happened, or not, before then.
        op(put("new"), Outcome::Unknown, 2, 10),
        op(Call::Get, found("new", 6), 3, 4),
        op(Call::Get, found("old", 5), 12, 13),
    ];
    assert!(!linearizable(&ops));
    // Without the early read, the write simply did not happen.
    assert!(linearizable(&[
        ops[0].clone(),
        ops[1].clone(),
        ops[3].clone()
    ]));
}

#[test]
fn a_version_mismatch_naming_a_lost_write_is_not() {
    let ops = [
        op(put("old"), Outcome::Written { version: 5 }, 0, 1),
        op(put("new"), Outcome::Unknown, 2, 10),
        // The refusal names version 7: the in-flight write's, since no other write exists.
        op(cas("x", 5), Outcome::VersionMismatch { current: 7 }, 3, 4),
        op(Call::Get, found("old", 5), 12, 13),
    ];
    assert!(!linearizable(&ops));
}

#[test]
fn a_not_found_for_a_lost_delete_is_not() {
    let ops = [
        op(put("old"), Outcome::Written { version: 5 }, 0, 1),
        op(Call::Delete { if_version: None }, Outcome::Unknown, 2, 10),
        op(Call::Get, Outcome::NotFound, 3, 4),
        op(Call::Get, found("old", 5), 12, 13),
    ];
    assert!(!linearizable(&ops));
}

#[test]
fn an_unknown_write_may_take_effect_late_when_its_window_is_open() {
    let ops = [
        op(put("a"), Outcome::Written { version: 5 }, 0, 1),
        op(put("b"), Outcome::Unknown, 2, u64::MAX),
        op(Call::Get, found("a", 5), 3, 4),
        op(Call::Get, found("b", 9), 100, 101),
    ];
    assert!(linearizable(&ops));
}

#[test]
fn two_compare_and_sets_on_one_version_cannot_both_win() {
    let ops = [
        op(put("a"), Outcome::Written { version: 5 }, 0, 1),
        op(cas("b", 5), Outcome::Written { version: 6 }, 2, 3),
        op(cas("c", 5), Outcome::Written { version: 7 }, 4, 5),
    ];
    assert!(!linearizable(&ops));
    // Concurrent, one wins and the other is refused with the winner's version.
    let ops = [
        op(put("a"), Outcome::Written { version: 5 }, 0, 1),
        op(cas("b", 5), Outcome::Written { version: 6 }, 2, 5),
        op(cas("c", 5), Outcome::VersionMismatch { current: 6 }, 2, 5),
    ];
    assert!(linearizable(&ops));
}

#[test]
fn versions_only_grow() {
    let ops = [
        op(put("a"), Outcome::Written { version: 5 }, 0, 1),
        op(put("b"), Outcome::Written { version: 4 }, 2, 3),
    ];
    assert!(!linearizable(&ops));
}

#[test]
fn a_delete_of_an_absent_key_with_a_version_is_a_mismatch() {
    let ops = [op(
        Call::Delete {
            if_version: Some(3),
        },
        Outcome::NotFound,
        0,
        1,
    )];
    assert!(!linearizable(&ops));
    let ops = [op(
        Call::Delete {
            if_version: Some(3),
        },
        Outcome::VersionMismatch { current: 0 },
        0,
        1,
    )];
    assert!(linearizable(&ops));
}

#[test]
fn keys_are_checked_apart() {
    let mut other = op(put("z"), Outcome::Written { version: 1 }, 0, 1);
    other.key = b"other".to_vec();
    let ops = [
        other,
        op(put("a"), Outcome::Written { version: 5 }, 2, 3),
        op(Call::Get, Outcome::NotFound, 4, 5),
    ];
    assert!(matches!(check(&ops), Verdict::Violation { key, .. } if key == b"k"));
}

/// A small deterministic generator (xorshift), so the test needs no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A history made by a real register: each operation takes effect at one instant inside its
/// window, so the checker must always accept it, whatever the overlaps.
fn register_history(seed: u64, ops: usize) -> Vec<Op> {
    let mut rng = Rng(seed | 1);
    let mut state: Option<(Vec<u8>, u64)> = None;
    let mut version = 0;
    let mut history = Vec::new();
    for i in 0..ops as u64 {
        let at_ms = 10 * i;
        let current = state.as_ref().map_or(0, |s| s.1);
        let expected = match rng.below(4) {
            0 => Some(current),
            1 => Some(current + 1),
            _ => None,
        };
        let (call, outcome) = match rng.below(3) {
            0 => match &state {
                Some((value, version)) => (
                    Call::Get,
                    Outcome::Found {
                        value: value.clone(),
                        version: *version,
                    },
                ),
                None => (Call::Get, Outcome::NotFound),
            },
            1 => {
                let value = format!("v{i}").into_bytes();
                let call = Call::Put {
                    value: value.clone(),
                    if_version: expected,
                };
                if expected.is_some_and(|e| e != current) {
                    (call, Outcome::VersionMismatch { current })
                } else if rng.below(5) == 0 {
                    // The client never learned; half the time it did happen.
                    if rng.below(2) == 0 {
                        version += 1;
                        state = Some((value, version));
                    }
                    (call, Outcome::Unknown)
                } else {
                    version += 1;
                    state = Some((value, version));
                    (call, Outcome::Written { version })
                }
            }
            _ => {
                let call = Call::Delete {
                    if_version: expected,
                };
                if expected.is_some_and(|e| e != current) {
                    (call, Outcome::VersionMismatch { current })
                } else if state.is_none() {
                    (call, Outcome::NotFound)
                } else {
                    state = None;
                    (call, Outcome::Deleted)
                }
            }
        };
        let before = rng.below(40);
        let after = rng.below(40);
        history.push(Op {
            client: (i % 6) as u32,
            key: b"k".to_vec(),
            call,
            outcome,
            call_ns: (at_ms + 100 - before) * 1_000_000,
            return_ns: (at_ms + 100 + after) * 1_000_000,
        });
    }
    history
}

#[test]
fn histories_made_by_a_real_register_always_pass() {
    for seed in 0..200 {
        let history = register_history(seed, 300);
        assert!(linearizable(&history), "seed {seed}");
    }
}

#[test]
fn a_register_history_with_one_read_answered_from_the_past_fails() {
    let mut caught = 0;
    for seed in 0..100 {
        let mut history = register_history(seed, 200);
        // Make the last read that saw a value report an older write's value instead, one that
        // was overwritten long before the read was called.
        let Some(read) = history.iter().rposition(|op| {
            matches!(op.outcome, Outcome::Found { .. }) && op.call_ns > 1_000_000_000
        }) else {
            continue;
        };
        let stale = history[..read]
            .iter()
            .find_map(|op| match (&op.call, &op.outcome) {
                (Call::Put { value, .. }, Outcome::Written { version })
                    if op.return_ns + 200_000_000 < history[read].call_ns =>
                {
                    Some((value.clone(), *version))
                }
                _ => None,
            });
        let Some((value, version)) = stale else {
            continue;
        };
        if history[read].outcome
            == (Outcome::Found {
                value: value.clone(),
                version,
            })
        {
            continue;
        }
        history[read].outcome = Outcome::Found { value, version };
        assert!(!linearizable(&history), "seed {seed}");
        caught += 1;
    }
    assert!(caught > 50, "the test made {caught} wrong histories");
}

#[test]
fn the_recorder_keeps_every_finished_operation() {
    let recorder = Recorder::default();
    let pending = recorder.call(1, b"k", put("a"));
    recorder.finish(pending, Outcome::Written { version: 1 });
    let pending = recorder.call(2, b"k", Call::Get);
    recorder.finish(pending, found("a", 1));
    let pending = recorder.call(2, b"k", Call::Get);
    recorder.forget(pending);
    let ops = recorder.ops();
    assert_eq!(ops.len(), 2);
    assert!(ops[0].call_ns <= ops[0].return_ns && ops[0].return_ns <= ops[1].call_ns);
    assert!(linearizable(&ops));
}
