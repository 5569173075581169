//! Store-level benchmark, without the network: `cargo run --release -p tessera-store --example
//! store_bench [KEYS]` (default 10 000 000).
//!
//! 1. Recovery: builds a log of KEYS records (50-byte keys, 100-byte values) in memory in 64 MiB
//!    segments, replays it with `Recovery`, and reports GB/s of log and keys/s. This is the CPU
//!    side of a restart; reading the segments from disk adds their size at the disk's speed.
//! 2. Index memory: resident memory before and after the replay, per key (keys included).
//! 3. Puts per second on one core through the whole store with no device (index, log tail,
//!    group-commit plans, the copy into I/O buffers), and gets per second from the value cache.
//! 4. Compaction's effect on the latency of operations, on one thread as a shard runs them:
//!    50 % overwrites of 4 KiB values over 5 000 keys, with compaction off and on. When on, a
//!    relocation step of 16 KiB runs before every third operation while a victim is being
//!    copied (at 20 000 operations/s that is the shell's 128 MiB/s rate limit), and counts in
//!    the latency of the operation it delayed. The device keeps written bytes in memory.
//!
//! The sans-IO store has no clock: the benchmark reads one (it is not part of the store).

#![allow(clippy::disallowed_methods)] // the clock and /proc belong to the benchmark, not the store

use std::time::Instant;

use tessera_schema::placement::vnode_of;
use tessera_store::ondisk::{encode_record, RecordHeader};
use tessera_store::testing::MemDisk;
use tessera_store::{finish_read, FlushStep, Lookup, Recovery, Store, StoreConfig, Write};

const SEGMENT_BYTES: usize = 64 * 1024 * 1024;
/// The stores here have the default vnode count.
const VNODES: u32 = tessera_schema::placement::DEFAULT_VNODES;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn key(i: u64) -> Vec<u8> {
    format!("user:{i:045}").into_bytes() // 50 bytes
}

fn build_log(keys: u64) -> Vec<Vec<u8>> {
    let value = [7u8; 100];
    let mut segments = vec![Vec::with_capacity(SEGMENT_BYTES)];
    for i in 0..keys {
        let key = key(i);
        let header = RecordHeader {
            tombstone: false,
            key_len: key.len() as u16,
            value_len: value.len() as u32,
            vnode: vnode_of(&key, VNODES),
            version: i + 1,
            expiry_ms: 0,
            seq: i + 1,
            epoch: 1,
            format: tessera_store::ondisk::RECORD_FORMAT_V3,
            digest_key: false,
            transfer_mark: false,
        };
        if segments.last().unwrap().len() + header.record_len() > SEGMENT_BYTES {
            segments.push(Vec::with_capacity(SEGMENT_BYTES));
        }
        encode_record(segments.last_mut().unwrap(), &header, &key, &value);
    }
    for segment in &mut segments {
        segment.resize(SEGMENT_BYTES, 0);
    }
    segments
}

fn recovery(keys: u64) {
    let segments = build_log(keys);
    let log_bytes: usize = segments.len() * SEGMENT_BYTES;
    let config = StoreConfig {
        segment_size_bytes: SEGMENT_BYTES as u64,
        ..StoreConfig::default()
    };
    let before = resident_bytes();
    let started = Instant::now();
    let mut recovery = Recovery::new(config, false);
    recovery.expect_log_bytes(log_bytes as u64);
    for (i, bytes) in segments.iter().enumerate() {
        recovery
            .add_segment(i as u32 + 1, bytes, i + 1 == segments.len())
            .unwrap();
    }
    let (mut store, _) = recovery.finish(0);
    let elapsed = started.elapsed().as_secs_f64();
    // The scan produced a hint per sealed segment; a restart that has them replays those.
    let mut hints = Vec::new();
    while let Some(hint) = store.poll_hint() {
        hints.push(tessera_store::hint::encode_hint(&hint));
    }
    let hint_bytes: usize = hints.iter().map(Vec::len).sum();
    // Resident growth, less the encoded hints still held here (the store has handed them over).
    let after = resident_bytes().saturating_sub(hint_bytes as u64);
    let stats = store.stats();
    assert_eq!(stats.keys, keys);
    println!(
        "recovery: {keys} keys, {:.2} GB of log in {elapsed:.2} s = {:.2} GB/s, {:.2} M keys/s",
        log_bytes as f64 / 1e9,
        log_bytes as f64 / 1e9 / elapsed,
        keys as f64 / 1e6 / elapsed
    );
    println!(
        "index memory: {:.1} bytes per key measured (resident growth), {:.1} allocated by the index (STATS)",
        (after.saturating_sub(before)) as f64 / keys as f64,
        stats.index_bytes as f64 / keys as f64
    );
    drop(store);
    let started = Instant::now();
    let config = StoreConfig {
        segment_size_bytes: SEGMENT_BYTES as u64,
        ..StoreConfig::default()
    };
    let mut recovery = Recovery::new(config, false);
    recovery.expect_log_bytes(log_bytes as u64);
    for bytes in &hints {
        recovery
            .add_segment_hint(tessera_store::hint::decode_hint(bytes).unwrap())
            .expect("the hint's vnodes fit");
    }
    let last = segments.len() as u32;
    recovery
        .add_segment(last, &segments[last as usize - 1], true)
        .unwrap();
    let (store, _) = recovery.finish(0);
    let hinted = started.elapsed().as_secs_f64();
    assert_eq!(store.stats().keys, keys);
    println!(
        "recovery from hints: {} sealed segments, {:.2} GB of hints instead of {:.2} GB of log, in {hinted:.2} s ({:.2} M keys/s)",
        hints.len(),
        hint_bytes as f64 / 1e9,
        log_bytes as f64 / 1e9,
        keys as f64 / 1e6 / hinted
    );
}

