//! The value cache's eviction policy against plain LRU, by hit rate, on the same request streams:
//! `cargo run --release -p tessera-store --example cache_bench`.
//!
//! Streams (1 M keys of 1 KiB, cache of 10 % of them, 5 M requests): zipfian reads (theta 0.99,
//! YCSB's skew); the same with one request in ten from a sequential scan over all keys (a
//! backup or a full-table read); and the zipfian stream with its hot set moving every million
//! requests. LRU here is the textbook one (a hash map and a recency list), bounded in bytes the
//! same way, written in this example only to be measured against.

use std::collections::{HashMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use tessera_store::cache::ValueCache;

const KEYS: u64 = 1_000_000;
const REQUESTS: u64 = 5_000_000;
const VALUE: [u8; 1024] = [0; 1024];

/// LRU bounded in bytes: a recency queue with lazy deletion (generation per key).
struct Lru {
    capacity_bytes: usize,
    used_bytes: usize,
    generation: HashMap<u64, u64>,
    queue: VecDeque<(u64, u64)>,
    next: u64,
}

impl Lru {
    fn new(capacity_bytes: usize) -> Lru {
        Lru {
            capacity_bytes,
            used_bytes: 0,
            generation: HashMap::new(),
            queue: VecDeque::new(),
            next: 0,
        }
    }

    fn access(&mut self, key: u64, charge: usize) -> bool {
        self.next += 1;
        let hit = self.generation.insert(key, self.next).is_some();
        self.queue.push_back((key, self.next));
        if !hit {
            self.used_bytes += charge;
        }
        while self.used_bytes > self.capacity_bytes {
            let (old, generation) = self.queue.pop_front().expect("non-empty while over budget");
            if self.generation.get(&old) == Some(&generation) {
                self.generation.remove(&old);
                self.used_bytes -= charge;
            }
        }
        hit
    }
}

fn key_bytes(key: u64) -> [u8; 8] {
    key.to_le_bytes()
}

/// Hit rates (S3-FIFO, LRU) over a stream of key ids.
fn run(stream: impl Iterator<Item = u64>) -> (f64, f64) {
    let charge = VALUE.len() + tessera_store::cache::ENTRY_OVERHEAD_BYTES;
    let capacity = (KEYS as usize / 10) * charge;
    let mut s3 = ValueCache::new(capacity);
    let mut lru = Lru::new(capacity);
    let (mut s3_hits, mut lru_hits, mut requests) = (0u64, 0u64, 0u64);
    for key in stream {
        requests += 1;
        let digest = tessera_store::digest(&key_bytes(key));
        if s3.get(digest, 1, 0).is_some() {
            s3_hits += 1;
        } else {
            s3.insert(digest, &VALUE, 1, 0, 0);
        }
        lru_hits += u64::from(lru.access(key, charge));
    }
    (
        s3_hits as f64 / requests as f64,
        lru_hits as f64 / requests as f64,
    )
}

fn zipfian(seed: u64) -> impl Iterator<Item = u64> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let zipf = Zipf::new(KEYS, 0.99).expect("valid zipf");
    // Scramble ranks so that hot keys are spread over the key space, as YCSB does.
    (0..REQUESTS)
        .map(move |_| (zipf.sample(&mut rng) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS)
}

fn main() {
    println!(
        "{:<44}{:>10}{:>10}",
        "stream (cache holds 10 % of 1 M keys)", "S3-FIFO", "LRU"
    );
    let report = |name: &str, (s3, lru): (f64, f64)| {
        println!("{name:<44}{:>9.1}%{:>9.1}%", s3 * 100.0, lru * 100.0)
    };
    report("zipfian 0.99", run(zipfian(1)));
    let mut scan_position = 0u64;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
    let scanned = zipfian(2).map(move |key| {
        if rng.gen_range(0..10) == 0 {
            scan_position = (scan_position + 1) % KEYS;
            scan_position
        } else {
            key
        }
    });
    report("zipfian with 10 % sequential scan", run(scanned));
    let shifting = zipfian(3)
        .enumerate()
        .map(|(i, key)| (key + (i as u64 / 1_000_000) * 7919) % KEYS);
    report("zipfian, hot set moving every 1 M requests", run(shifting));
}
