//! Stall watch (issue 19): a shard that gets back to its tasks late, said with its cause.
//!
//! Each shard runs a probe that sleeps `PROBE` and measures how late it woke. Lateness of
//! `STALL` or more is a stall: every request of the shard waited that long too. The kernel's
//! per-thread scheduler accounting (`/proc/thread-self/schedstat`: time on a CPU, time runnable
//! but waiting for one) splits it three ways:
//! - `busy`: the thread was on its CPU: a task ran that long without yielding (the task queue
//!   that ran most is named: glommio's per-queue runtime);
//! - `cpu`: the thread was runnable and waited for a core (another thread had it: a load
//!   generator or another process on a shared core, or the core's interrupts);
//! - `blocked`: the thread slept in the kernel: a blocking syscall (an fdatasync or fallocate
//!   outside io_uring, a page fault that reads the disk, a lock), or the executor parked and
//!   was not woken in time.
//!
//! Each stall is counted in `tessera_shard_stall_seconds{cause}`, and logged at most once per
//! `LOG_EVERY` per shard (with the number left out since the last line). The probe costs a
//! timer and a 40-byte read of a proc file every `PROBE`.

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::TaskQueueHandle;

use crate::shard::Shard;

/// How long the probe sleeps between checks.
const PROBE: Duration = Duration::from_millis(5);
/// Lateness from which a wake-up is a stall (a request's p99 target is 2 ms; anything 10x that
/// is worth a line).
pub const STALL: Duration = Duration::from_millis(20);
/// At most one log line per shard this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// A thread's scheduler accounting: nanoseconds on a CPU, and runnable waiting for one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SchedStat {
    on_cpu_ns: u64,
    runnable_ns: u64,
}

impl SchedStat {
    /// Parses `/proc/*/schedstat`: "on-cpu-ns runqueue-ns timeslices".
    fn parse(text: &str) -> Option<SchedStat> {
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
        Some(SchedStat {
            on_cpu_ns: fields.next()??,
            runnable_ns: fields.next()??,
        })
    }

    fn read(file: &File) -> Option<SchedStat> {
        let mut buffer = [0u8; 96];
        let len = file.read_at(&mut buffer, 0).ok()?;
        SchedStat::parse(std::str::from_utf8(&buffer[..len]).ok()?)
    }
}

/// Why a stall happened, from the thread's accounting over the probe's interval.
fn cause(elapsed: Duration, delta: SchedStat) -> &'static str {
    let elapsed_ns = elapsed.as_nanos() as u64;
    let on_cpu = delta.on_cpu_ns;
    let runnable = delta.runnable_ns;
    let blocked = elapsed_ns.saturating_sub(on_cpu + runnable);
    if on_cpu >= runnable && on_cpu >= blocked {
        "busy"
    } else if runnable >= blocked {
        "cpu"
    } else {
        "blocked"
    }
}

/// Named task queues, to say which one ran during a stall.
pub struct Queues {
    named: Vec<(TaskQueueHandle, &'static str)>,
}

impl Queues {
    pub fn new() -> Queues {
        Queues { named: Vec::new() }
    }

    pub fn name(&mut self, handle: TaskQueueHandle, name: &'static str) {
        self.named.push((handle, name));
    }

    fn label(&self, handle: TaskQueueHandle) -> String {
        match self.named.iter().find(|(h, _)| *h == handle) {
            Some((_, name)) => (*name).to_string(),
            None => format!("{handle:?}"),
        }
    }
}

/// Runs the probe until the shard stops. Started on the shard's own thread (the proc file is
/// that thread's), in the default task queue, which is where requests run.
pub async fn watch(shard: Rc<Shard>, mut queues: Queues) {
    queues.name(glommio::executor().current_task_queue(), "default");
    let file = File::open("/proc/thread-self/schedstat").ok();
    let sample = || file.as_ref().and_then(SchedStat::read).unwrap_or_default();
    let logged = Cell::new(None::<Instant>);
    let mut left_out = 0u64;
    let _ = glommio::executor().all_task_queue_stats(Vec::new()); // starts the runtimes at 0
    while !shard.stopping.get() {
        let (start, before) = (Instant::now(), sample());
        glommio::timer::sleep(PROBE).await;
        let elapsed = start.elapsed();
        let late = elapsed.saturating_sub(PROBE);
        let runtimes = glommio::executor().all_task_queue_stats(Vec::new());
        if late < STALL {
            continue;
        }
        let after = sample();
        let delta = SchedStat {
            on_cpu_ns: after.on_cpu_ns.saturating_sub(before.on_cpu_ns),
            runnable_ns: after.runnable_ns.saturating_sub(before.runnable_ns),
        };
        let cause = cause(elapsed, delta);
        shard.metrics.stall(cause, late);
        if logged.get().is_some_and(|at| at.elapsed() < LOG_EVERY) {
            left_out += 1;
            continue;
        }
        logged.set(Some(Instant::now()));
        let busiest = runtimes.iter().max_by_key(|q| q.runtime());
        tracing::warn!(
            shard = shard.index,
            late_ms = late.as_millis() as u64,
            cause,
            on_cpu_ms = delta.on_cpu_ns / 1_000_000,
            waiting_for_cpu_ms = delta.runnable_ns / 1_000_000,
            busiest_queue = busiest.map(|q| queues.label(q.index())).unwrap_or_default(),
            busiest_queue_ms = busiest.map_or(0, |q| q.runtime().as_millis() as u64),
            stalls_not_logged = left_out,
            "the shard got back to its tasks late"
        );
        left_out = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_lines_parse() {
        assert_eq!(
            SchedStat::parse("350101758 432957 27\n"),
            Some(SchedStat {
                on_cpu_ns: 350_101_758,
                runnable_ns: 432_957
            })
        );
        assert_eq!(SchedStat::parse("x 1 2"), None);
        assert_eq!(SchedStat::parse(""), None);
    }

    #[test]
    fn the_largest_share_of_the_interval_is_the_cause() {
        let ms = |n: u64| n * 1_000_000;
        let elapsed = Duration::from_millis(50);
        let stat = |on_cpu, runnable| SchedStat {
            on_cpu_ns: ms(on_cpu),
            runnable_ns: ms(runnable),
        };
        assert_eq!(cause(elapsed, stat(45, 1)), "busy");
        assert_eq!(cause(elapsed, stat(2, 40)), "cpu");
        assert_eq!(cause(elapsed, stat(2, 3)), "blocked");
    }

    #[test]
    fn this_threads_accounting_is_readable() {
        let file = File::open("/proc/thread-self/schedstat").unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(20) {}
        let stat = SchedStat::read(&file).unwrap();
        assert!(stat.on_cpu_ns >= 10_000_000, "{stat:?}");
    }
}
