//! Running operations on this shard's own store.
//!
//! A batch is applied to the store in order without awaiting, so a GET after a PUT of the same
//! key in one batch sees the PUT; then the writes that must be durable wait for one shared
//! fdatasync, and the GETs whose records are on disk read them concurrently.

use std::rc::Rc;

use tessera_schema::msg::{BatchOp, OpResult, ScanEntry, Status};
use tessera_schema::placement::vnode_of;
use tessera_schema::verify::check_batch_op;
use tessera_store::{
    finish_key_read, finish_read, Digest, DiskRead, Lookup, ScanKey, Write, WriteError,
};

use crate::mesh::{ShardOp, ShardReply};
use crate::shard::{now_ms, Shard};

pub async fn run_shard_op(shard: &Rc<Shard>, op: ShardOp) -> ShardReply {
    shard.inflight.set(shard.inflight.get() + 1);
    let reply = match op {
        ShardOp::Batch(ops) => ShardReply::Batch(run_batch(shard, ops).await),
        ShardOp::Scan {
            from_vnode,
            last_vnode,
            after,
            prefix,
            limit,
        } => {
            let range = ScanRange {
                from_vnode,
                last_vnode,
                after,
                limit,
            };
            match scan(shard, range, &prefix).await {
                Ok((entries, examined, resume)) => ShardReply::Scan {
                    entries,
                    examined,
                    resume,
                },
                Err(error) => ShardReply::Failed(error),
            }
        }
        ShardOp::Stats => ShardReply::Stats(shard.stats()),
    };
    shard.inflight.set(shard.inflight.get() - 1);
    reply
}

enum Step {
    Done(OpResult),
    Read {
        read: DiskRead,
        key: Vec<u8>,
    },
    /// A write whose acknowledgement waits for `durable_seq >= seq`.
    Durable {
        version: u64,
        seq: u64,
    },
}

fn write_error(error: WriteError) -> OpResult {
    let status = match &error {
        WriteError::VersionMismatch { current } => {
            let mut result = OpResult::error(Status::VersionMismatch, error.to_string());
            result.version = *current;
            return result;
        }
        WriteError::NotFound => Status::NotFound,
        WriteError::Overloaded => Status::Overloaded,
        WriteError::Failed(_) => Status::Unavailable,
        WriteError::MemoryLimit { .. } => Status::MemoryLimit,
        WriteError::DiskFull(_) => Status::DiskFull,
    };
    OpResult::error(status, error.to_string())
}

fn apply(shard: &Shard, op: &BatchOp, now: u64) -> Step {
    if let Err(refusal) = check_batch_op(op) {
        return Step::Done(OpResult::error(refusal.status, refusal.message));
    }
    let vnode = vnode_of(op.key());
    let write = match op {
        BatchOp::Get { key } => {
            shard.counters.gets.set(shard.counters.gets.get() + 1);
            return match shard.store.borrow().get(vnode, key, now) {
                Lookup::NotFound => Step::Done(OpResult::error(Status::NotFound, "")),
                Lookup::InMemory { value, version } => {
                    Step::Done(OpResult::found(value.to_vec(), version))
                }
                Lookup::OnDisk(read) => Step::Read {
                    read,
                    key: key.clone(),
                },
            };
        }
        BatchOp::Put(put) => {
            shard.counters.puts.set(shard.counters.puts.get() + 1);
            Write {
                vnode,
                key: &put.key,
                value: Some(&put.value),
                ttl_ms: put.ttl_ms,
                if_version: put.if_version,
                sync: put.durability == tessera_schema::msg::Durability::Sync,
            }
        }
        BatchOp::Delete(delete) => {
            shard.counters.deletes.set(shard.counters.deletes.get() + 1);
            Write {
                vnode,
                key: &delete.key,
                value: None,
                ttl_ms: 0,
                if_version: delete.if_version,
                sync: delete.durability == tessera_schema::msg::Durability::Sync,
            }
        }
    };
    let result = shard.store.borrow_mut().handle_write(write, now);
    match result {
        Ok(ack) if ack.wait_for_sync => Step::Durable {
            version: ack.version,
            seq: ack.seq,
        },
        Ok(ack) => Step::Done(OpResult::ok(ack.version)),
        Err(error) => Step::Done(write_error(error)),
    }
}

