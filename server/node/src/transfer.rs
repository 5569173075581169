//! State transfers on the sending side: the shell's part of `tessera-core`'s
//! `replication/vnode/transfer.rs`. Each `Effect::ReadState` becomes a task that drives the store's
//! `TransferSource` (what goes in each part), reads records from disk where the values are not
//! in memory, and hands each part to the core, which sends it.
//!
//! Bounds, per shard:
//! - **Memory**: one pass of (version, digest) pairs (64 Ki keys, 1.5 MiB), one part of values
//!   (1 MiB) and what waits in the link's outbox (`PEER_OUTBOX_BYTES`): a part is handed over
//!   only while the link to the receiver has room, so a transfer goes at the pace the receiver
//!   takes it, and holds a few MiB whatever the vnode's size.
//! - **Concurrency**: at most `--transfers-per-shard` at once (default 2), whoever asks; the
//!   others wait their turn in the order they were asked for, at most one per vnode and
//!   receiver: asking again for a transfer that waits only updates it (a member's PullState
//!   sent a thousand times makes one task, not a thousand).
//! - **Rate**: at most `--transfer-mib-per-s` per shard (default 128, as compaction), for the
//!   bytes of values and digests sent, so that catching up a replica cannot take the disk or
//!   the network from requests.
//! - **CPU**: the tasks run in a task queue of their own with a tenth of the foreground's
//!   shares, and offer to yield after every step (an index walk of 16 Ki entries, a batch of
//!   reads, a part sent): the executor takes the shard back once the queue has run for its
//!   preemption interval.
//!
//! An unreadable record ends the transfer (reported, never skipped): the receiver stays behind
//! until the record is repaired and it asks again.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tessera_core::placement::NodeId;
use tessera_core::replication::{Entry, Position, StatePart};
use tessera_store::{finish_state_read, StateItem, TransferLimits, TransferNext, TransferSource};

use crate::pace::Pacer;
use crate::replica::pump;
use crate::shard::{now_ms, Shard};

/// Bytes a transfer may send at once after an idle spell, before its rate limit applies.
const TRANSFER_BURST_BYTES: u64 = 4 << 20;
/// How often a transfer waiting for room on its link looks again.
const ROOM_POLL: Duration = Duration::from_millis(2);

/// How transfers are bounded (`--transfers-per-shard`, `--transfer-mib-per-s`).
#[derive(Clone, Copy, Debug)]
pub struct TransferSettings {
    pub per_shard: usize,
    /// `None`: no limit.
    pub bytes_per_s: Option<u64>,
}

/// One transfer being sent, for operators.
#[derive(Clone, Copy, Debug)]
pub struct TransferProgress {
    pub vnode: u16,
    pub to: NodeId,
    pub keys: u64,
    pub bytes: u64,
    pub started: Instant,
}

/// A shard's transfers: the slots, the rate limit and what is in flight.
pub struct Transfers {
    slots: glommio::sync::Semaphore,
    /// Transfers waiting for a slot, by vnode and receiver: where from, and their id.
    waiting: RefCell<HashMap<(u16, NodeId), (Position, u64)>>,
    pacer: RefCell<Pacer>,
    pub in_flight: RefCell<BTreeMap<u64, TransferProgress>>,
    /// Totals since the shard started: keys and bytes sent, transfers finished and failed.
    pub keys_sent: Cell<u64>,
    pub bytes_sent: Cell<u64>,
    pub completed: Cell<u64>,
    pub failed: Cell<u64>,
    queue: Cell<Option<glommio::TaskQueueHandle>>,
}

impl Transfers {
    pub fn new(settings: TransferSettings) -> Transfers {
        Transfers {
            slots: glommio::sync::Semaphore::new(settings.per_shard.max(1) as u64),
            waiting: RefCell::new(HashMap::new()),
            pacer: RefCell::new(Pacer::new(settings.bytes_per_s, TRANSFER_BURST_BYTES)),
            in_flight: RefCell::new(BTreeMap::new()),
            keys_sent: Cell::new(0),
            bytes_sent: Cell::new(0),
            completed: Cell::new(0),
            failed: Cell::new(0),
            queue: Cell::new(None),
        }
    }

    /// The transfers being sent, for STATS.
    pub fn stats(&self) -> Vec<tessera_schema::msg::TransferStats> {
        self.in_flight
            .borrow()
            .values()
            .map(|t| tessera_schema::msg::TransferStats {
                vnode: t.vnode,
                to_node: t.to,
                keys: t.keys,
                bytes: t.bytes,
                elapsed_ms: t.started.elapsed().as_millis() as u64,
            })
            .collect()
    }