/// Performs every flush due, handing each planned write (segment, offset, length) to `write`
/// to copy out of the store, and reports the plans done. No device is involved.
fn flush_plans(store: &mut Store, now_ms: u64, mut write: impl FnMut(&Store, u32, u64, u64)) {
    while let Some(plan) = store.poll_flush(now_ms) {
        for step in &plan.steps {
            if let FlushStep::Write {
                segment,
                offset,
                len,
            } = *step
            {
                write(store, segment, offset, len);
            }
        }
        store.handle_flush_done(&plan, now_ms);
    }
}

/// Performs a flush plan without a disk: the copy into an I/O buffer is kept (the shell does
/// it too), the device is not.
fn null_flush(store: &mut Store, buffer: &mut Vec<u8>, now_ms: u64) {
    flush_plans(store, now_ms, |store, segment, offset, len| {
        buffer.resize(len as usize, 0);
        store.copy_flush_bytes(segment, offset, buffer);
    });
}

/// A PUT with no TTL, no compare-and-set and the node's durability.
fn plain_put<'a>(key: &'a [u8], value: &'a [u8]) -> Write<'a> {
    Write {
        vnode: vnode_of(key, VNODES),
        key,
        value: Some(value),
        ttl_ms: 0,
        if_version: None,
        sync: false,
        epoch: 1,
    }
}

fn puts(ops: u64) {
    let mut store = Store::new(StoreConfig::default());
    let value = [9u8; 100];
    let keys: Vec<Vec<u8>> = (0..ops).map(key).collect();
    let mut buffer = Vec::new();
    let started = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        store
            .handle_write(plain_put(key, &value), 1_000_000)
            .unwrap();
        null_flush(&mut store, &mut buffer, 1_000_000 + i as u64 / 1000);
    }
    let rate = ops as f64 / started.elapsed().as_secs_f64();
    println!(
        "puts, one core, no device: {:.2} M/s (index, log tail, group-commit plans, buffer copy)",
        rate / 1e6
    );
}

fn gets(ops: u64) {
    let mut store = Store::new(StoreConfig::default());
    let mut disk = MemDisk::new();
    let value = [9u8; 100];
    let keys: Vec<Vec<u8>> = (0..ops).map(key).collect();
    for (i, key) in keys.iter().enumerate() {
        store
            .handle_write(plain_put(key, &value), 1_000_000)
            .unwrap();
        if i % 10_000 == 9_999 {
            disk.flush_due(&mut store, 1_000_000 + i as u64).unwrap();
        }
    }
    disk.flush_due(&mut store, u64::MAX / 2048).unwrap();
    // First pass fills the cache from the (in-memory) disk; the second is timed.
    for key in &keys {
        if let Lookup::OnDisk(read) = store.get(vnode_of(key, VNODES), key, 1_000_000) {
            let value = finish_read(&read, key, &disk.read(&read)).unwrap();
            store.handle_read_done(vnode_of(key, VNODES), key, &read, &value, 1_000_000);
        }
    }
    let started = Instant::now();
    let mut found = 0u64;
    for key in keys.iter().rev() {
        if let Lookup::InMemory { value, .. } = store.get(vnode_of(key, VNODES), key, 1_000_000) {
            found += u64::from(value.len() == 100);
        }
    }
    let rate = ops as f64 / started.elapsed().as_secs_f64();
    assert_eq!(found, ops, "every key is served from memory");
    println!(
        "gets, one core, from the value cache: {:.2} M/s",
        rate / 1e6
    );
}

/// A device that keeps what is written, so that compaction can read victims back.
#[derive(Default)]
struct MemDevice {
    segments: std::collections::HashMap<u32, Vec<u8>>,
    /// Writes copied out of the store (as the shell copies into I/O buffers), not yet stored.
    pending: Vec<(u32, u64, Vec<u8>)>,
}

