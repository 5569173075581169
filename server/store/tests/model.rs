//! Model-based test: random operations, with crashes and reboots, checked against a `BTreeMap`.
//!
//! The model keeps what the store has applied, the last state known durable, and the writes made
//! since. After a crash every key must hold its durable state or one written since (a write that
//! was never acknowledged may or may not survive); under `FsyncPolicy::Always` a write counts as
//! acknowledged only once the flush that synced it is done, so nothing acknowledged is lost.
//! After a clean reboot the store must equal the model exactly.
//!
//! Reads are checked against crashes too (`visibility.rs`): under `FsyncPolicy::Always` a GET,
//! and for a durable request a VERSION_MISMATCH or NOT_FOUND, is answered only once the key's
//! newest write is visible (`Store::read`'s barrier). The harness holds such an answer until a
//! flush makes its barrier visible, drops it at a crash (the client never got it), and after a
//! crash asserts that no key went back to a state older than one an answered read showed.

use std::collections::{BTreeMap, BTreeSet};

use tessera_schema::placement::vnode_of;

/// The vnode count of the stores these tests build.
const VNODES: u32 = 256;
use tessera_store::testing::{MemDisk, Rng};
use tessera_store::visibility::{Barrier, Visibility};
use tessera_store::*;

type State = Option<(Vec<u8>, u64, u64)>; // (value, version, expiry_ms)

struct Harness {
    config: StoreConfig,
    disk: MemDisk,
    store: Store,
    now_ms: u64,
    rng: Rng,
    applied: BTreeMap<Vec<u8>, (Vec<u8>, u64, u64)>,
    durable: BTreeMap<Vec<u8>, (Vec<u8>, u64, u64)>,
    since_durable: Vec<(Vec<u8>, State)>,
    /// Answers waiting for their barrier: (key, position in the key's history, barrier).
    /// A key's history is its durable state (position 0) then its `since_durable` entries.
    held_answers: Vec<(Vec<u8>, usize, Barrier)>,
    /// Per key, the newest position an answered read showed: a crash may not go back past it.
    shown: BTreeMap<Vec<u8>, usize>,
    /// Answers given, and answers that had to wait for their barrier.
    answers: u64,
    held: u64,
    last_seq: u64,
    max_version_seen: BTreeMap<Vec<u8>, u64>,
    /// A compaction in progress: victim, its bytes, where to resume.
    compacting: Option<(u32, Vec<u8>, usize)>,
    /// Segments compaction deleted, over all restarts.
    compacted_segments: u64,
}

fn live(state: &(Vec<u8>, u64, u64), now_ms: u64) -> bool {
    state.2 == 0 || now_ms < state.2
}

impl Harness {
    fn new(seed: u64, fsync: FsyncPolicy) -> Harness {
        let config = StoreConfig {
            segment_size_bytes: 2 * 1024 * 1024 + 1024 * 1024,
            fsync,
            max_unflushed_bytes: 8 * 1024 * 1024,
            flush_threshold_bytes: 64 * 1024,
            // Small, so that the model test runs through evictions.
            cache_bytes: 256 * 1024,
            space_factor: 2.0,
            memory_limit_bytes: None,
            vnodes: VNODES,
            visibility: Visibility::Durable,
        };
        Harness {
            store: Store::new(config.clone()),
            config,
            disk: MemDisk::new(),
            now_ms: 1_000_000,
            rng: Rng::new(seed),
            applied: BTreeMap::new(),
            durable: BTreeMap::new(),
            since_durable: Vec::new(),
            held_answers: Vec::new(),
            shown: BTreeMap::new(),
            answers: 0,
            held: 0,
            last_seq: 0,
            max_version_seen: BTreeMap::new(),
            compacting: None,
            compacted_segments: 0,
        }
    }

    fn key(&mut self) -> Vec<u8> {
        format!("key-{}", self.rng.below(24)).into_bytes()
    }

    fn value(&mut self) -> Vec<u8> {
        let len = match self.rng.below(10) {
            0 => self.rng.below(200_000),
            1..=3 => self.rng.below(5000),
            _ => self.rng.below(100),
        } as usize;
        let byte = self.rng.below(256) as u8;
        vec![byte; len]
    }

    fn current(&self, key: &[u8]) -> Option<&(Vec<u8>, u64, u64)> {
        self.applied.get(key).filter(|s| live(s, self.now_ms))
    }