    /// Creates the task queue transfers run in (on the shard's executor).
    pub fn start(&self) {
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(100),
            glommio::Latency::NotImportant,
            "transfers",
        );
        self.queue.set(Some(queue));
    }
}

/// Starts the task that sends transfer `id` of `vnode` to `to` from `since`, or hands it to
/// the task already waiting for a slot for that vnode and receiver.
pub fn spawn(shard: &Rc<Shard>, vnode: u16, to: NodeId, since: Position, id: u64) {
    let replica = shard.replica.as_ref().expect("cluster");
    let mut waiting = replica.transfers.waiting.borrow_mut();
    if waiting.insert((vnode, to), (since, id)).is_some() {
        return;
    }
    drop(waiting);
    let task = send_transfer(shard.clone(), vnode, to);
    let spawned = match replica.transfers.queue.get() {
        Some(queue) => glommio::spawn_local_into(task, queue),
        None => Ok(glommio::spawn_local(task)),
    };
    match spawned {
        Ok(task) => {
            task.detach();
        }
        Err(e) => tracing::error!(shard = shard.index, "cannot start a transfer: {e}"),
    }
}

fn current(shard: &Shard, vnode: u16, to: NodeId, id: u64) -> bool {
    let replica = shard.replica.as_ref().expect("cluster");
    !shard.stopping.get() && replica.replicator.borrow().transfer_current(vnode, to, id)
}

/// Waits for a slot, then sends the newest transfer asked for `vnode` and `to`.
async fn send_transfer(shard: Rc<Shard>, vnode: u16, to: NodeId) {
    let replica = shard.replica.as_ref().expect("cluster");
    let transfers = &replica.transfers;
    let slot = transfers.slots.acquire_permit(1).await;
    let asked = transfers.waiting.borrow_mut().remove(&(vnode, to));
    let (Ok(_slot), Some((since, id))) = (slot, asked) else {
        return;
    };
    if !current(&shard, vnode, to, id) {
        return;
    }
    let progress = TransferProgress {
        vnode,
        to,
        keys: 0,
        bytes: 0,
        started: Instant::now(),
    };
    transfers.in_flight.borrow_mut().insert(id, progress);
    let mut source = TransferSource::new(vnode, since, TransferLimits::DEFAULT);
    let outcome = drive(&shard, &mut source, to, id).await;
    transfers.in_flight.borrow_mut().remove(&id);
    match outcome {
        Ok(true) => transfers.completed.set(transfers.completed.get() + 1),
        Ok(false) => {}
        Err(why) => {
            transfers.failed.set(transfers.failed.get() + 1);
            tracing::error!(
                shard = shard.index,
                vnode,
                peer = to,
                "state transfer abandoned: {why}; the replica stays behind until it is repaired"
            );
            let mut store = shard.store.borrow_mut();
            replica.replicator.borrow_mut().handle_state_failed(
                vnode,
                to,
                id,
                &mut *store,
                crate::shard::now(),
            );
        }
    }
}

/// Sends the transfer's parts; `Ok(true)` once all are sent, `Ok(false)` when it stopped being
/// wanted, `Err` when a record could not be read.
async fn drive(
    shard: &Rc<Shard>,
    source: &mut TransferSource,
    to: NodeId,
    id: u64,
) -> Result<bool, String> {
    let vnode = source.vnode();
    loop {
        if !current(shard, vnode, to, id) {
            return Ok(false);
        }
        let next = source.next(&shard.store.borrow(), now_ms());
        match next {
            TransferNext::Read(items) => read_items(shard, source, items).await?,
            TransferNext::Yield => {}
            TransferNext::Send(part) => {
                let last = part.last.is_some();
                if !send_part(shard, to, id, vnode, part).await {
                    return Ok(false);
                }
                if last {
                    return Ok(true);
                }
            }
            TransferNext::Done => return Ok(true),
        }
        // Every step may complete without waiting (values in memory, room on the link, no
        // rate limit): without this, a transfer filled the link's 8 MiB outbox in one go and
        // held the shard for 50 ms at a time (the sender's read p99 went from 0.5 to 60 ms).
        glommio::executor().yield_if_needed().await;
    }
}

