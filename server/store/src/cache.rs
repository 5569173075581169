//! The value cache: hot values of one shard in memory, bounded in bytes, evicted by S3-FIFO.
//!
//! S3-FIFO (Yang et al., SOSP 2023) keeps a small FIFO (10 % of the bytes) where new entries
//! land, a main FIFO for entries read again while in the small one, and a ghost list of recently
//! evicted keys so that a key coming back soon goes straight to main. It is scan-resistant: a
//! one-pass scan of cold keys churns only the small queue. Entries are charged their value bytes
//! plus `ENTRY_OVERHEAD_BYTES`, so a few 1 MiB values cannot blow the budget.
//!
//! Keys are the index's 128-bit digests (`index::digest`), already uniformly distributed, so the
//! maps hash them by folding their halves instead of running SipHash over the key.
//! Expired entries are evicted first, whatever their frequency, and never returned.
//!
//! Coherence: the store updates or drops a key's entry on every write; a fill after a disk read
//! is accepted only if the index still names the version that was read.

use crate::fasthash::Fold;
use crate::index::Digest;
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};

/// Bytes charged per entry beyond its value: digest, map slot, queue slot, counters, the value's
/// allocation header.
pub const ENTRY_OVERHEAD_BYTES: usize = 112;
/// Most accesses remembered per entry (S3-FIFO uses 2 bits).
const MAX_FREQUENCY: u8 = 3;

/// Keys need no vnode beside them: a key belongs to exactly one vnode.
type Key = Digest;

#[derive(Debug)]
struct CacheEntry {
    value: Box<[u8]>,
    version: u64,
    expiry_ms: u64,
    frequency: Cell<u8>,
    in_main: bool,
    /// Distinguishes this entry from an older one of the same key still queued.
    generation: u64,
}

