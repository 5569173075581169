//! Workloads: what operations to send, on which keys, with which value sizes. Sans-IO and
//! deterministic: a worker's stream depends only on `--seed` and the worker's index, so both
//! backends of a comparison get exactly the same operations.
//!
//! | workload | mix | keys |
//! |---|---|---|
//! | getset | `--read-ratio` GETs, the rest SETs of `--value-size` bytes | `--distribution` (uniform) |
//! | seed | the brief: 70 % reads, 30 % writes, 20 % of requests are batches of 10; value sizes 30 % <100 B, 40 % 100 B-1 KiB, 20 % 1-10 KiB, 8 % 10-100 KiB, 2 % 100 KiB-1 MiB | zipfian |
//! | ycsb-a | 50 % read, 50 % update | zipfian |
//! | ycsb-b | 95 % read, 5 % update | zipfian |
//! | ycsb-c | 100 % read | zipfian |
//! | ycsb-d | 95 % read, 5 % insert | latest |
//! | ycsb-e | 95 % scan (1-100 keys), 5 % insert | zipfian |
//! | ycsb-f | 50 % read, 50 % read-modify-write | zipfian |
//!
//! YCSB's records have ten 100-byte fields; here a record is one value of `--value-size` bytes
//! (default 1 KiB, the same total). `--distribution` overrides the key choice of any workload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::keydist::{Distribution, KeyChooser};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadName {
    Getset,
    Seed,
    YcsbA,
    YcsbB,
    YcsbC,
    YcsbD,
    YcsbE,
    YcsbF,
}

/// One operation. Keys are ids; the backend formats them (`key_bytes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Read(u64),
    Update {
        key: u64,
        value_len: usize,
    },
    Insert {
        key: u64,
        value_len: usize,
    },
    Scan {
        start: u64,
        count: usize,
    },
    ReadModifyWrite {
        key: u64,
        value_len: usize,
    },
    /// Reads and updates sent as one request.
    Batch(Vec<Op>),
}

/// The kind an operation's latency is recorded under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Scan,
    Batch,
}

impl Op {
    pub fn kind(&self) -> Kind {
        match self {
            Op::Read(_) => Kind::Read,
            Op::Update { .. } | Op::Insert { .. } | Op::ReadModifyWrite { .. } => Kind::Write,
            Op::Scan { .. } => Kind::Scan,
            Op::Batch(_) => Kind::Batch,
        }
    }
}

/// Value sizes.
#[derive(Clone, Copy, Debug)]
pub enum ValueSize {
    Fixed(usize),
    /// The brief's mix (DESIGN.md).
    SeedMix,
}

impl ValueSize {
    fn sample(self, rng: &mut SmallRng) -> usize {
        match self {
            ValueSize::Fixed(bytes) => bytes,
            ValueSize::SeedMix => {
                let (low, high) = match rng.gen_range(0..100) {
                    0..=29 => (1, 100),
                    30..=69 => (100, 1024),
                    70..=89 => (1024, 10 * 1024),
                    90..=97 => (10 * 1024, 100 * 1024),
                    _ => (100 * 1024, 1024 * 1024),
                };
                rng.gen_range(low..=high)
            }
        }
    }

    /// The largest value this size policy produces.
    pub fn max_bytes(self) -> usize {
        match self {
            ValueSize::Fixed(bytes) => bytes,
            ValueSize::SeedMix => 1024 * 1024,
        }
    }
}

/// Proportions of each operation, in percent, and the rest of a workload's definition.
#[derive(Clone, Debug)]
pub struct Spec {
    pub read_pct: f64,
    pub update_pct: f64,
    pub insert_pct: f64,
    pub scan_pct: f64,
    pub rmw_pct: f64,
    /// Share of requests sent as batches of `batch_size`.
    pub batch_pct: f64,
    pub batch_size: usize,
    pub scan_max: usize,
    pub distribution: Distribution,
    pub values: ValueSize,
}

impl Spec {
    pub fn new(name: WorkloadName, read_ratio: f64, value_size: usize) -> Spec {
        let base = Spec {
            read_pct: 0.0,
            update_pct: 0.0,
            insert_pct: 0.0,
            scan_pct: 0.0,
            rmw_pct: 0.0,
            batch_pct: 0.0,
            batch_size: 10,
            scan_max: 100,
            distribution: Distribution::Zipfian,
            values: ValueSize::Fixed(value_size),
        };
        match name {
            WorkloadName::Getset => Spec {
                read_pct: read_ratio * 100.0,
                update_pct: (1.0 - read_ratio) * 100.0,
                distribution: Distribution::Uniform,
                ..base
            },
            WorkloadName::Seed => Spec {
                read_pct: 70.0,
                update_pct: 30.0,
                batch_pct: 20.0,
                values: ValueSize::SeedMix,
                ..base
            },
            WorkloadName::YcsbA => Spec {
                read_pct: 50.0,
                update_pct: 50.0,
                ..base
            },
            WorkloadName::YcsbB => Spec {
                read_pct: 95.0,
                update_pct: 5.0,
                ..base
            },
            WorkloadName::YcsbC => Spec {
                read_pct: 100.0,
                ..base
            },
            WorkloadName::YcsbD => Spec {
                read_pct: 95.0,
                insert_pct: 5.0,
                distribution: Distribution::Latest,
                ..base
            },
            WorkloadName::YcsbE => Spec {
                scan_pct: 95.0,
                insert_pct: 5.0,
                ..base
            },
            WorkloadName::YcsbF => Spec {
                read_pct: 50.0,
                rmw_pct: 50.0,
                ..base
            },
        }
    }
}

