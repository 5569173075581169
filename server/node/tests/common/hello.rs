//! A member's Hello and an impostor's forged messages on the peer port, for the server's tests
//! of that port (kept out of `mod.rs`, which the load generator's tests share and which has no
//! flatbuffers there).

#![allow(dead_code)]

/// A member's Hello frame on the peer port, as member `from_node` of `cluster_id` would send it.
pub fn hello_frame(cluster_id: u64, from_node: u32) -> Vec<u8> {
    use tessera_schema::peer_fb as pb;
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let args = pb::HelloArgs {
        cluster_id,
        from_node,
        vnodes: 64,
        ..pb::HelloArgs::default()
    };
    let hello = pb::Hello::create(&mut builder, &args);
    builder.finish(hello, None);
    let mut frame = Vec::new();
    tessera_schema::frame::encode_frame(&mut frame, 0x40, 0, builder.finished_data());
    frame
}

/// What an impostor let in as a member would send for `vnode` at `epoch`, as one BATCH frame:
/// a write of `key` = `value` at a version above any real one (an Append after sequence
/// `after`), an Ack claiming everything is durable downstream, an empty final State (which
/// would drop every key of the vnode), and a PullState (which would read its state out).
pub fn forged_batch_frame(vnode: u16, epoch: u64, after: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
    use tessera_schema::peer_fb as pb;
    let mut b = flatbuffers::FlatBufferBuilder::new();
    let everything = pb::Marks::new(u64::MAX >> 1, u64::MAX >> 1);
    let entry = {
        let (key, value) = (b.create_vector(key), b.create_vector(value));
        let args = pb::EntryArgs {
            seq: after + 1,
            version: u64::MAX >> 1,
            key: Some(key),
            value: Some(value),
            ..pb::EntryArgs::default()
        };
        pb::Entry::create(&mut b, &args)
    };
    let entries = b.create_vector(&[entry]);
    let append = pb::Append::create(
        &mut b,
        &pb::AppendArgs {
            after,
            entries: Some(entries),
            prefix: Some(&everything),
            committed: after + 1,
        },
    );
    let ack = pb::Ack::create(
        &mut b,
        &pb::AckArgs {
            own: Some(&everything),
            suffix: Some(&everything),
        },
    );
    let (start, end) = (pb::Position::new(0, 0), pb::Position::new(u64::MAX >> 1, 0));
    let state = pb::State::create(
        &mut b,
        &pb::StateArgs {
            since: Some(&start),
            through: Some(&end),
            last: true,
            transfer: 1,
            ..pb::StateArgs::default()
        },
    );
    let pull = pb::PullState::create(
        &mut b,
        &pb::PullStateArgs {
            since: Some(&start),
        },
    );
    let bodies = [
        (pb::Body::Append, append.as_union_value()),
        (pb::Body::Ack, ack.as_union_value()),
        (pb::Body::State, state.as_union_value()),
        (pb::Body::PullState, pull.as_union_value()),
    ];
    let messages: Vec<_> = bodies
        .into_iter()
        .map(|(body_type, body)| {
            let args = pb::PeerMsgArgs {
                vnode,
                epoch,
                body_type,
                body: Some(body),
            };
            pb::PeerMsg::create(&mut b, &args)
        })
        .collect();
    let messages = b.create_vector(&messages);
    let root = pb::PeerBatch::create(
        &mut b,
        &pb::PeerBatchArgs {
            messages: Some(messages),
        },
    );
    b.finish(root, None);
    let mut frame = Vec::new();
    tessera_schema::frame::encode_frame(&mut frame, 0x41, 0, b.finished_data());
    frame
}

/// Sequence numbers a forged Append claims to follow: the vnode's real one is among them.
pub const FORGED_AFTER: std::ops::Range<u64> = 0..200;

/// A Hello as `member`, then `forged_batch_frame`s for `vnode` after each of `FORGED_AFTER`.
pub fn impostor_bytes(cluster_id: u64, member: u32, vnode: u16, epoch: u64, key: &[u8]) -> Vec<u8> {
    let mut bytes = hello_frame(cluster_id, member);
    for after in FORGED_AFTER {
        bytes.extend(forged_batch_frame(vnode, epoch, after, key, b"forged"));
    }
    bytes
}
