//! Acknowledgements and each level's ack point.

use crate::replication::testkit::*;
use crate::replication::*;

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
            .handle_durable(&[VNODE], &mut member.store, Now::default());
    }
    cluster.run();
    assert_eq!(cluster.done.get(&eventual), Some(&Ok(())));
    for node in 1..=3 {
        assert_eq!(cluster.members[&node].store.committed, 1);
    }
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

/// The shell sleeps until `poll_timeout` instead of polling: it names the earliest deadline of
/// a waiting write, on the monotonic clock, and nothing once no write waits.
#[test]
fn poll_timeout_names_the_earliest_write_deadline() {
    let mut cluster = Cluster::new(false);
    let now = |cluster: &Cluster| Now::both(cluster.now_ms);
    assert_eq!(
        cluster.members[&1].replicator.poll_timeout(now(&cluster)),
        None
    );
    cluster.disconnect(2, 3);
    let first_ms = cluster.now_ms;
    cluster.write("a", Some("1"), Level::Strong).unwrap();
    cluster.now_ms += 10;
    cluster.write("b", Some("2"), Level::Strong).unwrap();
    cluster.run();
    let timeout = cluster.config.write_timeout_ms;
    let head = &cluster.members[&1].replicator;
    assert_eq!(head.poll_timeout(now(&cluster)), Some(first_ms + timeout));
    cluster.tick(timeout);
    let head = &cluster.members[&1].replicator;
    assert_eq!(
        head.poll_timeout(now(&cluster)),
        None,
        "both timed out: nothing waits"
    );
}