impl Spec {
    /// A value size drawn from this workload's size policy (used by the load phase).
    pub fn sample_value_len(&self, rng: &mut SmallRng) -> usize {
        self.values.sample(rng)
    }
}

/// One worker's operation stream.
pub struct Generator {
    spec: Arc<Spec>,
    rng: SmallRng,
    keys: KeyChooser,
    /// Keys that exist: 0..key_count. Inserts take the next id; shared by all workers.
    key_count: Arc<AtomicU64>,
}

impl Generator {
    pub fn new(
        spec: Arc<Spec>,
        seed: u64,
        worker: u64,
        chooser: KeyChooser,
        key_count: Arc<AtomicU64>,
    ) -> Generator {
        let rng = SmallRng::seed_from_u64(seed ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Generator {
            spec,
            rng,
            keys: chooser,
            key_count,
        }
    }

    fn existing_key(&mut self) -> u64 {
        let count = self.key_count.load(Ordering::Relaxed);
        self.keys.choose(&mut self.rng, count)
    }

    fn single(&mut self, allow_scan_insert: bool) -> Op {
        let spec = self.spec.clone();
        let mut roll = self.rng.gen_range(0.0..100.0);
        let value_len = spec.values.sample(&mut self.rng);
        for (pct, make) in [
            (spec.read_pct, 0),
            (spec.update_pct, 1),
            (spec.insert_pct, 2),
            (spec.scan_pct, 3),
            (spec.rmw_pct, 4),
        ] {
            if roll < pct {
                return match make {
                    0 => Op::Read(self.existing_key()),
                    1 => Op::Update {
                        key: self.existing_key(),
                        value_len,
                    },
                    2 if allow_scan_insert => Op::Insert {
                        key: self.key_count.fetch_add(1, Ordering::Relaxed),
                        value_len,
                    },
                    3 if allow_scan_insert => {
                        let count = self.rng.gen_range(1..=spec.scan_max);
                        Op::Scan {
                            start: self.existing_key(),
                            count,
                        }
                    }
                    4 => Op::ReadModifyWrite {
                        key: self.existing_key(),
                        value_len,
                    },
                    _ => Op::Read(self.existing_key()),
                };
            }
            roll -= pct;
        }
        Op::Read(self.existing_key())
    }

    pub fn next_op(&mut self) -> Op {
        if self.spec.batch_pct > 0.0 && self.rng.gen_range(0.0..100.0) < self.spec.batch_pct {
            let size = self.spec.batch_size;
            return Op::Batch((0..size).map(|_| self.single(false)).collect());
        }
        self.single(true)
    }
}

/// The key bytes of key id `id`: "user" and the id, zero-padded to `key_size` bytes (YCSB style).
pub fn key_bytes(id: u64, key_size: usize) -> Vec<u8> {
    let width = key_size.saturating_sub(4).max(1);
    format!("user{id:0width$}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(name: WorkloadName, seed: u64, n: usize) -> Vec<Op> {
        let spec = Arc::new(Spec::new(name, 0.9, 1024));
        let count = Arc::new(AtomicU64::new(1000));
        let chooser = KeyChooser::new(spec.distribution, 1000);
        let mut generator = Generator::new(spec, seed, 0, chooser, count);
        (0..n).map(|_| generator.next_op()).collect()
    }

    #[test]
    fn streams_are_reproducible() {
        assert_eq!(
            ops(WorkloadName::Seed, 7, 500),
            ops(WorkloadName::Seed, 7, 500)
        );
        assert_ne!(
            ops(WorkloadName::Seed, 7, 500),
            ops(WorkloadName::Seed, 8, 500)
        );
    }

    #[test]
    fn mixes_match_their_definitions() {
        let stream = ops(WorkloadName::YcsbA, 1, 20_000);
        let reads = stream.iter().filter(|o| matches!(o, Op::Read(_))).count();
        assert!((9_500..10_500).contains(&reads), "{reads}");
        let stream = ops(WorkloadName::Seed, 1, 20_000);
        let batches = stream.iter().filter(|o| matches!(o, Op::Batch(_))).count();
        assert!((3_700..4_300).contains(&batches), "{batches}");
        let e = ops(WorkloadName::YcsbE, 1, 10_000);
        assert!(e.iter().filter(|o| matches!(o, Op::Scan { .. })).count() > 9_000);
        assert!(e
            .iter()
            .any(|o| matches!(o, Op::Insert { key, .. } if *key >= 1000)));
        let f = ops(WorkloadName::YcsbF, 1, 1000);
        assert!(f.iter().any(|o| matches!(o, Op::ReadModifyWrite { .. })));
    }

    #[test]
    fn seed_value_sizes_follow_the_brief() {
        let mut rng = SmallRng::seed_from_u64(5);
        let sizes: Vec<usize> = (0..100_000)
            .map(|_| ValueSize::SeedMix.sample(&mut rng))
            .collect();
        let share = |low: usize, high: usize| {
            sizes.iter().filter(|&&s| s >= low && s < high).count() as f64 / 1000.0
        };
        assert!((28.0..32.0).contains(&share(0, 100)));
        assert!((1.5..2.5).contains(&share(100 * 1024, usize::MAX)));
        assert!(sizes.iter().all(|&s| s <= 1024 * 1024));
    }

    #[test]
    fn keys_have_the_requested_size() {
        assert_eq!(key_bytes(42, 48).len(), 48);
        assert_eq!(key_bytes(42, 48), format!("user{:044}", 42).into_bytes());
    }
}
