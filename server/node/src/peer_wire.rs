//! The peer protocol on the wire (`schema/fbs/replication.fbs`): replication messages of
//! `tessera-core` to and from flatbuffers, in frames of the client protocol's codec.
//!
//! A connection's first frame is a Hello (opcode `HELLO`); every later frame is a batch of
//! messages (opcode `BATCH`). Decoding verifies the buffer and copies it out; anything that does
//! not decode closes the connection.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use tessera_core::replication::{Body, Entry, KeepRange, PeerMsg, Position, Watermarks};
use tessera_schema::frame::encode_frame;
use tessera_schema::limits::{DECODED_PEER_ITEM_BYTES, MAX_DECODED_PEER_BATCH_BYTES};
use tessera_schema::peer_fb as pb;

/// Frame opcodes of the peer protocol (disjoint from the client protocol's).
pub const HELLO: u8 = 0x40;
pub const BATCH: u8 = 0x41;

/// What a Hello says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: u64,
    pub from_node: u32,
    pub from_shard: u16,
    pub to_shard: u16,
    pub vnodes: u32,
    pub forming: bool,
    pub shard_count: u16,
    pub zone: String,
    pub replication_factor: u16,
    pub peers_digest: u64,
}

pub fn encode_hello(out: &mut Vec<u8>, hello: &Hello) {
    let mut builder = FlatBufferBuilder::with_capacity(128);
    let zone = builder.create_string(&hello.zone);
    let args = pb::HelloArgs {
        cluster_id: hello.cluster_id,
        from_node: hello.from_node,
        from_shard: hello.from_shard,
        to_shard: hello.to_shard,
        vnodes: hello.vnodes,
        forming: hello.forming,
        shard_count: hello.shard_count,
        zone: Some(zone),
        replication_factor: hello.replication_factor,
        peers_digest: hello.peers_digest,
    };
    let root = pb::Hello::create(&mut builder, &args);
    builder.finish(root, None);
    encode_frame(out, HELLO, 0, builder.finished_data());
}

pub fn decode_hello(body: &[u8]) -> Result<Hello, String> {
    let hello = flatbuffers::root::<pb::Hello<'_>>(body).map_err(|e| e.to_string())?;
    Ok(Hello {
        cluster_id: hello.cluster_id(),
        from_node: hello.from_node(),
        from_shard: hello.from_shard(),
        to_shard: hello.to_shard(),
        vnodes: hello.vnodes(),
        forming: hello.forming(),
        shard_count: hello.shard_count(),
        zone: hello.zone().unwrap_or("").to_string(),
        replication_factor: hello.replication_factor(),
        peers_digest: hello.peers_digest(),
    })
}

fn marks(w: Watermarks) -> pb::Marks {
    pb::Marks::new(w.applied, w.durable)
}

fn watermarks(m: &pb::Marks) -> Watermarks {
    Watermarks {
        applied: m.applied(),
        durable: m.durable(),
    }
}

fn position(p: Position) -> pb::Position {
    pb::Position::new(p.seq, p.version)
}

fn from_position(p: &pb::Position) -> Position {
    Position {
        seq: p.seq(),
        version: p.version(),
    }
}

fn build_entries<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    entries: &[Entry],
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<pb::Entry<'b>>>> {
    let built: Vec<_> = entries
        .iter()
        .map(|entry| {
            let key = builder.create_vector(&entry.key);
            let value = entry.value.as_ref().map(|v| builder.create_vector(v));
            let args = pb::EntryArgs {
                seq: entry.seq,
                version: entry.version,
                expiry_ms: entry.expiry_ms,
                key: Some(key),
                value,
                tombstone: entry.value.is_none(),
            };
            pb::Entry::create(builder, &args)
        })
        .collect();
    builder.create_vector(&built)
}

