//! The in-memory index of one vnode: a key's digest -> where its newest record lives.
//!
//! Keys are not kept in memory. The index holds a 128-bit digest of each key (xxh3-128), so an
//! entry costs 36 bytes whatever the key's length, and a read checks the key it finds on disk
//! against the one it asked for (`store::finish_read`). Two different keys with one digest
//! would share an entry; at 128 bits the chance is about n^2 / 2^129 (10^-25 for 10 M keys of a
//! shard), the same trade Aerospike makes with its 160-bit digests. The price of not keeping
//! keys is paid by SCAN, which reads each listed key back from the log (`Store::scan`).
//!
//! The table is an ordered linear-probing hash table: a digest's home slot is its top 64 bits
//! scaled to the table (`home`), which is monotone in the digest, and entries are kept sorted by
//! digest along the array with no empty slot between an entry and its home (insertion shifts a
//! run right, removal shifts it back left). That gives:
//! - point lookups that stop at the first empty slot or larger digest (a few slots on average at
//!   the maximum load of 85 %);
//! - iteration in digest order from any digest, which is what a SCAN cursor or the TTL sweep
//!   needs, stable across inserts, removals and resizes;
//! - no allocation per key: one array per vnode, grown by 1.25x (any size works, the home
//!   mapping is a multiply, not a mask), so memory stays within 68-85 % load after growth.
//!   The array has a little slack past the last home slot instead of wrapping around.
//!
//! Measured by `examples/store_bench.rs` at 10 M keys (BENCHMARKS.md).

/// A key's identity in the index.
pub type Digest = u128;

pub fn digest(key: &[u8]) -> Digest {
    xxhash_rust::xxh3::xxh3_128(key)
}

/// Where a key's newest record lives, and what the index must know without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub segment: u32,
    pub offset: u32,
    pub record_len: u32,
    pub version: u64,
    /// Unix milliseconds; 0 = never expires. The table keeps only whether it is 0; the store
    /// keeps the expiries of keys that have one beside the index.
    pub expiry_ms: u64,
}

impl Entry {
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expiry_ms == 0 || now_ms < self.expiry_ms
    }
}

/// Bit of `Slot::len_flags` set when the key has an expiry.
const HAS_EXPIRY: u32 = 1 << 31;
/// Most entries per home slot before the table grows.
const MAX_LOAD: f64 = 0.85;
/// Below this load (and above the minimum size) the table shrinks.
const MIN_LOAD: f64 = 0.25;
const MIN_HOME_SLOTS: usize = 16;
/// The load a table is trimmed to after a bulk load when growing by 2x left it under
/// `MIN_FIT_LOAD`: room for 6 % more keys before it grows.
const FIT_LOAD: f64 = 0.8;
/// 1.25x growth keeps tables above this load; a bulk load that ends above it is not trimmed.
const MIN_FIT_LOAD: f64 = 0.68;
/// The load `reserve` sizes for: under `MAX_LOAD`, above `MIN_FIT_LOAD`.
const RESERVE_LOAD: f64 = 0.75;

/// One slot: 36 bytes, 4-aligned. `len_flags == 0` marks an empty slot (no record has length 0).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed(4))]
struct Slot {
    digest: Digest,
    version: u64,
    segment: u32,
    offset: u32,
    /// Record length in the low 31 bits, `HAS_EXPIRY` on top.
    len_flags: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 36);

impl Slot {
    fn is_empty(&self) -> bool {
        self.len_flags == 0
    }

    fn entry(&self) -> Entry {
        Entry {
            segment: self.segment,
            offset: self.offset,
            record_len: self.len_flags & !HAS_EXPIRY,
            version: self.version,
            expiry_ms: u64::from(self.len_flags & HAS_EXPIRY != 0),
        }
    }

    fn new(digest: Digest, entry: &Entry) -> Slot {
        assert!(entry.record_len != 0 && entry.record_len & HAS_EXPIRY == 0);
        let flag = if entry.expiry_ms != 0 { HAS_EXPIRY } else { 0 };
        Slot {
            digest,
            version: entry.version,
            segment: entry.segment,
            offset: entry.offset,
            len_flags: entry.record_len | flag,
        }
    }
}

/// What `VnodeIndex::apply` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The entry is newer than the record: nothing changed.
    Stale,
    /// The record was applied; this is the entry it replaced or removed.
    Replaced(Option<Entry>),
}

