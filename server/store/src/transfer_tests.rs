//! The sending side of a state transfer, driven by hand.

use crate::replica::StateItem;
use crate::store::{Store, Write};
use crate::transfer::{Next, TransferLimits, TransferSource};
use crate::StoreConfig;

const VNODE: u16 = 0;

fn write(store: &mut Store, key: &[u8], value: Option<&[u8]>, now_ms: u64) -> u64 {
    let write = Write {
        vnode: VNODE,
        key,
        value,
        ttl_ms: 0,
        if_version: None,
        sync: false,
        epoch: 1,
    };
    store
        .handle_write(write, now_ms)
        .expect("written")
        .vnode_seq
}

/// Drives `source` until it hands over a part.
fn next_part(source: &mut TransferSource, store: &Store) -> crate::replicated::StatePart {
    for _ in 0..1000 {
        match source.next(store, 10) {
            Next::Send(part) => return part,
            Next::Read(items) => {
                for item in items {
                    match item {
                        StateItem::Ready(entry) => source.push(entry),
                        StateItem::OnDisk { .. } => panic!("nothing was flushed"),
                    }
                }
            }
            Next::Yield => {}
            Next::Done => panic!("done before a part"),
        }
    }
    panic!("no part in 1000 steps")
}

/// Seed 1077 of the simulator: a key deleted before `through` and written again before the
/// keep list was read is listed as live, so the receiver keeps its value from before the
/// delete until the new write reaches it in the stream. The last part's `caught_up_at` must
/// cover that write, or the receiver serves the deleted value meanwhile.
#[test]
fn a_key_deleted_and_written_again_during_the_transfer_holds_reads_until_its_write() {
    let config = StoreConfig {
        vnodes: 1,
        ..StoreConfig::default()
    };
    let mut store = Store::new(config);
    write(&mut store, b"k", Some(b"old"), 1);
    let deleted = write(&mut store, b"k", None, 2);
    write(&mut store, b"other", Some(b"x"), 3);
    let limits = TransferLimits {
        keys_per_pass: 16,
        part_bytes: 1 << 20,
        keep_per_part: 16,
        walk_step: 16,
        reads_at_once: 4,
    };
    let mut source = TransferSource::new(VNODE, Default::default(), limits);
    let values = next_part(&mut source, &store);
    assert!(values.keep.is_none(), "the values come first");
    let written_again = write(&mut store, b"k", Some(b"new"), 4);
    let keep = next_part(&mut source, &store);
    let through = keep.through.seq;
    assert!(
        through >= deleted && through < written_again,
        "through {through}"
    );
    assert_eq!(
        keep.keep.expect("a keep part").digests.len(),
        2,
        "k is live again"
    );
    assert_eq!(
        keep.last,
        Some(written_again),
        "reads wait for the write that re-created k"
    );
}
