//! Restarts: a head or middle that lost writes, reads held until they are back.

use crate::replication::testkit::*;
use crate::replication::*;

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
    cluster.takes_writes.clear(); // the first start's
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
    assert!(cluster.takes_writes.is_empty());
    cluster.run();
    assert_eq!(cluster.members[&1].replicator.admit_write(VNODE), Ok(()));
    assert_eq!(
        cluster.takes_writes,
        vec![(1, VNODE)],
        "the head says once that it takes writes (the shell's waiting writes go)"
    );
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

/// Seed 95 of the richer faults: a middle restarted while its tail was cut off released its
/// reads at its head's commit point, below the writes it had recovered; those are not
/// unsettled in its store, so a `strong` read there showed a write the tail did not have yet.
/// Its floor is now everything it holds: reads wait until the chain commits that.
#[test]
fn a_restarted_middle_shows_no_write_the_tail_lacks() {
    let mut cluster = Cluster::new(true);
    cluster.write("k", Some("v1"), Level::Strong).unwrap();
    cluster.run();
    cluster.disconnect(2, 3);
    cluster.write("k", None, Level::Eventual).unwrap();
    cluster.run();
    assert_eq!(
        cluster.members[&2].store.position.seq, 2,
        "the middle has the delete"
    );
    assert_eq!(
        cluster.members[&3].store.position.seq, 1,
        "the tail does not"
    );
    cluster.crash_and_restart(2);
    cluster.disconnect(2, 3); // the tail stays cut off
    cluster.run();
    let middle = &cluster.members[&2].store;
    assert!(
        middle.released.is_none_or(|floor| floor >= 2),
        "reads at the middle released at {:?}, below the delete it holds",
        middle.released
    );
    cluster.connect(2, 3);
    cluster.run();
    assert_eq!(cluster.members[&2].store.released, Some(2));
    cluster.assert_converged();
}

/// A head restarted with a pull of its own cut short (its store's transfer mark) may lack
/// deletes, even when it is ahead of every replica (it kept values the others lost): it pulls
/// from the replica furthest ahead anyway, whose keep list brings the delete, and keeps its
/// newer writes (review of the seed 647 fix).
#[test]
fn a_head_whose_pull_was_cut_short_pulls_even_when_ahead() {
    let mut c = Cluster::new(false);
    c.write("doomed", Some("v"), Level::Strong).unwrap();
    c.run();
    c.write("doomed", None, Level::Strong).unwrap();
    c.run();
    assert!(!c.members[&3].store.data.contains_key(b"doomed".as_slice()));
    // The head's copy as a cut-short pull left it: the delete missing, the key's old value
    // there, a newer write of its own, and the mark.
    let head = &mut c.members.get_mut(&1).unwrap().store;
    let (seq, version) = (head.position.seq, head.position.version);
    head.data
        .insert(b"doomed".to_vec(), (b"v".to_vec(), version - 1, seq - 1));
    head.write(b"newer", Some(b"w"));
    head.transfer_started_at = Some(seq - 1);
    head.sync();
    c.crash_and_restart(1);
    c.run();
    let head = &c.members[&1].store;
    assert!(
        !head.data.contains_key(b"doomed".as_slice()),
        "the delete came"
    );
    assert!(
        head.data.contains_key(b"newer".as_slice()),
        "its newer write stayed"
    );
    assert_eq!(head.transfer_started_at, None, "marked done");
    assert_eq!(c.members[&1].replicator.admit_write(VNODE), Ok(()));
    c.assert_converged();
}