impl CacheEntry {
    fn charge(value: &[u8]) -> usize {
        value.len() + ENTRY_OVERHEAD_BYTES
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.expiry_ms != 0 && now_ms >= self.expiry_ms
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub bytes: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug)]
pub struct ValueCache {
    capacity_bytes: usize,
    small_bytes: usize,
    main_bytes: usize,
    entries: HashMap<Key, CacheEntry, Fold>,
    small: VecDeque<(Key, u64)>,
    main: VecDeque<(Key, u64)>,
    ghost: VecDeque<u64>,
    ghost_set: HashSet<u64, Fold>,
    next_generation: u64,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

/// A ghost remembers 64 bits of the digest: a rare collision only sends an entry to main early.
fn ghost_hash(key: Key) -> u64 {
    key as u64
}

impl ValueCache {
    pub fn new(capacity_bytes: usize) -> ValueCache {
        ValueCache {
            capacity_bytes,
            small_bytes: 0,
            main_bytes: 0,
            entries: HashMap::default(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashSet::default(),
            next_generation: 0,
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            bytes: (self.small_bytes + self.main_bytes) as u64,
            entries: self.entries.len() as u64,
            hits: self.hits.get(),
            misses: self.misses.get(),
        }
    }

    /// The cached value of a key at exactly `version`, counting a hit or a miss.
    pub fn get(&self, key: Key, version: u64, now_ms: u64) -> Option<&[u8]> {
        match self.entries.get(&key) {
            Some(entry) if entry.version == version && !entry.expired(now_ms) => {
                entry
                    .frequency
                    .set((entry.frequency.get() + 1).min(MAX_FREQUENCY));
                self.hits.set(self.hits.get() + 1);
                Some(&entry.value)
            }
            _ => {
                self.misses.set(self.misses.get() + 1);
                None
            }
        }
    }

    /// Changes the byte budget, evicting down to it at once.
    pub fn set_capacity(&mut self, capacity_bytes: usize, now_ms: u64) {
        self.capacity_bytes = capacity_bytes;
        self.evict(now_ms);
    }

    pub fn capacity(&self) -> usize {
        self.capacity_bytes
    }

    pub fn contains(&self, key: Key) -> bool {
        self.entries.contains_key(&key)
    }

    /// Drops a key's entry (a delete, or a write whose value is not cached).
    pub fn remove(&mut self, key: Key) {
        if let Some(entry) = self.entries.remove(&key) {
            self.uncharge(&entry);
        }
    }

    fn uncharge(&mut self, entry: &CacheEntry) {
        let charge = CacheEntry::charge(&entry.value);
        if entry.in_main {
            self.main_bytes -= charge;
        } else {
            self.small_bytes -= charge;
        }
    }

    /// Caches `value` as the key's value at `version`, evicting as needed. Values larger than a
    /// tenth of the cache are not cached (they would flush the small queue at once).
    pub fn insert(&mut self, key: Key, value: &[u8], version: u64, expiry_ms: u64, now_ms: u64) {
        self.remove(key);
        let charge = CacheEntry::charge(value);
        if charge > self.capacity_bytes / 10 {
            return;
        }
        let hash = ghost_hash(key);
        let to_main = self.ghost_set.remove(&hash);
        self.next_generation += 1;
        let generation = self.next_generation;
        let entry = CacheEntry {
            value: value.into(),
            version,
            expiry_ms,
            frequency: Cell::new(0),
            in_main: to_main,
            generation,
        };
        if to_main {
            self.main_bytes += charge;
            self.main.push_back((key, generation));
        } else {
            self.small_bytes += charge;
            self.small.push_back((key, generation));
        }
        self.entries.insert(key, entry);
        self.evict(now_ms);
    }

    fn evict(&mut self, now_ms: u64) {
        while self.small_bytes + self.main_bytes > self.capacity_bytes {
            if self.small_bytes > self.capacity_bytes / 10 || self.main.is_empty() {
                self.evict_small(now_ms);
            } else {
                self.evict_main(now_ms);
            }
        }
    }

    /// The queued entry, if it is still the live entry of its key.
    fn current(&self, key: Key, generation: u64) -> bool {
        self.entries
            .get(&key)
            .is_some_and(|e| e.generation == generation)
    }

    fn evict_small(&mut self, now_ms: u64) {
        let Some((key, generation)) = self.small.pop_front() else {
            return;
        };
        if !self.current(key, generation) {
            return;
        }
        let entry = self.entries.get_mut(&key).expect("current entry");
        let charge = CacheEntry::charge(&entry.value);
        if entry.frequency.get() > 0 && !entry.expired(now_ms) {
            // Read again while small: promote to main.
            entry.frequency.set(0);
            entry.in_main = true;
            self.small_bytes -= charge;
            self.main_bytes += charge;
            self.main.push_back((key, generation));
        } else {
            self.entries.remove(&key);
            self.small_bytes -= charge;
            self.remember_ghost(ghost_hash(key));
        }
    }

    fn evict_main(&mut self, now_ms: u64) {
        let Some((key, generation)) = self.main.pop_front() else {
            return;
        };
        if !self.current(key, generation) {
            return;
        }
        let entry = self.entries.get_mut(&key).expect("current entry");
        if entry.frequency.get() > 0 && !entry.expired(now_ms) {
            entry.frequency.set(entry.frequency.get() - 1);
            self.main.push_back((key, generation));
        } else {
            let charge = CacheEntry::charge(&entry.value);
            self.entries.remove(&key);
            self.main_bytes -= charge;
        }
    }

    fn remember_ghost(&mut self, hash: u64) {
        // The ghost list remembers about as many keys as main holds entries.
        let limit = self.entries.len().max(64);
        if self.ghost_set.insert(hash) {
            self.ghost.push_back(hash);
        }
        while self.ghost.len() > limit {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::digest;

    fn charge(value_len: usize) -> usize {
        value_len + ENTRY_OVERHEAD_BYTES
    }

    #[test]
    fn stays_within_its_byte_budget() {
        let mut cache = ValueCache::new(100 * charge(1000));
        for i in 0..10_000u32 {
            let key = format!("k{:03}", i % 997);
            cache.insert(digest(key.as_bytes()), &vec![1; 1000], u64::from(i), 0, 0);
            assert!(cache.stats().bytes <= 100 * charge(1000) as u64);
        }
        let big = vec![0u8; 1 << 20];
        cache.insert(digest(b"huge"), &big, 1, 0, 0);
        assert!(
            cache.get(digest(b"huge"), 1, 0).is_none(),
            "values over a tenth are not cached"
        );
    }

    #[test]
    fn only_the_exact_version_and_live_entries_hit() {
        let mut cache = ValueCache::new(1 << 20);
        cache.insert(digest(b"key"), b"v1", 10, 500, 0);
        assert_eq!(cache.get(digest(b"key"), 10, 100), Some(&b"v1"[..]));
        assert_eq!(cache.get(digest(b"key"), 11, 100), None, "another version");
        assert_eq!(cache.get(digest(b"key"), 10, 500), None, "expired");
        cache.remove(digest(b"key"));
        assert_eq!(cache.get(digest(b"key"), 10, 100), None);
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn hot_keys_survive_a_scan_of_cold_ones() {
        let value = vec![7u8; 100];
        let mut cache = ValueCache::new(200 * charge(100));
        let hot: Vec<String> = (0..50).map(|i| format!("h{i:03}")).collect();
        for round in 0..3 {
            for key in &hot {
                if cache.get(digest(key.as_bytes()), 1, 0).is_none() {
                    cache.insert(digest(key.as_bytes()), &value, 1, 0, 0);
                }
                let _ = cache.get(digest(key.as_bytes()), 1, 0);
            }
            let _ = round;
        }
        for i in 0..5_000 {
            let key = format!("c{i:03}");
            cache.insert(digest(key.as_bytes()), &value, 1, 0, 0);
        }
        let survivors = hot
            .iter()
            .filter(|k| cache.get(digest(k.as_bytes()), 1, 0).is_some())
            .count();
        assert!(
            survivors >= 45,
            "S3-FIFO keeps the hot set through a scan: {survivors}/50"
        );
    }
}
