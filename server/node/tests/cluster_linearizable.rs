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
//! The same runs again secured as a deployment would be: mutual TLS between members
//! (`--peer-tls-*`), TLS on the client and shard ports (`--tls-*`), certificates from
//! `tessera admin certs`, and users (`--users`): the clients log in as a user limited to the
//! test's keys.
//!
//! `TESSERA_LINCHECK_SEEDS=N` runs N seeds instead of the default one.

mod common;
#[path = "common/history.rs"]
mod history;
#[path = "common/users.rs"]
mod users;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cli_binary, runtime, TestCluster};
use history::{assert_linearizable, assert_seen_values_survive, read_finals};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tessera_client::{ClientConfig, Level};
use tessera_lincheck::{Outcome, Recorder};

const CLIENTS: u32 = 6;

/// One cluster at a time: two cores are few for two clusters under kills.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const RUN_TIME: Duration = Duration::from_secs(12);

/// The clients' settings; over TLS trusting `ca`, logged in as `lin`, when given.
fn client_config(ca: Option<&Path>) -> ClientConfig {
    ClientConfig {
        pool_size: 1,
        timeout: Duration::from_secs(3),
        retries: 0,
        level: Level::Strong,
        tls: ca.map(|ca| tessera_client::tls::client_tls(ca, None).unwrap()),
        credentials: ca.map(|_| tessera_client::Credentials {
            user: "lin".into(),
            password: "lin-secret".into(),
        }),
        ..ClientConfig::default()
    }
}

/// Server flags for TLS everywhere with the certificates in `certs` (for 127.0.0.1), and the
/// users file there (user `lin`, who may read and write `lin:` keys and route).
fn tls_flags(certs: &Path) -> Vec<String> {
    let file = |name: &str| certs.join(name).display().to_string();
    let users = format!(
        "[[user]]\nname = \"lin\"\npassword = \"{}\"\nread = [\"lin:\"]\nwrite = [\"lin:\"]\n\
         route = true\n",
        users::cheap_hash("lin-secret")
    );
    std::fs::write(certs.join("users.toml"), users).unwrap();
    let (cert, key) = (
        file("member-127.0.0.1.pem"),
        file("member-127.0.0.1-key.pem"),
    );
    [
        "--peer-tls-cert",
        &cert,
        "--peer-tls-key",
        &key,
        "--peer-tls-ca",
        &file("ca.pem"),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--users",
        &file("users.toml"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Run {
    ops: Vec<tessera_lincheck::Op>,
    kills: usize,
}

/// One seed's run; with TLS everywhere when `certs` is given.
fn run_seed(seed: u64, certs: Option<&Path>) -> Run {
    let mut flags: Vec<String> = ["--vnodes", "64", "--fsync", "always"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags.extend(certs.map(tls_flags).unwrap_or_default());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = TestCluster::start(3, &flags);
    let ca = certs.map(|c| c.join("ca.pem"));
    let target = (cluster.addr_list(), client_config(ca.as_deref()));
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
    check_seeds(None);
}

#[test]
fn strong_histories_stay_linearizable_under_kills_with_tls_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(cli_binary())
        .args(["admin", "certs", "--members", "127.0.0.1", "--out"])
        .arg(dir.path())
        .output()
        .expect("run tessera admin certs");
    assert!(made.status.success(), "tessera admin certs failed");
    check_seeds(Some(dir.path()));
}

fn check_seeds(certs: Option<&Path>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seeds: u64 = std::env::var("TESSERA_LINCHECK_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    for seed in 0..seeds {
        let run = run_seed(seed, certs);
        let (found, unknown) = history::summary(&run.ops);
        eprintln!(
            "seed {seed} (TLS: {}): {} operations, {found} reads saw a value, {unknown} writes \
             of unknown outcome, {} kills",
            certs.is_some(),
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
