//! `--watch-vnode N`: one vnode's messages, as delivered, with the receiver's state before
//! each, for reading a failing seed.

use tessera_core::placement::NodeId;
use tessera_core::replication::{Body, Entry, PeerMsg, Replicator};

pub fn delivery(
    now_ms: u64,
    from: NodeId,
    to: NodeId,
    msg: &PeerMsg,
    receiver: Option<&Replicator>,
) {
    let up = receiver.is_some();
    eprintln!(
        "{now_ms} {from}->{to} (up {up}) epoch {} {}",
        msg.epoch,
        body(&msg.body)
    );
    if let Some(state) = receiver.and_then(|r| r.describe(msg.vnode)) {
        eprintln!("    receiver before: {state}");
    }
}

fn body(body: &Body) -> String {
    match body {
        Body::Append {
            after,
            entries: list,
            prefix,
            committed,
        } => format!(
            "Append after {after} [{}] prefix {prefix:?} committed {committed}",
            entries(list)
        ),
        Body::State {
            transfer,
            part,
            since,
            through,
            entries: list,
            keep,
            last,
        } => format!(
            "State {transfer}/{part} since {since:?} through {through:?} [{}] keep {:?} last {last:?}",
            entries(list),
            keep.as_ref().map(|k| k.digests.len())
        ),
        other => format!("{other:?}"),
    }
}

fn entries(list: &[Entry]) -> String {
    let one = |e: &Entry| {
        let value = e.value.as_ref().map_or("(delete)".into(), |v| {
            String::from_utf8_lossy(v).into_owned()
        });
        format!(
            "{}:{}@v{}={value}",
            e.seq,
            String::from_utf8_lossy(&e.key),
            e.version
        )
    };
    list.iter().map(one).collect::<Vec<_>>().join(" ")
}