    fn put(&mut self) {
        let key = self.key();
        let value = self.value();
        let ttl_ms = if self.rng.below(5) == 0 {
            1 + self.rng.below(50)
        } else {
            0
        };
        let current_version = self.current(&key).map_or(0, |s| s.1);
        let if_version = match self.rng.below(6) {
            0 => Some(current_version),
            1 => Some(current_version + 1),
            _ => None,
        };
        let write = Write {
            vnode: vnode_of(&key, VNODES),
            key: &key,
            value: Some(&value),
            ttl_ms,
            if_version,
            sync: self.rng.below(4) == 0,
            epoch: 1,
        };
        match self.store.handle_write(write, self.now_ms) {
            Ok(ack) => {
                assert!(if_version.is_none_or(|v| v == current_version));
                let floor = self.max_version_seen.get(&key).copied().unwrap_or(0);
                assert!(ack.version > floor, "versions only grow");
                self.max_version_seen.insert(key.clone(), ack.version);
                let expiry = if ttl_ms == 0 { 0 } else { self.now_ms + ttl_ms };
                let state = (value, ack.version, expiry);
                self.applied.insert(key.clone(), state.clone());
                self.since_durable.push((key, Some(state)));
                self.last_seq = ack.seq;
            }
            Err(WriteError::VersionMismatch { current }) => {
                assert_eq!(current, current_version);
                assert_ne!(if_version, Some(current_version));
                if write.sync || self.strict() {
                    self.answer(
                        &key,
                        self.store.unsettled_barrier(vnode_of(&key, VNODES), &key),
                    );
                }
            }
            Err(WriteError::Overloaded) => self.flush(),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    fn delete(&mut self) {
        let key = self.key();
        let current_version = self.current(&key).map_or(0, |s| s.1);
        let if_version = (self.rng.below(4) == 0).then_some(current_version);
        let write = Write {
            vnode: vnode_of(&key, VNODES),
            key: &key,
            value: None,
            ttl_ms: 0,
            if_version,
            sync: self.rng.below(4) == 0,
            epoch: 1,
        };
        match self.store.handle_write(write, self.now_ms) {
            Ok(ack) => {
                assert_ne!(current_version, 0);
                self.applied.remove(&key);
                self.since_durable.push((key, None));
                self.last_seq = ack.seq;
            }
            Err(WriteError::NotFound) => {
                assert_eq!(current_version, 0);
                if write.sync || self.strict() {
                    self.answer(
                        &key,
                        self.store.unsettled_barrier(vnode_of(&key, VNODES), &key),
                    );
                }
            }
            Err(WriteError::VersionMismatch { current }) => {
                assert_eq!(current, current_version);
                if write.sync || self.strict() {
                    self.answer(
                        &key,
                        self.store.unsettled_barrier(vnode_of(&key, VNODES), &key),
                    );
                }
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    /// Reads must not reveal unsettled writes under `--fsync always`.
    fn strict(&self) -> bool {
        self.config.fsync == FsyncPolicy::Always
    }

    /// Where the key's current state is in its history (see `held_answers`).
    fn position(&self, key: &[u8]) -> usize {
        self.since_durable.iter().filter(|(k, _)| k == key).count()
    }

    /// An answer about `key`'s current state is given once `barrier` is visible.
    fn answer(&mut self, key: &[u8], barrier: Option<Barrier>) {
        let position = self.position(key);
        match barrier {
            Some(barrier) if !self.store.is_visible(barrier) => {
                self.held += 1;
                self.held_answers.push((key.to_vec(), position, barrier));
            }
            _ => self.show(key, position),
        }
    }

    fn show(&mut self, key: &[u8], position: usize) {
        self.answers += 1;
        let shown = self.shown.entry(key.to_vec()).or_default();
        *shown = (*shown).max(position);
    }

    /// Gives the held answers whose barrier is now visible.
    fn release_answers(&mut self) {
        let store = &self.store;
        let (ready, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_answers)
            .into_iter()
            .partition(|(_, _, barrier)| store.is_visible(*barrier));
        self.held_answers = held;
        for (key, position, _) in ready {
            self.show(&key, position);
        }
    }

    /// Reads through the public API; a disk read fills the value cache, as the shell does.
    fn read(&mut self, key: &[u8]) -> Option<(Vec<u8>, u64)> {
        let read = match self.store.get(vnode_of(key, VNODES), key, self.now_ms) {
            Lookup::NotFound => return None,
            Lookup::InMemory { value, version } => return Some((value.to_vec(), version)),
            Lookup::OnDisk(read) => read,
        };
        let bytes = self.disk.read(&read);
        let value = finish_read(&read, key, &bytes).expect("intact record");
        self.store
            .handle_read_done(vnode_of(key, VNODES), key, &read, &value, self.now_ms);
        Some((value, read.version))
    }

    fn check_get(&mut self) {
        let key = self.key();
        let want = self.current(&key).map(|s| (s.0.clone(), s.1));
        assert_eq!(
            self.read(&key),
            want,
            "get {}",
            String::from_utf8_lossy(&key)
        );
        if self.strict() {
            let barrier = self.store.read(vnode_of(&key, VNODES), &key, self.now_ms).1;
            assert_eq!(
                barrier,
                self.store.unsettled_barrier(vnode_of(&key, VNODES), &key)
            );
            self.answer(&key, barrier);
        }
    }

    fn flush(&mut self) {
        self.disk
            .flush_due(&mut self.store, self.now_ms)
            .expect("flush");
        while let Some(segment) = self.store.poll_segment_delete() {
            self.disk.delete_segment(segment);
            self.compacted_segments += 1;
        }
        self.release_answers();
        if self.store.durable_seq() >= self.last_seq {
            self.durable = self.applied.clone();
            self.since_durable.clear();
            // Every key's current state is now its durable one (position 0).
            assert!(self.held_answers.is_empty(), "every barrier is visible now");
            self.held_answers.clear();
            self.shown.clear();
        }
    }

    /// Every live key of the store, read back through the public API.
    fn contents(&mut self) -> BTreeMap<Vec<u8>, (Vec<u8>, u64)> {
        let mut out = BTreeMap::new();
        for vnode in 0..VNODES as u16 {
            // Pages of random size, each going on from the last digest of the one before.
            let mut after = None;
            loop {
                let limit = 1 + self.rng.below(40) as usize;
                let page = self.store.scan(vnode, after, limit, self.now_ms);
                for item in &page {
                    let key = match &item.key {
                        ScanKey::InMemory(key) => key.clone(),
                        ScanKey::OnDisk(read) => {
                            let bytes = self.disk.read(read);
                            finish_key_read(read, item.digest, &bytes).expect("intact key")
                        }
                    };
                    assert_eq!(vnode_of(&key, VNODES), vnode);
                    let (value, version) = self.read(&key).expect("scanned key reads back");
                    assert_eq!(item.version, version);
                    assert!(out.insert(key, (value, version)).is_none(), "listed twice");
                }
                match page.last() {
                    Some(last) if page.len() == limit => after = Some(last.digest),
                    _ => break,
                }
            }
        }
        out
    }

    /// One step of compaction: start one if due, else relocate the next piece.
    fn compact_step(&mut self) {
        if self.compacting.is_none() {
            if let Some(victim) = self.store.poll_compaction() {
                self.compacting = Some((victim, self.disk.segment_bytes(victim), 0));
            }
        }
        let Some((victim, bytes, offset)) = self.compacting.take() else {
            return;
        };
        let step = self
            .store
            .relocate(victim, &bytes, offset, 1024 * 1024, self.now_ms);
        if let Some(next) = step.expect("no corruption in the model") {
            self.compacting = Some((victim, bytes, next));
        }
        // Relocated copies may leave a record's segment: reads must still find every key.
        self.check_get();
    }

    fn sweep(&mut self) {
        self.store.sweep_expired(self.now_ms, 8);
    }

    fn restart(&mut self) {
        self.compacting = None;
        // Half the restarts replay sealed segments from their hint files.
        self.disk.use_hints = self.rng.below(2) == 0;
        let (store, _) = self
            .disk
            .recover(self.config.clone(), false, self.now_ms)
            .expect("recover");
        self.store = store;
        self.last_seq = 0;
    }

    fn crash(&mut self) {
        self.disk.crash(&mut self.rng);
        // A real restart takes longer than a millisecond; versions lean on the clock moving on
        // (see the store's module header).
        self.now_ms += 1;
        self.restart();
        let got = self.contents();
        let mut keys: BTreeSet<Vec<u8>> = self.durable.keys().cloned().collect();
        keys.extend(self.since_durable.iter().map(|(k, _)| k.clone()));
        keys.extend(got.keys().cloned());
        let now = self.now_ms;
        for key in keys {
            let visible = |s: &State| {
                s.as_ref()
                    .filter(|s| live(s, now))
                    .map(|s| (s.0.clone(), s.1))
            };
            let mut allowed = vec![visible(&self.durable.get(&key).cloned())];
            allowed.extend(
                self.since_durable
                    .iter()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, s)| visible(s)),
            );
            let found = got.get(&key).cloned();
            assert!(
                allowed.contains(&found),
                "key {:?}: found {:?}",
                String::from_utf8_lossy(&key),
                found.map(|f| f.1)
            );
            // Nothing an answered read showed is taken back: the state found is at least as
            // new as the newest one shown (`allowed` lists the key's history in order).
            let newest_match = allowed.iter().rposition(|s| *s == found).expect("allowed");
            let shown = self.shown.get(&key).copied().unwrap_or(0);
            assert!(
                newest_match >= shown,
                "key {:?}: a read showed state {shown} of its history, the crash left state {newest_match}",
                String::from_utf8_lossy(&key)
            );
        }
        // Answers still held were never given: the client saw nothing.
        self.held_answers.clear();
        self.shown.clear();
        self.applied = self.durable_after_crash(&got);
        self.durable = self.applied.clone();
        self.since_durable.clear();
    }

    fn durable_after_crash(
        &self,
        got: &BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    ) -> BTreeMap<Vec<u8>, (Vec<u8>, u64, u64)> {
        let mut candidates: Vec<(Vec<u8>, u64, u64)> = self.durable.values().cloned().collect();
        candidates.extend(self.since_durable.iter().filter_map(|(_, s)| s.clone()));
        got.iter()
            .map(|(key, (value, version))| {
                let expiry = candidates
                    .iter()
                    .find(|c| c.1 == *version)
                    .map_or(0, |c| c.2);
                (key.clone(), (value.clone(), *version, expiry))
            })
            .collect()
    }

    fn reboot(&mut self) {
        self.now_ms += 1000;
        self.flush();
        // Compaction also takes sequence numbers, so durable_seq may be past the last write's.
        assert!(self.store.durable_seq() >= self.last_seq);
        let before = self.contents();
        self.restart();
        assert_eq!(self.contents(), before, "clean restart changes nothing");
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=37 => self.put(),
            38..=47 => self.delete(),
            48..=69 => self.check_get(),
            70..=81 => self.flush(),
            82..=85 => self.compact_step(),
            86..=87 => self.sweep(),
            88..=95 => self.now_ms += self.rng.below(60),
            96..=97 => self.crash(),
            _ => self.reboot(),
        }
    }
}

/// Runs one seed; returns how many segments compaction deleted and how many answers waited.
fn run(seed: u64, fsync: FsyncPolicy, steps: usize) -> (u64, u64) {
    let mut harness = Harness::new(seed, fsync);
    for _ in 0..steps {
        harness.step();
    }
    harness.reboot();
    (harness.compacted_segments, harness.held)
}

#[test]
fn model_fsync_always_loses_nothing_acknowledged_and_shows_nothing_a_crash_takes_back() {
    let (compacted, held): (Vec<u64>, Vec<u64>) = (0..40)
        .map(|seed| run(seed, FsyncPolicy::Always, 1200))
        .unzip();
    assert!(
        compacted.iter().sum::<u64>() > 0,
        "the seeds exercise compaction"
    );
    assert!(
        held.iter().sum::<u64>() > 1000,
        "the seeds read keys with unsettled writes"
    );
}

#[test]
fn model_fsync_interval() {
    for seed in 100..140 {
        run(
            seed,
            FsyncPolicy::Interval {
                interval_ms: 20,
                max_writes: 50,
            },
            600,
        );
    }
}

#[test]
fn corruption_in_a_sealed_segment_refuses_to_open_unless_repaired() {
    let mut harness = Harness::new(7, FsyncPolicy::Always);
    for _ in 0..400 {
        harness.put();
        harness.flush();
    }
    let segments = harness.disk.segments();
    assert!(segments.len() >= 2, "the test needs a sealed segment");
    harness.disk.corrupt(segments[0], 100);
    let error = harness
        .disk
        .recover(harness.config.clone(), false, harness.now_ms)
        .unwrap_err();
    assert_eq!(error.segment, segments[0]);
    assert!(
        error.to_string().contains("segment-0000000001.log"),
        "{error}"
    );
    let (_, reports) = harness
        .disk
        .recover(harness.config.clone(), true, harness.now_ms)
        .unwrap();
    assert!(reports[0].cut_bytes > 0);
}

#[test]
fn failed_fsync_stops_acknowledging() {
    let mut harness = Harness::new(9, FsyncPolicy::Always);
    harness.put();
    harness.disk.fail_next_sync = true;
    harness.put();
    assert!(harness
        .disk
        .flush_due(&mut harness.store, harness.now_ms)
        .is_err());
    assert!(harness.store.failure().is_some());
    assert_eq!(
        harness.store.next_flush_deadline_ms(),
        None,
        "no busy retry after a failure"
    );
    let write = Write {
        vnode: 0,
        key: b"k",
        value: Some(b"v"),
        ttl_ms: 0,
        if_version: None,
        sync: false,
        epoch: 1,
    };
    assert!(matches!(
        harness.store.handle_write(write, harness.now_ms),
        Err(WriteError::Failed(_))
    ));
}

#[test]
fn compaction_keeps_disk_within_the_factor_under_overwrites() {
    let mut harness = Harness::new(11, FsyncPolicy::Always);
    let value = vec![9u8; 20_000];
    for round in 0..400u64 {
        let key = format!("key-{}", round % 20);
        let write = Write {
            vnode: vnode_of(key.as_bytes(), VNODES),
            key: key.as_bytes(),
            value: Some(&value),
            ttl_ms: 0,
            if_version: None,
            sync: false,
            epoch: 1,
        };
        harness.store.handle_write(write, harness.now_ms).unwrap();
        harness
            .disk
            .flush_due(&mut harness.store, harness.now_ms)
            .unwrap();
        while harness
            .disk
            .compact(&mut harness.store, harness.now_ms)
            .unwrap()
            .is_some()
        {}
    }
    let stats = harness.store.stats();
    assert!(harness.store.compaction.runs > 0, "compaction ran");
    // Live data is 20 x 20 KB; the log stays within 2x of it plus the active segment.
    assert!(
        stats.disk_bytes <= 2 * stats.live_bytes + harness.config.segment_size_bytes,
        "{stats:?}"
    );
    let before = harness.contents();
    harness.restart();
    assert_eq!(
        harness.contents(),
        before,
        "a restart after compaction sees the same data"
    );
}

#[test]
fn an_expired_newer_version_dropped_by_compaction_does_not_resurrect_an_older_one() {
    let mut harness = Harness::new(12, FsyncPolicy::Always);
    let filler = vec![1u8; 500_000];
    let put = |h: &mut Harness, key: &str, value: &[u8], ttl_ms: u64| {
        let write = Write {
            vnode: vnode_of(key.as_bytes(), VNODES),
            key: key.as_bytes(),
            value: Some(value),
            ttl_ms,
            if_version: None,
            sync: false,
            epoch: 1,
        };
        h.store.handle_write(write, h.now_ms).unwrap();
        h.disk.flush_due(&mut h.store, h.now_ms).unwrap();
    };
    // Segment 1: the old version of k among data that stays live (never a compaction victim).
    put(&mut harness, "k", b"old, no ttl", 0);
    for i in 0..6 {
        put(&mut harness, &format!("a{i}"), &filler, 0);
    }
    // The next segment (segment 1 is full): a newer version of k that will expire, among data
    // that is overwritten later.
    put(&mut harness, "k", &[2u8; 200_000], 10);
    for _ in 0..4 {
        for i in 0..5 {
            put(&mut harness, &format!("b{i}"), &filler, 0);
        }
    }
    harness.now_ms += 100; // the new version expires
                           // The sweep drops k from memory first, as the shell's sweep would; compaction must still
                           // leave a tombstone behind when it deletes k's newest record.
    assert_eq!(harness.store.sweep_expired(harness.now_ms, 10_000), 1);
    while harness
        .disk
        .compact(&mut harness.store, harness.now_ms)
        .unwrap()
        .is_some()
    {}
    let state = &harness.store.compaction;
    assert!(state.runs >= 1 && state.expired_keys == 1, "{state:?}");
    assert!(
        !harness.disk.segments().contains(&2),
        "segment 2, with the expired version, is gone"
    );
    assert!(
        harness.disk.segments().contains(&1),
        "segment 1, with the old version, is kept"
    );
    assert!(harness.read(b"k").is_none());
    harness.restart();
    assert!(
        harness.read(b"k").is_none(),
        "the old version must stay dead after restart"
    );
    assert!(harness.read(b"a3").is_some());
}

#[test]
fn a_tombstone_outlives_the_older_records_it_hides() {
    let mut harness = Harness::new(13, FsyncPolicy::Always);
    let filler = vec![1u8; 500_000];
    let write = |h: &mut Harness, key: &str, value: Option<&[u8]>| {
        let write = Write {
            vnode: vnode_of(key.as_bytes(), VNODES),
            key: key.as_bytes(),
            value,
            ttl_ms: 0,
            if_version: None,
            sync: false,
            epoch: 1,
        };
        h.store.handle_write(write, h.now_ms).unwrap();
        h.disk.flush_due(&mut h.store, h.now_ms).unwrap();
    };
    // Segment 1: k's value, among data that stays live (never a victim).
    write(&mut harness, "k", Some(b"deleted later"));
    for i in 0..6 {
        write(&mut harness, &format!("a{i}"), Some(&filler));
    }
    // Segment 2: k's tombstone, among data overwritten later.
    write(&mut harness, "pad", Some(&[3u8; 200_000]));
    write(&mut harness, "k", None);
    for _ in 0..4 {
        for i in 0..5 {
            write(&mut harness, &format!("b{i}"), Some(&filler));
        }
    }
    write(&mut harness, "pad", Some(b"small")); // segment 2 is now all garbage and tombstone
    while harness
        .disk
        .compact(&mut harness.store, harness.now_ms)
        .unwrap()
        .is_some()
    {}
    assert!(
        !harness.disk.segments().contains(&2),
        "the tombstone's segment was compacted"
    );
    assert!(harness.disk.segments().contains(&1));
    harness.restart();
    assert!(
        harness.read(b"k").is_none(),
        "the tombstone was carried forward"
    );
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_when_space_returns() {
    let mut harness = Harness::new(14, FsyncPolicy::Always);
    let big = vec![4u8; 900_000];
    let write = |h: &mut Harness, key: &str, value: &[u8]| {
        let write = Write {
            vnode: vnode_of(key.as_bytes(), VNODES),
            key: key.as_bytes(),
            value: Some(value),
            ttl_ms: 0,
            if_version: None,
            sync: false,
            epoch: 1,
        };
        h.store.handle_write(write, h.now_ms)
    };
    for i in 0..3 {
        write(&mut harness, &format!("k{i}"), &big).unwrap();
        harness
            .disk
            .flush_due(&mut harness.store, harness.now_ms)
            .unwrap();
    }
    // The next write needs a new segment, and the disk has no room for it.
    harness.disk.disk_full = true;
    let pending = write(&mut harness, "k3", &big).unwrap();
    assert!(harness
        .disk
        .flush_due(&mut harness.store, harness.now_ms)
        .is_err());
    assert!(harness.store.disk_full());
    assert!(matches!(
        write(&mut harness, "k4", b"v"),
        Err(WriteError::DiskFull(_))
    ));
    assert_eq!(
        harness.read(b"k1").map(|r| r.0),
        Some(big.clone()),
        "reads go on"
    );
    assert!(
        harness.store.durable_seq() < pending.seq,
        "not acknowledged while the disk is full"
    );
    // No retry before the back-off; then space returns and everything appended gets written.
    assert!(harness.store.poll_flush(harness.now_ms).is_none());
    harness.disk.disk_full = false;
    harness.now_ms += tessera_store::store::DISK_FULL_RETRY_MS;
    harness
        .disk
        .flush_due(&mut harness.store, harness.now_ms)
        .unwrap();
    assert!(!harness.store.disk_full());
    assert!(harness.store.durable_seq() >= pending.seq);
    write(&mut harness, "k4", b"v").unwrap();
    harness.flush();
    harness.restart();
    assert_eq!(harness.read(b"k3").map(|r| r.0), Some(big));
    assert_eq!(harness.read(b"k4").map(|r| r.0), Some(b"v".to_vec()));
}

#[test]
fn hints_give_the_same_data_as_a_full_scan_and_damaged_ones_are_not_trusted() {
    let mut harness = Harness::new(15, FsyncPolicy::Always);
    for _ in 0..1500 {
        harness.put();
        if harness.rng.below(4) == 0 {
            harness.delete();
        }
        harness.flush();
    }
    let hinted = harness.disk.hint_segments();
    assert!(hinted.len() >= 2, "sealed segments have hints: {hinted:?}");
    let want = harness.contents();
    for use_hints in [true, false] {
        harness.disk.use_hints = use_hints;
        let (store, _) = harness
            .disk
            .recover(harness.config.clone(), false, harness.now_ms)
            .unwrap();
        harness.store = store;
        assert_eq!(harness.contents(), want, "use_hints = {use_hints}");
    }
    // A damaged hint is refused (checksum) and its segment scanned instead.
    harness.disk.corrupt_hint(hinted[0], 17);
    harness.disk.use_hints = true;
    let (store, _) = harness
        .disk
        .recover(harness.config.clone(), false, harness.now_ms)
        .unwrap();
    harness.store = store;
    assert_eq!(harness.contents(), want);
}

#[test]
fn a_memory_limit_refuses_new_keys_per_vnode_and_survives_a_restart() {
    // Room for the 256 vnodes' first tables (which hold ~3 300 keys before growing) and 100 KB
    // more. An empty vnode holds no table; its first key allocates the smallest one.
    let mut probe = Store::new(StoreConfig {
        vnodes: VNODES,
        ..StoreConfig::default()
    });
    assert_eq!(probe.stats().index_bytes, 0, "empty vnodes hold no memory");
    let first_key = Write {
        vnode: 0,
        key: b"k",
        value: Some(b"v"),
        ttl_ms: 0,
        if_version: None,
        sync: false,
        epoch: 1,
    };
    probe.handle_write(first_key, 1_000_000).unwrap();
    let first_tables = probe.stats().index_bytes * u64::from(VNODES);
    let limit_bytes = first_tables + 100_000;
    let config = StoreConfig {
        memory_limit_bytes: Some(limit_bytes),
        cache_bytes: 64 * 1024,
        vnodes: VNODES,
        ..StoreConfig::default()
    };
    let mut store = Store::new(config.clone());
    let mut disk = MemDisk::new();
    let put = |store: &mut Store, key: &[u8], ttl_ms: u64| {
        let write = Write {
            vnode: vnode_of(key, VNODES),
            key,
            value: Some(b"value"),
            ttl_ms,
            if_version: None,
            sync: false,
            epoch: 1,
        };
        store.handle_write(write, 1_000_000)
    };
    let mut stored = Vec::new();
    let refused = (0..100_000u32)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|key| {
            match put(
                &mut store,
                key,
                if stored.len() % 7 == 0 { 60_000 } else { 0 },
            ) {
                Ok(_) => {
                    stored.push(key.clone());
                    false
                }
                Err(WriteError::MemoryLimit { .. }) => true,
                Err(other) => panic!("unexpected {other:?}"),
            }
        })
        .expect("the limit is reached");
    assert!(store.stats().index_bytes <= limit_bytes);
    assert!(
        (3_000..10_000).contains(&stored.len()),
        "{} keys",
        stored.len()
    );
    // Refused again; overwrites, reads and deletes go on.
    assert!(matches!(
        put(&mut store, &refused, 0),
        Err(WriteError::MemoryLimit { .. })
    ));
    put(&mut store, &stored[0], 0).expect("an overwrite needs no room");
    assert!(!matches!(
        store.get(vnode_of(&stored[1], VNODES), &stored[1], 1_000_000),
        Lookup::NotFound
    ));
    let neighbour = stored
        .iter()
        .position(|k| vnode_of(k, VNODES) == vnode_of(&refused, VNODES))
        .expect("a stored key in the refused key's vnode");
    let delete = Write {
        vnode: vnode_of(&refused, VNODES),
        key: &stored[neighbour],
        value: None,
        ttl_ms: 0,
        if_version: None,
        sync: false,
        epoch: 1,
    };
    store.handle_write(delete, 1_000_000).unwrap();
    stored.swap_remove(neighbour);
    put(&mut store, &refused, 0).expect("the delete made room in that vnode");
    stored.push(refused);
    // A restart under the same limit holds the same keys, within the limit.
    disk.flush_due(&mut store, u64::MAX / 2048).unwrap();
    let (recovered, _) = disk.recover(config, false, 1_000_000).unwrap();
    assert_eq!(recovered.stats().keys, stored.len() as u64);
    assert!(recovered.stats().index_bytes <= limit_bytes);
    for key in &stored {
        assert!(
            !matches!(
                recovered.get(vnode_of(key, VNODES), key, 1_000_000),
                Lookup::NotFound
            ),
            "{}",
            String::from_utf8_lossy(key)
        );
    }
}

fn write_in(vnode: u16, key: &[u8], value: Option<&[u8]>) -> Write<'static> {
    let key: &'static [u8] = Box::leak(key.to_vec().into_boxed_slice());
    let value: Option<&'static [u8]> = value.map(|v| &*Box::leak(v.to_vec().into_boxed_slice()));
    Write {
        vnode,
        key,
        value,
        ttl_ms: 0,
        if_version: None,
        sync: false,
        epoch: 1,
    }
}

#[test]
fn vnode_sequence_numbers_survive_restarts_and_compaction() {
    let mut harness = Harness::new(21, FsyncPolicy::Always);
    let filler = vec![5u8; 400_000];
    // Vnode 3: ten writes, the newest of them a delete; vnode 4 fills segments and is
    // overwritten, so that compaction has victims.
    for i in 0..9 {
        let ack = harness
            .store
            .handle_write(
                write_in(3, format!("k{i}").as_bytes(), Some(b"v")),
                harness.now_ms,
            )
            .unwrap();
        assert_eq!(
            ack.vnode_seq,
            i + 1,
            "the head numbers a vnode's writes from 1"
        );
    }
    let delete = Write {
        value: None,
        ..write_in(3, b"k0", None)
    };
    assert_eq!(
        harness
            .store
            .handle_write(delete, harness.now_ms)
            .unwrap()
            .vnode_seq,
        10
    );
    harness.flush();
    for round in 0..30 {
        let key = format!("f{}", round % 4);
        harness
            .store
            .handle_write(write_in(4, key.as_bytes(), Some(&filler)), harness.now_ms)
            .unwrap();
        harness.flush();
        while harness
            .disk
            .compact(&mut harness.store, harness.now_ms)
            .unwrap()
            .is_some()
        {}
        harness.flush();
    }
    assert!(
        !harness.disk.segments().contains(&1),
        "the segment with vnode 3's records, its delete the newest, was compacted"
    );
    let log = harness.store.vnode_log(3);
    assert_eq!(
        (log.applied_seq, log.durable_seq, log.visible_seq),
        (10, 10, 10)
    );
    for use_hints in [true, false] {
        harness.disk.use_hints = use_hints;
        harness.restart();
        let log = harness.store.vnode_log(3);
        assert_eq!(
            log.applied_seq, 10,
            "the delete's sequence number is kept (hints {use_hints})"
        );
        assert_eq!(harness.store.vnode_log(4).applied_seq, 30);
    }
    // The next write goes on from there.
    let next = harness
        .store
        .handle_write(write_in(3, b"k1", Some(b"w")), harness.now_ms)
        .unwrap();
    assert_eq!(next.vnode_seq, 11);
}

#[test]
fn a_replica_applies_the_heads_writes_as_they_are_and_in_order() {
    let mut head = Harness::new(22, FsyncPolicy::Always);
    let mut replica = Harness::new(23, FsyncPolicy::Always);
    let mut shipped = Vec::new();
    for i in 0..300u64 {
        let key = format!("key-{}", i % 40).into_bytes();
        let vnode = vnode_of(&key, VNODES);
        let value = (i % 7 != 0).then(|| format!("value {i}").into_bytes());
        let write = Write {
            vnode,
            key: &key,
            value: value.as_deref(),
            ttl_ms: if i % 5 == 0 { 60_000 } else { 0 },
            if_version: None,
            sync: false,
            epoch: 3,
        };
        let Ok(ack) = head.store.handle_write(write, head.now_ms) else {
            continue; // a delete of a missing key
        };
        shipped.push((vnode, key, value, ack));
    }
    for (vnode, key, value, ack) in &shipped {
        let write = ReplicatedWrite {
            vnode: *vnode,
            key,
            value: value.as_deref(),
            version: ack.version,
            expiry_ms: ack.expiry_ms,
            seq: ack.vnode_seq,
            epoch: 3,
        };
        replica
            .store
            .handle_replicated_write(write, replica.now_ms)
            .unwrap();
        // The same write again, or any older one, is refused.
        assert!(matches!(
            replica.store.handle_replicated_write(write, replica.now_ms),
            Err(WriteError::OutOfOrder { .. })
        ));
    }
    head.flush();
    replica.flush();
    assert_eq!(
        replica.contents(),
        head.contents(),
        "the replica equals the head"
    );
    for vnode in 0..VNODES as u16 {
        let (h, r) = (head.store.vnode_log(vnode), replica.store.vnode_log(vnode));
        assert_eq!(
            (h.applied_seq, h.applied_version),
            (r.applied_seq, r.applied_version)
        );
    }
    replica.restart();
    assert_eq!(
        replica.contents(),
        head.contents(),
        "and so after a restart"
    );
}

/// Fills vnode 4 and compacts until `segment` is gone.
fn compact_away(harness: &mut Harness, segment: u32) {
    let filler = vec![5u8; 400_000];
    for round in 0..30 {
        let key = format!("f{}", round % 4);
        harness
            .store
            .handle_write(write_in(4, key.as_bytes(), Some(&filler)), harness.now_ms)
            .unwrap();
        harness.flush();
        while harness
            .disk
            .compact(&mut harness.store, harness.now_ms)
            .unwrap()
            .is_some()
        {}
        harness.flush();
    }
    assert!(
        !harness.disk.segments().contains(&segment),
        "{segment} compacted"
    );
}

/// Simulator seed 647: a replica restarted in the middle of a transfer must know it was cut
/// short (its deletes may be missing), through hints, full scans and compaction; and a
/// finished one must not read as cut short, its position kept by the `done` mark.
#[test]
fn a_transfer_cut_short_is_remembered_across_restarts_and_compaction() {
    use tessera_store::replicated::Position;
    let mut harness = Harness::new(22, FsyncPolicy::Always);
    harness.store.mark_transfer_started(3, 0).unwrap();
    harness
        .store
        .handle_write(write_in(5, b"other", Some(b"v")), harness.now_ms)
        .unwrap();
    harness.flush();
    compact_away(&mut harness, 1);
    for use_hints in [true, false] {
        harness.disk.use_hints = use_hints;
        harness.restart();
        assert_eq!(
            harness.store.transfer_cut_short(3),
            Some(0),
            "hints {use_hints}"
        );
        assert_eq!(harness.store.transfer_cut_short(5), None);
    }
    // Started again (a new transfer after the restart), then done.
    harness.store.mark_transfer_started(3, 0).unwrap();
    let through = Position {
        seq: 7,
        version: 99,
    };
    harness.store.mark_transfer_done(3, through).unwrap();
    harness.flush();
    let marked_in = *harness.disk.segments().last().unwrap();
    harness.restart();
    assert_eq!(harness.store.transfer_cut_short(3), None);
    assert_eq!(
        harness.store.vnode_log(3).applied_seq,
        7,
        "the done mark's position"
    );
    compact_away(&mut harness, marked_in);
    for use_hints in [true, false] {
        harness.disk.use_hints = use_hints;
        harness.restart();
        assert_eq!(
            harness.store.transfer_cut_short(3),
            None,
            "hints {use_hints}"
        );
        assert_eq!(harness.store.vnode_log(3).applied_seq, 7);
    }
}
