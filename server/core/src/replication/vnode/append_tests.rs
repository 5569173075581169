//! Appends under backpressure and store refusals.

use crate::replication::testkit::*;
use crate::replication::*;

#[test]
fn a_slow_connected_successor_fills_the_queue_and_writes_are_refused() {
    let mut cluster = Cluster::new(false);
    // Messages to the middle are never delivered, but its link stays up.
    let big = "x".repeat(100_000);
    let mut refused = None;
    for i in 0..40 {
        match cluster.write(&format!("k{i}"), Some(&big), Level::Eventual) {
            Ok(_) => cluster.in_flight.clear(),
            Err(refusal) => {
                refused = Some(refusal);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(Refusal::Overloaded { .. })),
        "{refused:?}"
    );
    // Once the successor is gone instead of slow, its queue gives way and writes go on.
    cluster.disconnect(1, 2);
    cluster
        .members
        .get_mut(&1)
        .unwrap()
        .replicator
        .trim_all_queues_for_test();
    assert!(cluster.write("after", Some("v"), Level::Eventual).is_ok());
}

/// Defect 8: a replica whose store refused a streamed write (its write buffer full after a
/// pause) asks for it again once the store takes writes, even if the vnode gets no later
/// write to show the gap.
#[test]
fn a_streamed_write_the_store_refused_is_asked_for_again() {
    let mut c = Cluster::new(false);
    c.write("a", Some("1"), Level::Eventual).unwrap();
    c.run();
    c.members.get_mut(&3).unwrap().store.fail_once_at = Some(2);
    c.write("b", Some("2"), Level::Eventual).unwrap();
    c.run();
    c.tick(50);
    c.assert_converged();
}