fn build_body(
    builder: &mut FlatBufferBuilder<'_>,
    body: &Body,
) -> (pb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match body {
        Body::Append {
            after,
            entries,
            prefix,
            committed,
        } => {
            let entries = build_entries(builder, entries);
            let args = pb::AppendArgs {
                after: *after,
                entries: Some(entries),
                prefix: Some(&marks(*prefix)),
                committed: *committed,
            };
            (
                pb::Body::Append,
                pb::Append::create(builder, &args).as_union_value(),
            )
        }
        Body::Ack { own, suffix } => {
            let args = pb::AckArgs {
                own: Some(&marks(*own)),
                suffix: Some(&marks(*suffix)),
            };
            (
                pb::Body::Ack,
                pb::Ack::create(builder, &args).as_union_value(),
            )
        }
        Body::Position(p) | Body::ResumeTransfer(p) => {
            let args = pb::PositionReportArgs {
                position: Some(&position(*p)),
                partial: matches!(body, Body::ResumeTransfer(_)),
            };
            let report = pb::PositionReport::create(builder, &args);
            (pb::Body::PositionReport, report.as_union_value())
        }
        Body::Probe => (
            pb::Body::Probe,
            pb::Probe::create(builder, &pb::ProbeArgs {}).as_union_value(),
        ),
        Body::State {
            transfer,
            part,
            since,
            through,
            entries,
            keep,
            last,
        } => {
            let entries = build_entries(builder, entries);
            let digests: Option<Vec<u8>> = keep
                .as_ref()
                .map(|keep| keep.digests.iter().flat_map(|d| d.to_le_bytes()).collect());
            let digests = digests.map(|k| builder.create_vector(&k));
            let after = keep.as_ref().map(|k| {
                let bytes = k.after.map(u128::to_le_bytes);
                builder.create_vector(bytes.as_ref().map_or(&[][..], |b| &b[..]))
            });
            let upto = keep
                .as_ref()
                .map(|k| builder.create_vector(&k.upto.to_le_bytes()));
            let args = pb::StateArgs {
                since: Some(&position(*since)),
                through: Some(&position(*through)),
                entries: Some(entries),
                last: last.is_some(),
                keep: digests,
                transfer: *transfer,
                part: *part,
                has_keep: keep.is_some(),
                keep_after: after,
                keep_upto: upto,
                caught_up_at: last.unwrap_or(0),
            };
            (
                pb::Body::State,
                pb::State::create(builder, &args).as_union_value(),
            )
        }
        Body::StateDone { transfer } => {
            let args = pb::StateDoneArgs {
                transfer: *transfer,
            };
            let done = pb::StateDone::create(builder, &args);
            (pb::Body::StateDone, done.as_union_value())
        }
        Body::PullState { since } => {
            let args = pb::PullStateArgs {
                since: Some(&position(*since)),
            };
            let pull = pb::PullState::create(builder, &args);
            (pb::Body::PullState, pull.as_union_value())
        }
    }
}

/// Bytes a message adds to a batch, roughly (for batching decisions).
pub fn message_bytes(msg: &PeerMsg) -> usize {
    let entries = |entries: &[Entry]| entries.iter().map(Entry::bytes).sum::<usize>();
    64 + match &msg.body {
        Body::Append { entries: e, .. } => entries(e),
        Body::State {
            entries: e, keep, ..
        } => entries(e) + keep.as_ref().map_or(0, |k| k.digests.len() * 16),
        _ => 0,
    }
}

/// Appends a frame carrying `messages`.
pub fn encode_batch(out: &mut Vec<u8>, messages: &[PeerMsg]) {
    let size: usize = messages.iter().map(message_bytes).sum();
    let mut builder = FlatBufferBuilder::with_capacity(size + 64);
    let built: Vec<_> = messages
        .iter()
        .map(|msg| {
            let (body_type, body) = build_body(&mut builder, &msg.body);
            let args = pb::PeerMsgArgs {
                vnode: msg.vnode,
                epoch: msg.epoch,
                body_type,
                body: Some(body),
            };
            pb::PeerMsg::create(&mut builder, &args)
        })
        .collect();
    let messages = builder.create_vector(&built);
    let root = pb::PeerBatch::create(
        &mut builder,
        &pb::PeerBatchArgs {
            messages: Some(messages),
        },
    );
    builder.finish(root, None);
    encode_frame(out, BATCH, 0, builder.finished_data());
}