impl MemDevice {
    /// The shard's side of a flush: plans, and copies of the bytes into I/O buffers.
    fn flush(&mut self, store: &mut Store, now_ms: u64) {
        flush_plans(store, now_ms, |store, segment, offset, len| {
            let mut buffer = vec![0; len as usize];
            store.copy_flush_bytes(segment, offset, &mut buffer);
            self.pending.push((segment, offset, buffer));
        });
        while store.poll_hint().is_some() {}
    }

    /// The device's side, which a real shard does not wait for: storing the bytes, deleting
    /// compacted segments.
    fn settle(&mut self, store: &mut Store) {
        for (segment, offset, bytes) in self.pending.drain(..) {
            let file = self.segments.entry(segment).or_default();
            let end = offset as usize + bytes.len();
            if file.len() < end {
                file.resize(end, 0);
            }
            file[offset as usize..end].copy_from_slice(&bytes);
        }
        while let Some(segment) = store.poll_segment_delete() {
            self.segments.remove(&segment);
        }
    }
}

/// Latencies (ns) of `ops` operations with compaction on or off; and of the relocation steps.
fn compaction_run(ops: u64, compaction: bool) -> (Vec<u64>, Vec<u64>, u64) {
    const KEYS: u64 = 5_000;
    let config = StoreConfig {
        segment_size_bytes: 16 * 1024 * 1024,
        space_factor: if compaction { 2.0 } else { 1000.0 },
        ..StoreConfig::default()
    };
    let mut store = Store::new(config);
    let mut device = MemDevice::default();
    let value = vec![5u8; 4096];
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let mut rng = tessera_store::testing::Rng::new(7);
    let mut latencies = Vec::with_capacity(ops as usize);
    let mut steps = Vec::new();
    let mut victim: Option<(u32, Vec<u8>, usize)> = None;
    let mut compactions = 0;
    for i in 0..ops {
        let now_ms = 1_000_000 + i / 20; // 20 000 operations per simulated second
        if i % 3 == 0 && victim.is_none() {
            // The shell reads the victim in the background; not part of any operation.
            victim = store
                .poll_compaction()
                .map(|v| (v, device.segments[&v].clone(), 0));
        }
        let started = Instant::now();
        if i % 3 == 0 {
            if let Some((id, bytes, offset)) = victim.take() {
                let step_started = Instant::now();
                match store
                    .relocate(id, &bytes, offset, 16 * 1024, now_ms)
                    .unwrap()
                {
                    Some(next) => victim = Some((id, bytes, next)),
                    None => compactions += 1,
                }
                steps.push(step_started.elapsed().as_nanos() as u64);
            }
        }
        let key = &keys[rng.below(KEYS) as usize];
        if i % 2 == 0 {
            store.handle_write(plain_put(key, &value), now_ms).unwrap();
        } else if let Lookup::OnDisk(read) = store.get(vnode_of(key, VNODES), key, now_ms) {
            let bytes = &device.segments[&read.segment][read.offset as usize..][..read.len];
            let found = finish_read(&read, key, bytes).unwrap();
            store.handle_read_done(vnode_of(key, VNODES), key, &read, &found, now_ms);
        }
        device.flush(&mut store, now_ms);
        latencies.push(started.elapsed().as_nanos() as u64);
        device.settle(&mut store);
    }
    (latencies, steps, compactions)
}

fn percentiles(mut ns: Vec<u64>) -> String {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    format!(
        "p50 {:.1} / p99 {:.1} / p99.9 {:.1} / max {:.1} us",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    )
}

fn compaction_latency(ops: u64) {
    let (off, _, _) = compaction_run(ops, false);
    let (on, steps, compactions) = compaction_run(ops, true);
    let p99 = |ns: &[u64]| {
        let mut sorted = ns.to_vec();
        sorted.sort_unstable();
        sorted[(sorted.len() - 1) * 99 / 100]
    };
    let ratio = p99(&on) as f64 / p99(&off) as f64;
    println!("operations, compaction off: {}", percentiles(off));
    println!(
        "operations, compaction on ({compactions} compactions): {} (p99 {ratio:.2}x)",
        percentiles(on)
    );
    println!("relocation steps of 16 KiB: {}", percentiles(steps));
}

fn main() {
    let keys: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    // `store_bench KEYS recovery` runs only the recovery part (for profiling it).
    let only_recovery = std::env::args().nth(2).as_deref() == Some("recovery");
    // Recovery first, so that resident growth is not hidden by memory the others freed.
    recovery(keys);
    if !only_recovery {
        puts(1_000_000.min(keys));
        gets(1_000_000.min(keys));
        compaction_latency(600_000);
    }
}