/// The index of one vnode. Entries it returns carry `expiry_ms` 1 for "has an expiry" and 0
/// for none; the store substitutes the real expiry.
#[derive(Clone, Debug)]
pub struct VnodeIndex {
    slots: Vec<Slot>,
    home_slots: usize,
    len: usize,
    /// Grow by 2x instead of 1.25x: set while recovery loads the whole index, when copying the
    /// table at every growth cost 40 % of the replay; `fit` then trims the table once.
    bulk_load: bool,
}

impl Default for VnodeIndex {
    /// An empty index holds no memory: a store has a table per vnode of the cluster (up to
    /// 65 536), most of them empty on a node that holds a few of them.
    fn default() -> Self {
        VnodeIndex {
            slots: Vec::new(),
            home_slots: 0,
            len: 0,
            bulk_load: false,
        }
    }
}

fn slack(home_slots: usize) -> usize {
    home_slots / 64 + 16
}

impl VnodeIndex {
    pub fn new() -> VnodeIndex {
        VnodeIndex::default()
    }

    fn with_home_slots(home_slots: usize) -> VnodeIndex {
        VnodeIndex {
            slots: vec![Slot::default(); home_slots + slack(home_slots)],
            home_slots,
            len: 0,
            bulk_load: false,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory the table holds.
    pub fn allocated_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    fn home(&self, digest: Digest) -> usize {
        let top = (digest >> 64) as u64;
        ((u128::from(top) * self.home_slots as u128) >> 64) as usize
    }

    /// `Ok(position)` of the digest, or `Err(position)` where it belongs.
    fn find(&self, digest: Digest) -> Result<usize, usize> {
        let mut at = self.home(digest);
        while let Some(slot) = self.slots.get(at) {
            if slot.is_empty() {
                return Err(at);
            }
            let found = slot.digest;
            if found >= digest {
                return if found == digest { Ok(at) } else { Err(at) };
            }
            at += 1;
        }
        Err(at)
    }

    /// Starts loading the digest's home slot into the CPU cache, so that a batch of lookups
    /// waits for memory once instead of once per lookup (recovery, `Recovery::add_segment`).
    pub fn prefetch(&self, digest: Digest) {
        if let Some(slot) = self.slots.get(self.home(digest)) {
            prefetch_read(std::ptr::from_ref(slot).cast());
        }
    }

    pub fn get(&self, digest: Digest) -> Option<Entry> {
        self.find(digest).ok().map(|at| self.slots[at].entry())
    }

    /// Sets the digest's entry; returns the one it replaced. (The store goes through `apply`;
    /// this and `remove` are the map operations the tests check the table with.)
    #[cfg(test)]
    pub fn insert(&mut self, digest: Digest, entry: &Entry) -> Option<Entry> {
        let slot = Slot::new(digest, entry);
        match self.find(digest) {
            Ok(at) => Some(std::mem::replace(&mut self.slots[at], slot).entry()),
            Err(at) => {
                self.insert_new(at, slot);
                None
            }
        }
    }

    /// Applies a record to the digest's entry with one probe: a record (or a tombstone, when
    /// `tombstone`) older than the entry changes nothing.
    pub fn apply(&mut self, digest: Digest, tombstone: bool, entry: &Entry) -> Applied {
        match self.find(digest) {
            Ok(at) if { self.slots[at].version } > entry.version => Applied::Stale,
            Ok(at) if tombstone => Applied::Replaced(Some(self.remove_at(at))),
            Ok(at) => {
                let slot = Slot::new(digest, entry);
                Applied::Replaced(Some(std::mem::replace(&mut self.slots[at], slot).entry()))
            }
            Err(_) if tombstone => Applied::Replaced(None),
            Err(at) => {
                self.insert_new(at, Slot::new(digest, entry));
                Applied::Replaced(None)
            }
        }
    }

    /// Inserts a digest that `find` placed at `at`.
    fn insert_new(&mut self, at: usize, slot: Slot) {
        if (self.len + 1) as f64 > MAX_LOAD * self.home_slots as f64 || !self.insert_at(at, slot) {
            self.resize(self.grown_home_slots());
            let at = self.find(slot.digest).expect_err("not present");
            assert!(self.insert_at(at, slot), "room after growing");
        }
        self.len += 1;
    }

    /// Makes room for about `keys` entries without growing (a bulk load's estimate).
    pub fn reserve(&mut self, keys: usize) {
        let home_slots = (keys as f64 / RESERVE_LOAD) as usize;
        if home_slots > self.home_slots {
            self.resize(home_slots);
        }
    }

    /// Bytes the table would add to insert one more digest (0 unless it must grow).
    pub fn insert_growth_bytes(&self) -> usize {
        if (self.len + 1) as f64 <= MAX_LOAD * self.home_slots as f64 {
            return 0;
        }
        let grown = self.grown_home_slots();
        (grown + slack(grown)) * std::mem::size_of::<Slot>() - self.allocated_bytes()
    }

    fn grown_home_slots(&self) -> usize {
        let growth = if self.bulk_load {
            self.home_slots
        } else {
            self.home_slots / 4
        };
        (self.home_slots + growth).max(MIN_HOME_SLOTS)
    }

    /// Starts or ends a bulk load; ending one trims a table that growing by 2x left under
    /// `FIT_LOAD` back to that load.
    pub fn set_bulk_load(&mut self, bulk_load: bool) {
        self.bulk_load = bulk_load;
        let load = self.len as f64 / self.home_slots as f64;
        if !bulk_load && load < MIN_FIT_LOAD && self.home_slots > MIN_HOME_SLOTS {
            self.resize(((self.len as f64 / FIT_LOAD) as usize).max(MIN_HOME_SLOTS));
        }
    }

    /// Shifts the run at `at` right by one and puts `slot` at `at`; false when the run reaches
    /// the end of the array.
    fn insert_at(&mut self, at: usize, slot: Slot) -> bool {
        let Some(gap) = self.slots[at..].iter().position(Slot::is_empty) else {
            return false;
        };
        self.slots.copy_within(at..at + gap, at + 1);
        self.slots[at] = slot;
        true
    }

    #[cfg(test)]
    pub fn remove(&mut self, digest: Digest) -> Option<Entry> {
        let at = self.find(digest).ok()?;
        Some(self.remove_at(at))
    }

    fn remove_at(&mut self, at: usize) -> Entry {
        let removed = self.slots[at].entry();
        // Shift back the entries after it that sit past their home, closing the gap.
        let mut hole = at;
        while let Some(next) = self.slots.get(hole + 1) {
            if next.is_empty() || self.home(next.digest) > hole {
                break;
            }
            self.slots[hole] = *next;
            hole += 1;
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
        if self.len == 0 {
            // An emptied vnode gives its memory back.
            let bulk_load = self.bulk_load;
            *self = VnodeIndex::default();
            self.bulk_load = bulk_load;
        } else if (self.len as f64) < MIN_LOAD * self.home_slots as f64
            && self.home_slots > MIN_HOME_SLOTS
        {
            let target = ((self.len as f64 / 0.6) as usize).max(MIN_HOME_SLOTS);
            self.resize(target);
        }
        removed
    }

    /// Rebuilds the table with `home_slots` home slots, keeping the order.
    fn resize(&mut self, home_slots: usize) {
        let mut home_slots = home_slots;
        loop {
            let mut next = VnodeIndex::with_home_slots(home_slots);
            next.bulk_load = self.bulk_load;
            if next.fill_from(&self.slots) {
                next.len = self.len;
                *self = next;
                return;
            }
            home_slots = next.grown_home_slots();
        }
    }

    /// Places `slots`' entries (in digest order) into this empty table; false if they run off
    /// the end.
    fn fill_from(&mut self, slots: &[Slot]) -> bool {
        let mut next_free = 0;
        for slot in slots.iter().filter(|s| !s.is_empty()) {
            let at = self.home(slot.digest).max(next_free);
            let Some(target) = self.slots.get_mut(at) else {
                return false;
            };
            *target = *slot;
            next_free = at + 1;
        }
        true
    }

    /// Entries in digest order, starting after `after` (from the first when `None`).
    pub fn iter_after(&self, after: Option<Digest>) -> impl Iterator<Item = (Digest, Entry)> + '_ {
        let start = match after {
            None => 0,
            Some(digest) => match self.find(digest) {
                Ok(at) => at + 1,
                Err(at) => at,
            },
        };
        self.slots[start.min(self.slots.len())..]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| (s.digest, s.entry()))
    }
}

#[allow(unsafe_code)]
fn prefetch_read(address: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint to the cache: it never faults, never changes memory and
    // reads nothing into the program (the address is a live slot anyway). SSE is baseline on
    // x86-64.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(address)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};

    use super::*;

    fn entry(n: u32) -> Entry {
        Entry {
            segment: n,
            offset: n * 2,
            record_len: 33 + n % 1000,
            version: u64::from(n) << 20,
            expiry_ms: u64::from(n.is_multiple_of(3)),
        }
    }

    /// Random inserts, overwrites and removals against a BTreeMap, with small digest spaces so
    /// that runs collide and shift, and a check of order and lookups after every step.
    #[test]
    fn behaves_like_an_ordered_map() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for round in 0..20 {
            let mut index = VnodeIndex::new();
            let mut model = BTreeMap::new();
            // Narrow digest spaces cluster keys at a few homes.
            let space: u128 = if round % 2 == 0 { 64 } else { 1 << 20 };
            for step in 0..3000u32 {
                let digest = (rng.gen::<u128>() % space) << (128 - 22) | (step as u128 % 3);
                if rng.gen_bool(0.35) {
                    assert_eq!(index.remove(digest), model.remove(&digest));
                } else {
                    let e = entry(step);
                    assert_eq!(index.insert(digest, &e), model.insert(digest, e));
                }
                assert_eq!(index.len(), model.len());
                if step % 97 == 0 {
                    let all: Vec<_> = index.iter_after(None).collect();
                    let expected: Vec<_> = model.iter().map(|(d, e)| (*d, *e)).collect();
                    assert_eq!(all, expected, "round {round} step {step}");
                    for (d, e) in &model {
                        assert_eq!(index.get(*d), Some(*e));
                    }
                }
            }
        }
    }

