//! `--cpuset LIST`: the cores a node's shards run on, as Seastar's `--cpuset`, so that several
//! nodes and a load generator can share one machine on disjoint cores.
//!
//! LIST is comma-separated CPU numbers and ranges (`0-3,8,10-11`). Shard i runs on the i-th
//! CPU of the set (wrapping when there are more shards than CPUs), and without `--shards` a new
//! data directory gets one shard per CPU of the set. Every CPU must be one this process may
//! run on (its affinity mask, so a `taskset` or cgroup limit is honoured): a CPU outside it
//! stops startup rather than leaving a shard unpinned.

use std::fmt;
use std::str::FromStr;

/// The highest CPU number accepted (the kernel's default `CONFIG_NR_CPUS` ceiling).
const MAX_CPU: usize = 8191;

/// A set of CPUs, sorted, without repeats, never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSet {
    cpus: Vec<usize>,
    text: String,
}

impl CpuSet {
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// The CPU shard `index` runs on.
    pub fn cpu_of_shard(&self, index: u16) -> usize {
        self.cpus[usize::from(index) % self.cpus.len()]
    }

    /// Refuses CPUs this process may not run on (`allowed`: `allowed_cpus()`).
    pub fn check_allowed(&self, allowed: &[usize]) -> Result<(), String> {
        let outside: Vec<String> = self
            .cpus
            .iter()
            .filter(|cpu| !allowed.contains(cpu))
            .map(usize::to_string)
            .collect();
        if outside.is_empty() {
            return Ok(());
        }
        Err(format!(
            "--cpuset {}: CPU {} is not one this process may run on (allowed: {})",
            self.text,
            outside.join(", "),
            format_list(allowed)
        ))
    }
}

impl FromStr for CpuSet {
    type Err = String;

    fn from_str(text: &str) -> Result<CpuSet, String> {
        let mut cpus = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (low, high) = match part.split_once('-') {
                Some((low, high)) => (cpu_number(low)?, cpu_number(high)?),
                None => (cpu_number(part)?, cpu_number(part)?),
            };
            if low > high {
                return Err(format!("the range {part} runs backwards"));
            }
            cpus.extend(low..=high);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuSet {
            cpus,
            text: text.to_string(),
        })
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn cpu_number(text: &str) -> Result<usize, String> {
    let cpu: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a CPU number (expected a list like 0-3,8)"))?;
    if cpu > MAX_CPU {
        return Err(format!(
            "CPU {cpu} is past the highest CPU number, {MAX_CPU}"
        ));
    }
    Ok(cpu)
}

/// The CPUs this process may run on: the kernel's `Cpus_allowed_list` of this process (its
/// affinity mask, in the same list syntax), or every online CPU if that cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    let listed = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            line.trim().parse::<CpuSet>().ok()
        });
    match listed {
        Some(set) => set.cpus,
        None => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// `0-3,8` for [0, 1, 2, 3, 8].
fn format_list(cpus: &[usize]) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut at = 0;
    while at < cpus.len() {
        let start = cpus[at];
        while at + 1 < cpus.len() && cpus[at + 1] == cpus[at] + 1 {
            at += 1;
        }
        runs.push(match cpus[at] == start {
            true => start.to_string(),
            false => format!("{start}-{}", cpus[at]),
        });
        at += 1;
    }
    runs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse_sorted_without_repeats() {
        let set: CpuSet = "8,0-3, 2,10-11".parse().unwrap();
        assert_eq!(set.cpus(), &[0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(set.to_string(), "8,0-3, 2,10-11");
        assert_eq!(set.cpu_of_shard(4), 8);
        assert_eq!(set.cpu_of_shard(7), 0, "more shards than CPUs wrap around");
        assert_eq!(format_list(set.cpus()), "0-3,8,10-11");
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        for (text, reason) in [
            ("", "not a CPU number"),
            ("3-1", "backwards"),
            ("a", "not a CPU number"),
            ("0,,1", "not a CPU number"),
            ("99999", "highest CPU"),
        ] {
            let error = text.parse::<CpuSet>().unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn cpus_outside_the_affinity_mask_are_refused() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        let inside: CpuSet = allowed[0].to_string().parse().unwrap();
        assert_eq!(inside.check_allowed(&allowed), Ok(()));
        let outside: CpuSet = "8191".parse().unwrap();
        let error = outside.check_allowed(&allowed).unwrap_err();
        assert!(error.contains("CPU 8191 is not one"), "{error}");
    }
}
