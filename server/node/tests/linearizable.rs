//! A node never shows a write that a crash can take back (issue 8).
//!
//! One node, `--shards 1 --fsync always`, on a disk slowed to 60 write IOPS (a blkio cgroup, so
//! that every fdatasync takes tens of milliseconds and the window between a write's append and
//! its durability is wide), six clients doing GET, PUT, compare-and-set PUT and DELETE on five
//! keys, and the node killed with SIGKILL and restarted every one to two seconds. The recorded
//! history must be linearizable (`tessera-lincheck`), and every value a reader saw must survive
//! or have been overwritten by a later acknowledged write.
//!
//! An operation whose answer never came (the node died under it) may have taken effect or not,
//! but only before the kill: a dead process applies nothing. So its window ends at the kill.
//!
//! `TESSERA_LINCHECK_SEEDS=N` runs N seeds instead of the default few; a failing seed prints
//! the command that replays it.

mod common;
#[path = "common/history.rs"]
mod history;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port_range, runtime, Node, Throttle};
use history::{assert_linearizable, assert_seen_values_survive, read_finals};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tessera_client::ClientConfig;
use tessera_lincheck::{Op, Outcome, Recorder};

const CLIENTS: u32 = 6;
const RUN_TIME: Duration = Duration::from_secs(10);
const WRITE_IOPS: u32 = 60;

fn client_config() -> ClientConfig {
    ClientConfig {
        pool_size: 1,
        timeout: Duration::from_secs(3),
        retries: 0,
        shard_aware: false,
        ..ClientConfig::default()
    }
}

/// An unanswered write can only have taken effect before the first kill after its call.
fn close_unknown_windows(ops: &mut [Op], kills_ns: &[u64]) {
    for op in ops.iter_mut().filter(|op| op.outcome == Outcome::Unknown) {
        op.return_ns = kills_ns
            .iter()
            .copied()
            .find(|&kill| kill >= op.call_ns)
            .unwrap_or(u64::MAX);
    }
}

struct Run {
    ops: Vec<Op>,
    kills: usize,
}

fn run_seed(seed: u64, throttle: &Throttle) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port_range(1));
    let flags = ["--shards", "1", "--fsync", "always"];
    let mut node = Node::start_on(dir.path(), &listen, &flags);
    throttle.add(node.pid());
    let recorder = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rt = runtime();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let target = (listen.clone(), client_config());
            let (recorder, stop) = (recorder.clone(), stop.clone());
            rt.spawn(history::client_loop(id, seed, target, recorder, stop))
        })
        .collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut kills_ns = Vec::new();
    let deadline = Instant::now() + RUN_TIME;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.gen_range(1000..2000)));
        kills_ns.push(recorder.now_ns());
        node.kill9();
        node = Node::start_on(dir.path(), &listen, &flags);
        throttle.add(node.pid());
    }
    // Let the clients see the last restart, then stop them.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for client in clients {
            tokio::time::timeout(Duration::from_secs(20), client)
                .await
                .expect("clients stop")
                .expect("client task");
        }
    });
    let finals = rt.block_on(read_finals((listen.clone(), client_config()), &recorder));
    drop(node);
    let mut ops = recorder.ops();
    close_unknown_windows(&mut ops, &kills_ns);
    assert_seen_values_survive(&ops, &finals);
    Run {
        ops,
        kills: kills_ns.len(),
    }
}

#[test]
fn kill_9_every_second_or_two_leaves_every_history_linearizable() {
    let seeds: u64 = std::env::var("TESSERA_LINCHECK_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let probe = tempfile::tempdir().unwrap();
    let Some(throttle) = Throttle::new(probe.path(), WRITE_IOPS) else {
        return;
    };
    for seed in 0..seeds {
        let run = run_seed(seed, &throttle);
        let (found, unknown) = history::summary(&run.ops);
        eprintln!(
            "seed {seed}: {} operations, {found} reads saw a value, {unknown} writes in flight \
             at {} kills",
            run.ops.len(),
            run.kills
        );
        assert!(
            run.kills >= 4 && found >= 50,
            "the run did too little to mean anything"
        );
        let replay = format!(
            "TESSERA_LINCHECK_SEEDS={} cargo test -p tessera-server --test linearizable",
            seed + 1
        );
        assert_linearizable(&run.ops, seed, &replay);
    }
}
