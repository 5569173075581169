//! State transfers cut short, failing, racing with writes (the catch-up issue's defects).

use crate::replication::testkit::*;
use crate::replication::*;

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

/// Simulator seed 647: the tail applied every value of a transfer but not the keep list, and
/// then both it and its sender restart. The sender forgot the transfer and its queue; only
/// the tail's durable mark (`VnodeStore::start_state`) says its copy may lack deletes, so it
/// asks for a transfer, not a resend.
#[test]
fn a_transfer_cut_short_by_restarts_of_both_ends_still_brings_the_deletes() {
    let mut c = transfer_pending(1);
    c.connect(2, 3);
    assert!(matches!(c.deliver_on(3, 2), Some(Body::Position(_))));
    while is_values_part(&c.deliver_on(2, 3)) {}
    let tail = &c.members[&3].store;
    assert_eq!(
        tail.position, c.members[&2].store.position,
        "every value is here"
    );
    assert!(tail.data.contains_key(b"doomed".as_slice()));
    c.crash_and_restart(2);
    c.crash_and_restart(3);
    c.run();
    c.assert_converged();
    let tail = &c.members[&3].store;
    assert!(!tail.data.contains_key(b"doomed".as_slice()));
    assert!(tail.released.is_some(), "reads released once whole");
    assert_eq!(
        tail.transfer_started_at, None,
        "the transfer is marked done"
    );
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
        assert!(middle.replicator.handle_state_part(
            vnode,
            3,
            id,
            part,
            &mut middle.store,
            Now::default()
        ));
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
        .handle_state_failed(vnode, to, transfer, &mut middle.store, Now::default());
    assert!(!middle.replicator.transfer_current(vnode, to, transfer));
    let part = StatePart::default();
    assert!(!middle.replicator.handle_state_part(
        vnode,
        to,
        transfer,
        part,
        &mut middle.store,
        Now::default()
    ));
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