fn decode_entries(
    entries: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<pb::Entry<'_>>>>,
) -> Vec<Entry> {
    entries
        .map(|entries| {
            entries
                .iter()
                .map(|e| Entry {
                    seq: e.seq(),
                    version: e.version(),
                    expiry_ms: e.expiry_ms(),
                    key: e.key().map(|k| k.bytes().to_vec()).unwrap_or_default(),
                    value: (!e.tombstone())
                        .then(|| e.value().map(|v| v.bytes().to_vec()).unwrap_or_default()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A State part's keep range: digests of 16 bytes each, a range end of 16 bytes, a start of 16
/// bytes or none.
fn decode_keep(state: &pb::State<'_>) -> Result<Option<KeepRange>, String> {
    if !state.has_keep() {
        return Ok(None);
    }
    let digest = |bytes: &[u8]| -> Result<u128, String> {
        let bytes: [u8; 16] = bytes
            .try_into()
            .map_err(|_| format!("a keep range bound of {} bytes", bytes.len()))?;
        Ok(u128::from_le_bytes(bytes))
    };
    let listed = state.keep().map(|k| k.bytes()).unwrap_or_default();
    if !listed.len().is_multiple_of(16) {
        return Err(format!("a keep list of {} bytes", listed.len()));
    }
    let after = match state.keep_after().map(|a| a.bytes()).unwrap_or_default() {
        [] => None,
        bytes => Some(digest(bytes)?),
    };
    let upto = digest(state.keep_upto().map(|u| u.bytes()).unwrap_or_default())?;
    let digests = listed
        .chunks_exact(16)
        .map(|d| u128::from_le_bytes(d.try_into().expect("16 bytes")))
        .collect();
    Ok(Some(KeepRange {
        after,
        upto,
        digests,
    }))
}

fn decode_body(msg: &pb::PeerMsg<'_>) -> Result<Body, String> {
    let missing = || "a message names no body".to_string();
    Ok(match msg.body_type() {
        pb::Body::Append => {
            let append = msg.body_as_append().ok_or_else(missing)?;
            Body::Append {
                after: append.after(),
                entries: decode_entries(append.entries()),
                prefix: append.prefix().map(watermarks).unwrap_or_default(),
                committed: append.committed(),
            }
        }
        pb::Body::Ack => {
            let ack = msg.body_as_ack().ok_or_else(missing)?;
            Body::Ack {
                own: ack.own().map(watermarks).unwrap_or_default(),
                suffix: ack.suffix().map(watermarks).unwrap_or_default(),
            }
        }
        pb::Body::PositionReport => {
            let report = msg.body_as_position_report().ok_or_else(missing)?;
            let at = report.position().map(from_position).unwrap_or_default();
            match report.partial() {
                true => Body::ResumeTransfer(at),
                false => Body::Position(at),
            }
        }
        pb::Body::Probe => Body::Probe,
        pb::Body::State => {
            let state = msg.body_as_state().ok_or_else(missing)?;
            Body::State {
                transfer: state.transfer(),
                part: state.part(),
                since: state.since().map(from_position).unwrap_or_default(),
                through: state.through().map(from_position).unwrap_or_default(),
                entries: decode_entries(state.entries()),
                keep: decode_keep(&state)?,
                last: state.last().then_some(state.caught_up_at()),
            }
        }
        pb::Body::StateDone => {
            let done = msg.body_as_state_done().ok_or_else(missing)?;
            Body::StateDone {
                transfer: done.transfer(),
            }
        }
        pb::Body::PullState => {
            let pull = msg.body_as_pull_state().ok_or_else(missing)?;
            Body::PullState {
                since: pull.since().map(from_position).unwrap_or_default(),
            }
        }
        other => return Err(format!("unknown peer message {}", other.0)),
    })
}

/// What decoding `batch` would allocate, read from the vectors' lengths without copying
/// anything (a byte named twice counts twice), or `None` once past `limit`: the walk stops
/// there, so a batch naming the same entries a million times costs no more than the limit's
/// worth of entries to refuse.
fn decoded_bytes(batch: &pb::PeerBatch<'_>, limit: usize) -> Option<usize> {
    let mut total = 0usize;
    let mut add = |bytes: usize| {
        total = total.saturating_add(bytes);
        (total <= limit).then_some(())
    };
    for msg in batch.messages().iter().flat_map(|m| m.iter()) {
        add(DECODED_PEER_ITEM_BYTES)?;
        let (entries, keep) = match msg.body_type() {
            pb::Body::Append => (msg.body_as_append().and_then(|a| a.entries()), None),
            pb::Body::State => match msg.body_as_state() {
                Some(state) => (state.entries(), state.keep()),
                None => (None, None),
            },
            _ => (None, None),
        };
        add(keep.map_or(0, |k| k.len()))?;
        for entry in entries.iter().flat_map(|e| e.iter()) {
            let key = entry.key().map_or(0, |k| k.len());
            let value = entry.value().map_or(0, |v| v.len());
            add(DECODED_PEER_ITEM_BYTES + key + value)?;
        }
    }
    Some(total)
}

/// The messages of a batch frame's body.
pub fn decode_batch(body: &[u8]) -> Result<Vec<PeerMsg>, String> {
    let batch = flatbuffers::root::<pb::PeerBatch<'_>>(body).map_err(|e| e.to_string())?;
    if decoded_bytes(&batch, MAX_DECODED_PEER_BATCH_BYTES).is_none() {
        return Err(format!(
            "a batch of {} bytes that would decode to more than {MAX_DECODED_PEER_BATCH_BYTES} \
             (entries sharing offsets?)",
            body.len()
        ));
    }
    batch
        .messages()
        .map(|messages| {
            messages
                .iter()
                .map(|msg| {
                    Ok(PeerMsg {
                        vnode: msg.vnode(),
                        epoch: msg.epoch(),
                        body: decode_body(&msg)?,
                    })
                })
                .collect()
        })
        .unwrap_or(Ok(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_schema::frame::{FrameEvent, FrameReader};

    fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut reader = FrameReader::new();
        reader.feed(bytes);
        let mut out = Vec::new();
        while let Ok(Some(FrameEvent::Frame { header, body })) = reader.next_event() {
            out.push((header.opcode, body.to_vec()));
        }
        out
    }

    #[test]
    fn every_message_roundtrips() {
        let entry = |seq| Entry {
            seq,
            version: seq * 10,
            expiry_ms: 5,
            key: b"k".to_vec(),
            value: (seq % 2 == 0).then(|| b"v".to_vec()),
        };
        let marks = Watermarks {
            applied: 7,
            durable: 5,
        };
        let at = Position {
            seq: 3,
            version: 30,
        };
        let messages: Vec<PeerMsg> = [
            Body::Append {
                after: 2,
                entries: vec![entry(3), entry(4)],
                prefix: marks,
                committed: 2,
            },
            Body::Ack {
                own: marks,
                suffix: Watermarks::NONE,
            },
            Body::Position(at),
            Body::ResumeTransfer(at),
            Body::Probe,
            Body::State {
                transfer: 4,
                part: 0,
                since: Position { seq: 1, version: 5 },
                through: Position::default(),
                entries: vec![entry(2)],
                keep: None,
                last: None,
            },
            Body::State {
                transfer: 4,
                part: 1,
                since: Position { seq: 1, version: 5 },
                through: at,
                entries: vec![],
                keep: Some(KeepRange {
                    after: None,
                    upto: 7,
                    digests: vec![1, 7],
                }),
                last: None,
            },
            Body::State {
                transfer: 4,
                part: 2,
                since: Position::default(),
                through: at,
                entries: vec![],
                keep: Some(KeepRange {
                    after: Some(7),
                    upto: u128::MAX,
                    digests: vec![u128::MAX],
                }),
                last: Some(11),
            },
            Body::StateDone { transfer: 4 },
            Body::PullState { since: at },
        ]
        .into_iter()
        .enumerate()
        .map(|(i, body)| PeerMsg {
            vnode: i as u16,
            epoch: 9,
            body,
        })
        .collect();
        let mut out = Vec::new();
        encode_batch(&mut out, &messages);
        let hello = Hello {
            cluster_id: 1,
            from_node: 2,
            zone: "z".into(),
            forming: true,
            ..Hello::default()
        };
        encode_hello(&mut out, &hello);
        let frames = frames(&out);
        assert_eq!(frames[0].0, BATCH);
        assert_eq!(decode_batch(&frames[0].1).unwrap(), messages);
        assert_eq!(frames[1].0, HELLO);
        assert_eq!(decode_hello(&frames[1].1).unwrap(), hello);
        assert!(decode_batch(b"garbage").is_err());
    }
}
