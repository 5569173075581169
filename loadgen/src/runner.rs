//! Driving a backend: closed loop (`--connections C --pipeline P`: C connections, each with P
//! requests in flight) or open loop (`--rate R`: requests sent on a fixed schedule).
//!
//! Open loop corrects coordinated omission as wrk2 does: each worker has a schedule of intended
//! send times, and a request's latency counts from its intended time whenever the worker fell
//! behind that schedule because an earlier request was slow. A stalled server therefore shows its
//! stall in every request that should have been sent during it, not in one. When the worker was
//! idle and merely woke late (timer granularity is about 1 ms), latency counts from the actual
//! send, so client-side timer slop is not charged to the server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::backend::{Conn, Options, Values};
use crate::keydist::KeyChooser;
use crate::report::Recorder;
use crate::workload::{Generator, Op, Spec};

pub struct RunPlan {
    pub connections: usize,
    pub pipeline: usize,
    pub rate_ops_s: Option<f64>,
    pub duration: Option<Duration>,
    pub max_ops: Option<u64>,
    pub seed: u64,
    pub live: bool,
}

/// Outcome of the measured phase.
pub struct Measured {
    pub recorder: Recorder,
    pub elapsed: Duration,
}

struct Shared {
    values: Arc<Values>,
    options: Arc<Options>,
    issued: AtomicU64,
    stop: AtomicBool,
    max_ops: u64,
    deadline: Option<Instant>,
}

impl Shared {
    /// Claims the right to send one more operation.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        self.issued.fetch_add(1, Ordering::Relaxed) < self.max_ops
    }
}

/// Writes every key `0..keys` once, with all connections, before measuring.
pub async fn load(
    conns: &[Conn],
    spec: &Arc<Spec>,
    values: &Arc<Values>,
    options: &Arc<Options>,
    keys: u64,
    seed: u64,
) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks: Vec<tokio::task::JoinHandle<Result<(), String>>> = Vec::new();
    for (index, conn) in conns.iter().enumerate() {
        for lane in 0..8u64 {
            let (mut conn, next, values, options, spec) = (
                conn.clone(),
                next.clone(),
                values.clone(),
                options.clone(),
                spec.clone(),
            );
            let mut sizes = SmallRng::seed_from_u64(seed ^ (index as u64 * 8 + lane));
            tasks.push(tokio::spawn(async move {
                loop {
                    let key = next.fetch_add(1, Ordering::Relaxed);
                    if key >= keys {
                        return Ok(());
                    }
                    let value_len = spec.sample_value_len(&mut sizes);
                    let op = Op::Insert { key, value_len };
                    load_one(&mut conn, &op, &values, &options)
                        .await
                        .map_err(|e| format!("load of key {key} failed: {e}"))?;
                }
            }));
        }
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Writes one key of the load phase, backing off while the server answers OVERLOADED (its
/// write buffer is ahead of its disk): the load phase must complete, not measure.
async fn load_one(
    conn: &mut Conn,
    op: &Op,
    values: &Values,
    options: &Options,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(1);
    for _ in 0..200 {
        match conn.execute(op, values, options).await {
            Ok(_) => return Ok(()),
            Err(label) if label == "OVERLOADED" => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
            Err(label) => return Err(label),
        }
    }
    Err("OVERLOADED for too long".into())
}

/// Runs the measured phase.
pub async fn run(
    conns: Vec<Conn>,
    spec: Arc<Spec>,
    values: Arc<Values>,
    options: Arc<Options>,
    key_count: Arc<AtomicU64>,
    plan: RunPlan,
) -> Measured {
    let workers = plan.connections * plan.pipeline;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        values,
        options,
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        max_ops: plan.max_ops.unwrap_or(u64::MAX),
        deadline: plan.duration.map(|d| start + d),
    });
    let chooser = KeyChooser::new(spec.distribution, key_count.load(Ordering::Relaxed).max(1));
    let recorders: Vec<Arc<Mutex<Recorder>>> = (0..workers).map(|_| Arc::default()).collect();
    let interval = plan
        .rate_ops_s
        .map(|rate| Duration::from_secs_f64(workers as f64 / rate.max(0.001)));
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let conn = conns[worker / plan.pipeline].clone();
        let generator = Generator::new(
            spec.clone(),
            plan.seed,
            worker as u64,
            chooser.clone(),
            key_count.clone(),
        );
        let (shared, recorder) = (shared.clone(), recorders[worker].clone());
        // Stagger open-loop workers over one interval so sends are spread evenly.
        let first_send = interval.map(|i| start + i.mul_f64(worker as f64 / workers as f64));
        tasks.push(tokio::spawn(worker_loop(
            conn, generator, shared, recorder, interval, first_send,
        )));
    }
    let live = plan
        .live
        .then(|| tokio::spawn(live_lines(recorders.clone(), start)));
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed();
    if let Some(live) = live {
        live.abort();
    }
    let mut total = Recorder::default();
    for recorder in &recorders {
        total.merge(&recorder.lock().expect("recorder lock"));
    }
    Measured {
        recorder: total,
        elapsed,
    }
}

async fn worker_loop(
    mut conn: Conn,
    mut generator: Generator,
    shared: Arc<Shared>,
    recorder: Arc<Mutex<Recorder>>,
    interval: Option<Duration>,
    first_send: Option<Instant>,
) {
    let mut intended = first_send;
    let mut previous_done = Instant::now();
    while shared.claim() {
        let op = generator.next_op();
        if let Some(at) = intended {
            pace_until(at).await;
        }
        let sent = Instant::now();
        // Behind schedule because the last request was slow: count from the intended time.
        let counted_from = match intended {
            Some(at) if previous_done > at => at,
            _ => sent,
        };
        let outcome = conn.execute(&op, &shared.values, &shared.options).await;
        let done = Instant::now();
        let latency_us = done.duration_since(counted_from).as_micros() as u64;
        recorder
            .lock()
            .expect("recorder lock")
            .record(op.kind(), latency_us, &outcome);
        previous_done = done;
        if let (Some(at), Some(step)) = (intended, interval) {
            intended = Some(at + step);
        }
    }
}

/// Waits until `at` with better precision than tokio's millisecond timer: sleeps until about a
/// millisecond before, then yields until the instant. Without this, timer slop of up to 1 ms
/// would be charged to every open-loop request.
async fn pace_until(at: Instant) {
    let early = Duration::from_micros(1500);
    if let Some(wait) = at.checked_duration_since(Instant::now()) {
        if wait > early {
            tokio::time::sleep_until((at - early).into()).await;
        }
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

async fn live_lines(recorders: Vec<Arc<Mutex<Recorder>>>, start: Instant) {
    let mut ticker = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last_ops = 0;
    loop {
        ticker.tick().await;
        let mut total = Recorder::default();
        for recorder in &recorders {
            total.merge(&recorder.lock().expect("recorder lock"));
        }
        let ops = total.ops();
        eprintln!(
            "[{:>4.0}s] {:>9} ops/s  p50 {:>6} us  p99 {:>7} us  p99.9 {:>7} us  errors {}",
            start.elapsed().as_secs_f64(),
            ops - last_ops,
            total.all.value_at_quantile(0.5),
            total.all.value_at_quantile(0.99),
            total.all.value_at_quantile(0.999),
            total.error_count()
        );
        last_ops = ops;
    }
}
