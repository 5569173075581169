//! Running operations on this shard's own store.
//!
//! A batch is applied to the store in order without awaiting, so a GET after a PUT of the same
//! key in one batch sees the PUT; then the writes that must be durable wait for one shared
//! fdatasync, and the GETs whose records are on disk read them concurrently.
//!
//! Every value or key copied out of the store is charged to the request (`budget.rs`) before it
//! is copied, and a BATCH's values must fit in its share of the answer's size limit; an item
//! that does not fit gets its own status (BATCH_TOO_LARGE or OVERLOADED), the rest still run.

use std::rc::Rc;

use tessera_schema::limits::{MAX_RESPONSE_BODY_BYTES, RESULT_OVERHEAD_BYTES};
use tessera_schema::msg::{BatchOp, OpResult, ScanEntry, Status, VnodeCheck};
use tessera_schema::placement::vnode_of;
use tessera_schema::verify::check_batch_op;
use tessera_store::{
    finish_key_read, finish_read, Barrier, Digest, DiskRead, FsyncPolicy, Lookup, ScanKey, Write,
    WriteError,
};

use crate::budget::Charge;
use crate::mesh::{ShardOp, ShardReply};
use crate::shard::{now_ms, Shard};

pub async fn run_shard_op(shard: &Rc<Shard>, op: ShardOp) -> ShardReply {
    shard.inflight.set(shard.inflight.get() + 1);
    let reply = match op {
        ShardOp::Batch {
            ops,
            charge,
            answer_room_bytes,
            options,
        } => ShardReply::Batch(match shard.replica {
            Some(_) => {
                crate::cluster_exec::run_batch(shard, ops, &options, &charge, answer_room_bytes)
                    .await
            }
            None => run_batch(shard, ops, &charge, answer_room_bytes).await,
        }),
        ShardOp::Scan {
            from_vnode,
            last_vnode,
            after,
            prefix,
            limit,
            charge,
            strong,
        } => {
            let range = ScanRange {
                from_vnode,
                last_vnode,
                after,
                limit,
            };
            // On one node a listing waits under --fsync always; in a cluster, when strong.
            let wait = match shard.replica {
                Some(_) => strong,
                None => strict_reads(shard),
            };
            match scan(shard, range, &prefix, &charge, wait).await {
                Ok((entries, examined, resume)) => ShardReply::Scan {
                    entries,
                    examined,
                    resume,
                },
                Err((status, error)) => ShardReply::Failed(status, error),
            }
        }
        ShardOp::Stats => ShardReply::Stats(shard.stats()),
        ShardOp::Verify { vnodes, values } => {
            ShardReply::Verify(verify(shard, vnodes, values).await)
        }
    };
    shard.inflight.set(shard.inflight.get() - 1);
    reply
}

/// Each vnode's `VnodeCheck`: a walk of its index, then a read of every live value (as a
/// state transfer reads them: `transfer::value_digest`), yielding between vnodes so that a
/// verify of a big shard does not hold up its requests.
async fn verify(shard: &Shard, vnodes: Vec<u16>, with_values: bool) -> Vec<VnodeCheck> {
    let mut checks = Vec::with_capacity(vnodes.len());
    for vnode in vnodes {
        let check = shard.store.borrow().vnode_check(vnode, now_ms());
        let values = match check.keys {
            _ if !with_values => 0,
            0 => 0,
            _ => crate::transfer::value_digest(shard, vnode)
                .await
                .unwrap_or_else(|why| {
                    tracing::error!(shard = shard.index, vnode, "verify: {why}");
                    u64::MAX // an unreadable value: never agrees
                }),
        };
        checks.push(VnodeCheck {
            vnode,
            applied: check.applied,
            keys: check.keys,
            digest: check.digest,
            values,
        });
        glommio::yield_if_needed().await;
    }
    checks
}

