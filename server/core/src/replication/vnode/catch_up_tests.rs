//! Catch-up of a successor that was away, and epochs.

use crate::replication::testkit::*;
use crate::replication::*;

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
        .handle_message(1, stale, &mut member.store, Now::default());
    assert!(
        cluster.live(2).is_empty(),
        "another epoch's write is not applied"
    );
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
