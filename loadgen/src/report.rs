//! Recording latencies (HDR histograms, microseconds) and the JSON result of a run.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::workload::Kind;

/// Highest latency a histogram holds: 60 s. Longer ones are clamped (and still counted).
const MAX_LATENCY_US: u64 = 60_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// What one worker (or a whole run, once merged) has seen.
#[derive(Clone)]
pub struct Recorder {
    pub all: Histogram<u64>,
    pub by_kind: [Histogram<u64>; 4],
    pub errors: BTreeMap<String, u64>,
    pub not_found: u64,
}

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Read => 0,
        Kind::Write => 1,
        Kind::Scan => 2,
        Kind::Batch => 3,
    }
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            all: new_histogram(),
            by_kind: std::array::from_fn(|_| new_histogram()),
            errors: BTreeMap::new(),
            not_found: 0,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, kind: Kind, latency_us: u64, outcome: &Result<bool, String>) {
        let latency_us = latency_us.clamp(1, MAX_LATENCY_US);
        self.all.record(latency_us).expect("clamped into range");
        self.by_kind[kind_index(kind)]
            .record(latency_us)
            .expect("clamped into range");
        match outcome {
            Ok(true) => {}
            Ok(false) => self.not_found += 1,
            Err(label) => *self.errors.entry(label.clone()).or_default() += 1,
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.all.add(&other.all).expect("same bounds");
        for (mine, theirs) in self.by_kind.iter_mut().zip(&other.by_kind) {
            mine.add(theirs).expect("same bounds");
        }
        for (label, count) in &other.errors {
            *self.errors.entry(label.clone()).or_default() += count;
        }
        self.not_found += other.not_found;
    }

    pub fn ops(&self) -> u64 {
        self.all.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    /// (percentile, latency) points for plotting, from p0 to p99.999 and the max.
    pub curve: Vec<(f64, u64)>,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        let at = |q: f64| {
            if histogram.is_empty() {
                0
            } else {
                histogram.value_at_quantile(q)
            }
        };
        let mut curve = Vec::new();
        if !histogram.is_empty() {
            // Ten points per "nine" up to 99.999 %.
            for step in 0..=50 {
                let nines = f64::from(step) / 10.0;
                let percentile = 100.0 * (1.0 - 10f64.powf(-nines));
                curve.push((percentile, histogram.value_at_quantile(percentile / 100.0)));
            }
            curve.push((100.0, histogram.max()));
        }
        Latency {
            count: histogram.len(),
            mean: if histogram.is_empty() {
                0.0
            } else {
                histogram.mean()
            },
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            p9999: at(0.9999),
            max: if histogram.is_empty() {
                0
            } else {
                histogram.max()
            },
            curve,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LatencyGroups {
    pub all: Latency,
    pub read: Latency,
    pub write: Latency,
    pub scan: Latency,
    pub batch: Latency,
}

/// The result of a run, as `--json` writes it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub backend: String,
    pub target: String,
    /// A name for plots and tables (`--label`, default backend and workload).
    pub label: String,
    pub workload: String,
    pub mode: String,
    pub connections: usize,
    pub pipeline: usize,
    pub rate_ops_s: Option<f64>,
    pub duration_s: f64,
    /// Operations completed, errors included.
    pub ops: u64,
    pub errors: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    pub not_found: u64,
    pub throughput_ops_s: f64,
    pub latency_us: LatencyGroups,
}

impl RunResult {
    pub fn summary(&self) -> String {
        let all = &self.latency_us.all;
        format!(
            "{}: {} ops in {:.1} s = {:.0} ops/s, errors {}, latency us p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
            self.label,
            self.ops,
            self.duration_s,
            self.throughput_ops_s,
            self.errors,
            all.p50,
            all.p90,
            all.p99,
            all.p999,
            all.p9999,
            all.max
        )
    }
}

pub fn groups(recorder: &Recorder) -> LatencyGroups {
    LatencyGroups {
        all: Latency::of(&recorder.all),
        read: Latency::of(&recorder.by_kind[0]),
        write: Latency::of(&recorder.by_kind[1]),
        scan: Latency::of(&recorder.by_kind[2]),
        batch: Latency::of(&recorder.by_kind[3]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_counts_add_up() {
        let mut recorder = Recorder::default();
        for i in 1..=10_000u64 {
            recorder.record(
                if i % 2 == 0 { Kind::Read } else { Kind::Write },
                i,
                &Ok(true),
            );
        }
        recorder.record(Kind::Read, 5, &Err("OVERLOADED".into()));
        let groups = groups(&recorder);
        let all = &groups.all;
        assert_eq!(all.count, 10_001);
        assert_eq!(groups.read.count + groups.write.count, all.count);
        assert!(all.p50 <= all.p90 && all.p90 <= all.p99 && all.p99 <= all.p999);
        assert!(all.p999 <= all.p9999 && all.p9999 <= all.max);
        assert!((4_990..=5_010).contains(&all.p50), "{}", all.p50);
        assert!(all
            .curve
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(recorder.error_count(), 1);
    }
}