enum Step {
    Done(OpResult),
    /// A GET whose record is on disk; its answer leaves once `visible` (if any) is passed.
    Read {
        read: DiskRead,
        key: Vec<u8>,
        visible: Option<Barrier>,
    },
    /// A write acknowledged once its store sequence number `seq` is durable.
    Durable {
        result: OpResult,
        seq: u64,
    },
    /// An answer built from a key whose newest write is not yet visible (`visibility.rs` in the
    /// store): it leaves once `barrier` is passed.
    Settle {
        result: OpResult,
        barrier: Barrier,
    },
}

impl Step {
    fn done(self) -> Option<OpResult> {
        match self {
            Step::Done(result) => Some(result),
            _ => None,
        }
    }

    fn barrier(&self) -> Option<Barrier> {
        match self {
            Step::Read { visible, .. } => *visible,
            Step::Settle { barrier, .. } => Some(*barrier),
            _ => None,
        }
    }

    fn durable_seq(&self) -> Option<u64> {
        match self {
            Step::Durable { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

pub(crate) fn write_error(error: WriteError) -> OpResult {
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
        WriteError::OutOfOrder { .. } => Status::Internal,
    };
    OpResult::error(status, error.to_string())
}

/// Whether a refusal says something about the key's state (its version, its absence), and so
/// must not leave before the writes that state reflects are visible.
fn reveals_key_state(error: &WriteError) -> bool {
    matches!(
        error,
        WriteError::VersionMismatch { .. } | WriteError::NotFound | WriteError::MemoryLimit { .. }
    )
}

/// The answer leaves at once, or once `barrier` is passed.
fn answer_when(result: OpResult, barrier: Option<Barrier>) -> Step {
    match barrier {
        None => Step::Done(result),
        Some(barrier) => Step::Settle { result, barrier },
    }
}

/// Under `--fsync always` every answer waits for the writes it reveals to be durable; under
/// `--fsync interval` reads see the unsynced tail (README: "What a read may see").
fn strict_reads(shard: &Shard) -> bool {
    shard.store.borrow().config().fsync == FsyncPolicy::Always
}

/// What a BATCH may still put in its answer, and the bytes the request holds.
pub struct Answer<'a> {
    /// Bytes left in this part of the answer (`MAX_RESPONSE_BODY_BYTES` split among the
    /// shards a batch touches).
    pub room_bytes: usize,
    pub charge: &'a Charge,
}

impl Answer<'_> {
    /// Makes room for a value of `len` bytes: BATCH_TOO_LARGE when the answer has no room for
    /// it, OVERLOADED when the connection or the node has no memory for it.
    pub(crate) fn take(&mut self, len: usize) -> Result<(), OpResult> {
        let needed = len + RESULT_OVERHEAD_BYTES;
        if needed > self.room_bytes {
            return Err(OpResult::error(
                Status::BatchTooLarge,
                format!(
                    "the batch's answer would pass {MAX_RESPONSE_BODY_BYTES} bytes: this \
                     {len}-byte value was left out (GET it on its own)"
                ),
            ));
        }
        if !self.charge.try_add(len as u64) {
            return Err(OpResult::error(
                Status::Overloaded,
                "no memory for this value now: the connection or the node is at its memory \
                 budget; retry later",
            ));
        }
        self.room_bytes -= needed;
        Ok(())
    }
}

fn get(shard: &Shard, key: &[u8], now: u64, answer: &mut Answer<'_>) -> Step {
    shard.counters.gets.set(shard.counters.gets.get() + 1);
    let store = shard.store.borrow();
    let vnode = vnode_of(key, shard.node.vnodes);
    let (lookup, barrier) = store.read(vnode, key, now);
    let settle = barrier.filter(|_| store.config().fsync == FsyncPolicy::Always);
    let len = match &lookup {
        Lookup::NotFound => 0,
        Lookup::InMemory { value, .. } => value.len(),
        Lookup::OnDisk(read) => read.len,
    };
    if let Err(refusal) = answer.take(len) {
        return Step::Done(refusal);
    }
    match lookup {
        Lookup::NotFound => answer_when(OpResult::error(Status::NotFound, ""), settle),
        Lookup::InMemory { value, version } => {
            answer_when(OpResult::found(value.to_vec(), version), settle)
        }
        Lookup::OnDisk(read) => Step::Read {
            read,
            key: key.to_vec(),
            visible: settle,
        },
    }
}

fn apply(shard: &Shard, op: &BatchOp, now: u64, answer: &mut Answer<'_>) -> Step {
    if let Err(refusal) = check_batch_op(op) {
        return Step::Done(OpResult::error(refusal.status, refusal.message));
    }
    let vnode = vnode_of(op.key(), shard.node.vnodes);
    let write = match op {
        BatchOp::Get { key } => return get(shard, key, now, answer),
        BatchOp::Put(put) => {
            shard.counters.puts.set(shard.counters.puts.get() + 1);
            Write {
                vnode,
                key: &put.key,
                value: Some(&put.value),
                ttl_ms: put.ttl_ms,
                if_version: put.if_version,
                sync: put.durability == tessera_schema::msg::Durability::Sync,
                epoch: 1,
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
                epoch: 1,
            }
        }
    };
    let result = shard.store.borrow_mut().handle_write(write, now);
    match result {
        Ok(ack) if ack.wait_for_sync => Step::Durable {
            result: OpResult::ok(ack.version),
            seq: ack.seq,
        },
        Ok(ack) => Step::Done(OpResult::ok(ack.version)),
        Err(error) => {
            // A durable request, or any request under --fsync always, is not told of a state
            // that a crash could take back.
            let strict = write.sync || strict_reads(shard);
            let settle = (strict && reveals_key_state(&error))
                .then(|| shard.store.borrow().unsettled_barrier(vnode, write.key))
                .flatten();
            answer_when(write_error(error), settle)
        }
    }
}

/// What an answer that waited becomes when its sequence number cannot be made visible.
fn unsettled_failure(reason: &str, is_write_ack: bool) -> OpResult {
    if !is_write_ack {
        return OpResult::error(
            Status::Unavailable,
            format!(
                "the key's newest write could not be made durable, so it is not shown: {reason}"
            ),
        );
    }
    let status = match reason.starts_with(crate::shard::DISK_FULL_PREFIX) {
        true => Status::DiskFull,
        false => Status::Unavailable,
    };
    OpResult::error(status, format!("write not acknowledged: {reason}"))
}

/// Waits until every barrier is passed (asking the flusher for it).
pub async fn wait_visible(shard: &Shard, barriers: Vec<Barrier>) -> Result<(), String> {
    for barrier in barriers {
        shard
            .wait_visible(barrier)
            .await
            .unwrap_or_else(|_| Err("flusher stopped".into()))?;
    }
    Ok(())
}

/// Waits until store sequence number `seq` (if any) is durable.
async fn wait_durable(shard: &Shard, seq: Option<u64>) -> Result<(), String> {
    let Some(seq) = seq else { return Ok(()) };
    shard
        .wait_durable(seq)
        .await
        .unwrap_or_else(|_| Err("flusher stopped".into()))
}

/// The newest barrier per vnode among `barriers`: passing it passes the others.
fn newest_per_vnode(barriers: impl Iterator<Item = Barrier>) -> Vec<Barrier> {
    let mut newest: std::collections::BTreeMap<u16, u64> = Default::default();
    for barrier in barriers {
        let seq = newest.entry(barrier.vnode).or_default();
        *seq = (*seq).max(barrier.seq);
    }
    newest
        .into_iter()
        .map(|(vnode, seq)| Barrier { vnode, seq })
        .collect()
}

/// Runs a batch (or a single op) on this shard's store; one result per op, in order. Values
/// are charged to `charge` as they are copied, and fit in `answer_room_bytes` of answer.
pub async fn run_batch(
    shard: &Rc<Shard>,
    ops: Vec<BatchOp>,
    charge: &Charge,
    answer_room_bytes: usize,
) -> Vec<OpResult> {
    let now = now_ms();
    let mut answer = Answer {
        room_bytes: answer_room_bytes,
        charge,
    };
    let steps: Vec<Step> = ops
        .iter()
        .map(|op| apply(shard, op, now, &mut answer))
        .collect();
    shard.kick_flusher();
    if steps.iter().all(|step| matches!(step, Step::Done(_))) {
        // The common case (in-memory reads, writes acknowledged on append): nothing to await.
        return steps.into_iter().filter_map(Step::done).collect();
    }
    // One wait for the durability the batch's writes need and one per vnode whose unsettled
    // writes it showed, beside the disk reads, which start at once: a read takes its segment's
    // file handle on its first poll, so compaction deleting that segment meanwhile cannot fail it.
    let durable = steps.iter().filter_map(Step::durable_seq).max();
    let barriers = newest_per_vnode(steps.iter().filter_map(Step::barrier));
    let reads = steps.iter().map(|step| async move {
        match step {
            Step::Read { read, key, .. } => Some(read_record(shard, read, key).await),
            _ => None,
        }
    });
    let (durable_result, visible_result, read_results) = futures::join!(
        wait_durable(shard, durable),
        wait_visible(shard, barriers),
        futures::future::join_all(reads)
    );
    let failure = durable_result
        .err()
        .or(visible_result.err())
        .unwrap_or_default();
    let store = shard.store.borrow();
    steps
        .into_iter()
        .zip(read_results)
        .map(|(step, read_result)| {
            let shown = step.barrier().is_none_or(|b| store.is_visible(b));
            match step {
                Step::Done(result) => result,
                Step::Durable { result, seq } if store.durable_seq() >= seq => result,
                Step::Durable { .. } => unsettled_failure(&failure, true),
                Step::Settle { result, .. } if shown => result,
                Step::Settle { .. } => unsettled_failure(&failure, false),
                Step::Read { .. } if shown => read_result.expect("a read's result"),
                Step::Read { .. } => unsettled_failure(&failure, false),
            }
        })
        .collect()
}

pub(crate) async fn read_record(shard: &Shard, read: &DiskRead, key: &[u8]) -> OpResult {
    let bytes = match shard.segments.read(read).await {
        Ok(bytes) => bytes,
        Err(reason) => return OpResult::error(Status::Internal, reason),
    };
    match finish_read(read, key, &bytes) {
        Ok(value) => {
            let vnode = vnode_of(key, shard.node.vnodes);
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
/// A scan's page, the keys it examined, where to resume; or why it failed.
type ScanResult = Result<(Vec<ScanEntry>, usize, Option<(u16, Digest)>), (Status, String)>;

async fn scan(
    shard: &Shard,
    range: ScanRange,
    prefix: &[u8],
    charge: &Charge,
    wait: bool,
) -> ScanResult {
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
    let key_bytes: usize = items
        .iter()
        .map(|item| match &item.key {
            ScanKey::InMemory(key) => key.len(),
            ScanKey::OnDisk(read) => read.len,
        })
        .sum();
    if !charge.try_add(key_bytes as u64) {
        let message = "no memory for this scan page now: the connection or the node is at its \
                       memory budget; retry later (or ask for a smaller page)";
        return Err((Status::Overloaded, message.into()));
    }
    // A listing reveals new and deleted keys alike: under --fsync always it waits for every
    // unsettled write in the vnodes it walked, while the keys are read back.
    let last_vnode = resume.map_or(range.last_vnode, |(vnode, _)| vnode);
    let barriers = match wait {
        true => shard
            .store
            .borrow()
            .unsettled_in_vnodes(range.from_vnode..=last_vnode),
        false => Vec::new(),
    };
    let reads = futures::future::join_all(items.into_iter().map(|item| async move {
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
    }));
    let (settled, keys) = futures::join!(wait_visible(shard, barriers), reads);
    settled.map_err(|reason| {
        let message = format!("a listed key's newest write could not be made durable: {reason}");
        (Status::Unavailable, message)
    })?;
    let mut entries = Vec::new();
    for entry in keys {
        let entry = entry
            .inspect_err(|e| tracing::error!(shard = shard.index, "scan: {e}"))
            .map_err(|e| (Status::Internal, e))?;
        if entry.key.starts_with(prefix) {
            entries.push(entry);
        }
    }
    Ok((entries, examined, resume))
}
