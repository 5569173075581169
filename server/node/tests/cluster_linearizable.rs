//! `strong` operations on a real three-node cluster stay linearizable while nodes are killed
//! with SIGKILL and restarted (issue 10).
//!
//! Three nodes (`--shards 1 --fsync always`), six clients doing `strong` GET, PUT,
//! compare-and-set PUT and DELETE on five keys through the cluster-aware client, and a random
//! node killed and restarted every one to two seconds. The recorded history must be
//! linearizable (`tessera-lincheck`), and every value a reader saw must survive or have been
//! overwritten by a later acknowledged write.
//!
//! Unlike on one node, an unanswered write may still take effect after the kill (another
//! replica holds it, and a restarted head pulls it back): its window never closes.
//!
//! `TESSERA_LINCHECK_SEEDS=N` runs N seeds instead of the default one.

mod common;
#[path = "common/history.rs"]
mod history;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{runtime, TestCluster};
use history::{assert_linearizable, assert_seen_values_survive, read_finals};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tessera_client::{ClientConfig, Level};
use tessera_lincheck::{Outcome, Recorder};

const CLIENTS: u32 = 6;
const RUN_TIME: Duration = Duration::from_secs(12);

fn client_config() -> ClientConfig {
    ClientConfig {
        pool_size: 1,
        timeout: Duration::from_secs(3),
        retries: 0,
        level: Level::Strong,
        ..ClientConfig::default()
    }
}

struct Run {
    ops: Vec<tessera_lincheck::Op>,
    kills: usize,
}

fn run_seed(seed: u64) -> Run {
    let mut cluster = TestCluster::start(3, &["--vnodes", "64", "--fsync", "always"]);
    let target = (cluster.addr_list(), client_config());
    let recorder = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rt = runtime();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (recorder, stop, target) = (recorder.clone(), stop.clone(), target.clone());
            rt.spawn(history::client_loop(id, seed, target, recorder, stop))
        })
        .collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut kills = 0;
    let deadline = Instant::now() + RUN_TIME;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.gen_range(1000..2000)));
        let victim = rng.gen_range(0..3);
        cluster.kill9(victim);
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..500)));
        cluster.restart(victim);
    }
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
    let finals = rt.block_on(read_finals(target, &recorder));
    let mut ops = recorder.ops();
    for op in ops.iter_mut().filter(|op| op.outcome == Outcome::Unknown) {
        op.return_ns = u64::MAX;
    }
    assert_seen_values_survive(&ops, &finals);
    drop(cluster);
    Run { ops, kills }
}

#[test]
fn strong_histories_stay_linearizable_while_nodes_are_killed() {
    let seeds: u64 = std::env::var("TESSERA_LINCHECK_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    for seed in 0..seeds {
        let run = run_seed(seed);
        let (found, unknown) = history::summary(&run.ops);
        eprintln!(
            "seed {seed}: {} operations, {found} reads saw a value, {unknown} writes of \
             unknown outcome, {} kills",
            run.ops.len(),
            run.kills
        );
        assert!(
            run.kills >= 5 && found >= 50,
            "the run did too little to mean anything"
        );
        let replay = format!(
            "TESSERA_LINCHECK_SEEDS={} cargo test -p tessera-server --test cluster_linearizable",
            seed + 1
        );
        assert_linearizable(&run.ops, seed, &replay);
    }
}