    #[test]
    fn iterates_from_any_digest_in_order() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let mut index = VnodeIndex::new();
        let mut model = BTreeMap::new();
        for n in 0..5000 {
            let digest = rng.gen::<u128>();
            index.insert(digest, &entry(n));
            model.insert(digest, entry(n));
        }
        for _ in 0..200 {
            let from = rng.gen::<u128>();
            let got: Vec<_> = index
                .iter_after(Some(from))
                .map(|(d, _)| d)
                .take(20)
                .collect();
            let want: Vec<_> = model
                .range((std::ops::Bound::Excluded(from), std::ops::Bound::Unbounded))
                .map(|(d, _)| *d)
                .take(20)
                .collect();
            assert_eq!(got, want);
        }
        // From an existing digest: strictly after it.
        let (&first, _) = model.iter().next().expect("entries");
        assert_eq!(
            index.iter_after(Some(first)).next().map(|(d, _)| d),
            model.keys().nth(1).copied()
        );
    }

    #[test]
    fn a_bulk_load_grows_fast_then_fits() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let mut index = VnodeIndex::new();
        index.set_bulk_load(true);
        let digests: Vec<u128> = (0..50_000).map(|_| rng.gen()).collect();
        for (n, d) in digests.iter().enumerate() {
            index.insert(*d, &entry(n as u32));
        }
        index.set_bulk_load(false);
        let per_key = index.allocated_bytes() as f64 / index.len() as f64;
        assert!(
            per_key <= 36.0 / MIN_FIT_LOAD * 1.03,
            "{per_key} bytes per key"
        );
        for (n, d) in digests.iter().enumerate() {
            assert_eq!(index.get(*d), Some(entry(n as u32)));
        }
        // Back to 1.25x growth.
        let before = index.allocated_bytes();
        for n in 0..5_000u32 {
            index.insert(rng.gen(), &entry(n));
        }
        assert!(index.allocated_bytes() < before * 3 / 2);
    }

    #[test]
    fn grows_and_shrinks_within_its_load_bounds() {
        let mut index = VnodeIndex::new();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let digests: Vec<u128> = (0..100_000).map(|_| rng.gen()).collect();
        for (n, d) in digests.iter().enumerate() {
            index.insert(*d, &entry(n as u32));
        }
        let per_key = index.allocated_bytes() as f64 / index.len() as f64;
        assert!(per_key < 36.0 / 0.6, "{per_key} bytes per key");
        for d in &digests[1000..] {
            index.remove(*d);
        }
        assert_eq!(index.len(), 1000);
        let per_key = index.allocated_bytes() as f64 / index.len() as f64;
        assert!(
            per_key < 36.0 / 0.2,
            "{per_key} bytes per key after removals"
        );
        for (n, d) in digests[..1000].iter().enumerate() {
            assert_eq!(index.get(*d), Some(entry(n as u32)));
        }
    }
}