/// Runs a batch (or a single op) on this shard's store; one result per op, in order.
pub async fn run_batch(shard: &Rc<Shard>, ops: Vec<BatchOp>) -> Vec<OpResult> {
    let now = now_ms();
    let steps: Vec<Step> = ops.iter().map(|op| apply(shard, op, now)).collect();
    shard.kick_flusher();
    let wait_seq = steps.iter().filter_map(|s| match s {
        Step::Durable { seq, .. } => Some(*seq),
        _ => None,
    });
    let durable = match wait_seq.max() {
        Some(seq) => shard
            .wait_durable(seq)
            .await
            .unwrap_or_else(|_| Err("flusher stopped".into())),
        None => Ok(()),
    };
    let finish = steps.into_iter().map(|step| {
        let durable = durable.clone();
        async move {
            match step {
                Step::Done(result) => result,
                Step::Durable { version, .. } => match durable {
                    Ok(()) => OpResult::ok(version),
                    Err(reason) if reason.starts_with(crate::shard::DISK_FULL_PREFIX) => {
                        OpResult::error(
                            Status::DiskFull,
                            format!("write not acknowledged: {reason}"),
                        )
                    }
                    Err(reason) => OpResult::error(
                        Status::Unavailable,
                        format!("write not acknowledged: {reason}"),
                    ),
                },
                Step::Read { read, key } => read_record(shard, &read, &key).await,
            }
        }
    });
    futures::future::join_all(finish).await
}

async fn read_record(shard: &Shard, read: &DiskRead, key: &[u8]) -> OpResult {
    let bytes = match shard.segments.read(read).await {
        Ok(bytes) => bytes,
        Err(reason) => return OpResult::error(Status::Internal, reason),
    };
    match finish_read(read, key, &bytes) {
        Ok(value) => {
            let vnode = tessera_schema::placement::vnode_of(key);
            shard
                .store
                .borrow_mut()
                .handle_read_done(vnode, key, read, &value, now_ms());
            OpResult::found(value, read.version)
        }
        Err(corrupt) => {
            tracing::error!(shard = shard.index, "{corrupt}");
            OpResult::error(Status::Internal, corrupt.to_string())
        }
    }
}

struct ScanRange {
    from_vnode: u16,
    last_vnode: u16,
    after: Option<Digest>,
    limit: usize,
}

/// Live keys of the range's vnodes starting with `prefix`, examining at most `limit` keys:
/// the entries, the number examined, and where to resume if the limit cut the range short.
/// Keys whose records are on disk are read back (header and key only), concurrently.
async fn scan(
    shard: &Shard,
    range: ScanRange,
    prefix: &[u8],
) -> Result<(Vec<ScanEntry>, usize, Option<(u16, Digest)>), String> {
    shard.counters.scans.set(shard.counters.scans.get() + 1);
    let now = now_ms();
    let mut items = Vec::new();
    let mut resume = None;
    {
        let store = shard.store.borrow();
        let mut after = range.after;
        for vnode in range.from_vnode..=range.last_vnode {
            let room = range.limit - items.len();
            let found = store.scan(vnode, after.take(), room, now);
            if found.len() == room {
                resume = found.last().map(|item| (vnode, item.digest));
            }
            items.extend(found);
            if resume.is_some() {
                break;
            }
        }
    }
    let examined = items.len();
    let keys = futures::future::join_all(items.into_iter().map(|item| async move {
        let key = match &item.key {
            ScanKey::InMemory(key) => key.clone(),
            ScanKey::OnDisk(read) => {
                let bytes = shard.segments.read(read).await?;
                finish_key_read(read, item.digest, &bytes).map_err(|e| e.to_string())?
            }
        };
        Ok::<_, String>(ScanEntry {
            key,
            version: item.version,
        })
    }))
    .await;
    let mut entries = Vec::new();
    for entry in keys {
        let entry = entry.inspect_err(|e| tracing::error!(shard = shard.index, "scan: {e}"))?;
        if entry.key.starts_with(prefix) {
            entries.push(entry);
        }
    }
    Ok((entries, examined, resume))
}