/// Waits for room on the link and for the rate limit, then hands the part to the core.
async fn send_part(shard: &Rc<Shard>, to: NodeId, id: u64, vnode: u16, part: StatePart) -> bool {
    let replica = shard.replica.as_ref().expect("cluster");
    let keys = part.entries.len() as u64;
    let bytes = part.entries.iter().map(Entry::bytes).sum::<usize>() as u64
        + part
            .keep
            .as_ref()
            .map_or(0, |k| k.digests.len() as u64 * 16);
    while replica.replicator.borrow().outbox_full(to) {
        if !current(shard, vnode, to, id) {
            return false;
        }
        glommio::timer::sleep(ROOM_POLL).await;
    }
    let wait = replica
        .transfers
        .pacer
        .borrow_mut()
        .charge(bytes, Instant::now());
    if !wait.is_zero() {
        glommio::timer::sleep(wait).await;
    }
    let sent = {
        let mut store = shard.store.borrow_mut();
        replica.replicator.borrow_mut().handle_state_part(
            vnode,
            to,
            id,
            part,
            &mut *store,
            crate::shard::now(),
        )
    };
    if !sent {
        return false;
    }
    let transfers = &replica.transfers;
    transfers.keys_sent.set(transfers.keys_sent.get() + keys);
    transfers.bytes_sent.set(transfers.bytes_sent.get() + bytes);
    if let Some(progress) = transfers.in_flight.borrow_mut().get_mut(&id) {
        progress.keys += keys;
        progress.bytes += bytes;
    }
    pump(shard);
    true
}

/// An order-independent digest of `vnode`'s live keys' (key digest, version, value bytes),
/// read the way a state transfer reads them (`tessera verify`).
pub async fn value_digest(shard: &Shard, vnode: u16) -> Result<u64, String> {
    let mut source = TransferSource::new(vnode, Position::default(), TransferLimits::DEFAULT);
    let mut sum = 0u64;
    loop {
        let next = source.next(&shard.store.borrow(), now_ms());
        match next {
            TransferNext::Read(items) => {
                read_items(shard, &mut source, items).await?;
                glommio::executor().yield_if_needed().await;
            }
            TransferNext::Yield => glommio::executor().yield_if_needed().await,
            TransferNext::Send(part) if part.keep.is_some() => return Ok(sum),
            TransferNext::Send(part) => {
                for entry in &part.entries {
                    sum = sum.wrapping_add(entry_digest(entry));
                }
            }
            TransferNext::Done => return Ok(sum),
        }
    }
}

fn entry_digest(entry: &Entry) -> u64 {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&tessera_store::digest(&entry.key).to_le_bytes());
    bytes.extend_from_slice(&entry.version.to_le_bytes());
    let value = entry.value.as_deref().unwrap_or_default();
    bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(value).to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Reads the keys `TransferNext::Read` names, at once, and hands their writes to the source
/// in order (a key rewritten since is left out).
async fn read_items(
    shard: &Shard,
    source: &mut TransferSource,
    items: Vec<StateItem>,
) -> Result<(), String> {
    let vnode = source.vnode();
    let reads = items.into_iter().map(|item| resolve(shard, vnode, item));
    for entry in futures::future::join_all(reads).await {
        if let Some(entry) = entry? {
            source.push(entry);
        }
    }
    Ok(())
}

/// One key of a transfer, read from disk if it is not in memory.
async fn resolve(shard: &Shard, vnode: u16, item: StateItem) -> Result<Option<Entry>, String> {
    match item {
        StateItem::Ready(entry) => Ok(Some(entry)),
        StateItem::OnDisk { digest, read } => read_on_disk(shard, vnode, digest, read).await,
    }
}

/// One key of a transfer from disk. Compaction may have moved its record since it was found:
/// then it is looked up again. `Ok(None)`: the key was rewritten or deleted since (its newer
/// write comes later in the transfer or in the stream). `Err`: the record stays unreadable.
async fn read_on_disk(
    shard: &Shard,
    vnode: u16,
    digest: u128,
    read: tessera_store::DiskRead,
) -> Result<Option<Entry>, String> {
    let mut read = read;
    let mut why = String::new();
    for _ in 0..3 {
        match shard.segments.read(&read).await {
            Ok(bytes) => match finish_state_read(&read, digest, &bytes) {
                Ok(entry) => return Ok(Some(entry)),
                Err(corrupt) => why = corrupt.to_string(),
            },
            Err(e) => why = format!("reading segment {}: {e}", read.segment),
        }
        match shard.store.borrow().locate(vnode, digest, read.version) {
            None => return Ok(None),
            Some(StateItem::Ready(entry)) => return Ok(Some(entry)),
            Some(StateItem::OnDisk { read: moved, .. }) => read = moved,
        }
    }
    Err(why)
}
