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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port_range, runtime, Node, Throttle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tessera_client::{Client, ClientConfig, ClientError};
use tessera_lincheck::{check, Call, Op, Outcome, Recorder, Verdict};
use tessera_schema::msg::{DeleteRequest, Durability, PutRequest, Status};

const KEYS: u64 = 5;
const CLIENTS: u32 = 6;
const RUN_TIME: Duration = Duration::from_secs(10);
const WRITE_IOPS: u32 = 60;

fn key(index: u64) -> Vec<u8> {
    format!("lin:{index}").into_bytes()
}

/// What a write's error tells about its outcome; `None`: it was refused before it was applied.
fn write_failure(error: &ClientError) -> Option<Outcome> {
    match error {
        ClientError::Status {
            status: Status::VersionMismatch,
            version,
            ..
        } => Some(Outcome::VersionMismatch { current: *version }),
        ClientError::Status {
            status: Status::NotFound,
            ..
        } => Some(Outcome::NotFound),
        // Refused up front: nothing was applied.
        ClientError::Status {
            status: Status::Overloaded | Status::MemoryLimit | Status::BadRequest,
            ..
        } => None,
        // "write not acknowledged", a broken connection, a timeout: it may have happened.
        _ => Some(Outcome::Unknown),
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        pool_size: 1,
        timeout: Duration::from_secs(3),
        retries: 0,
        shard_aware: false,
    }
}

/// One client: random operations on the keys until `stop`, reconnecting after kills.
async fn client_loop(
    id: u32,
    seed: u64,
    addr: String,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32));
    let mut client: Option<Client> = None;
    let mut versions_seen = [0u64; KEYS as usize];
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(node) = &client else {
            client = Client::connect_with(&addr, client_config()).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        let index = rng.gen_range(0..KEYS);
        let k = key(index);
        let cas_version = match rng.gen_range(0..3) {
            0 => None,
            1 => Some(versions_seen[index as usize]),
            _ => Some(rng.gen_range(0..2)),
        };
        let broken = match rng.gen_range(0..100) {
            0..=43 => {
                let pending = recorder.call(id, &k, Call::Get);
                match node.get(&k).await {
                    Ok(Some((value, version))) => {
                        versions_seen[index as usize] = version;
                        recorder.finish(pending, Outcome::Found { value, version });
                        false
                    }
                    Ok(None) => {
                        recorder.finish(pending, Outcome::NotFound);
                        false
                    }
                    Err(error) => {
                        recorder.forget(pending);
                        matches!(error, ClientError::Io(_) | ClientError::Timeout(_))
                    }
                }
            }
            44..=84 => {
                written += 1;
                let value = format!("c{id}-{written}").into_bytes();
                let if_version = if rng.gen_bool(0.4) { cas_version } else { None };
                let call = Call::Put {
                    value: value.clone(),
                    if_version,
                };
                let pending = recorder.call(id, &k, call);
                let put = PutRequest {
                    key: k.clone(),
                    value,
                    ttl_ms: 0,
                    if_version,
                    durability: Durability::Default,
                };
                finish_write(
                    &recorder,
                    pending,
                    node.put_with(put).await.map(|version| {
                        versions_seen[index as usize] = version;
                        Outcome::Written { version }
                    }),
                )
            }
            _ => {
                let if_version = if rng.gen_bool(0.5) { cas_version } else { None };
                let pending = recorder.call(id, &k, Call::Delete { if_version });
                let delete = DeleteRequest {
                    key: k.clone(),
                    if_version,
                    durability: Durability::Default,
                };
                let result = node.delete_with(delete).await.map(|()| Outcome::Deleted);
                finish_write(&recorder, pending, result)
            }
        };
        if broken {
            client = None;
        }
    }
}

/// Records a write's outcome; true when the connection is broken.
fn finish_write(
    recorder: &Recorder,
    pending: tessera_lincheck::Pending,
    result: Result<Outcome, ClientError>,
) -> bool {
    match result {
        Ok(outcome) => {
            recorder.finish(pending, outcome);
            false
        }
        Err(error) => {
            let broken = matches!(error, ClientError::Io(_) | ClientError::Timeout(_));
            match write_failure(&error) {
                Some(outcome) => recorder.finish(pending, outcome),
                None => recorder.forget(pending),
            }
            broken
        }
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

/// Every value a reader saw survives, or a later acknowledged write replaced it.
fn assert_seen_values_survive(ops: &[Op], finals: &[Option<(Vec<u8>, u64)>]) {
    for (index, last) in finals.iter().enumerate() {
        let k = key(index as u64);
        for read in ops.iter().filter(|op| op.key == k) {
            let Outcome::Found { version, .. } = read.outcome else {
                continue;
            };
            let replaced_later = ops.iter().any(|op| {
                op.key == k
                    && op.return_ns > read.call_ns
                    && match op.outcome {
                        Outcome::Written { version: newer } => newer > version,
                        Outcome::Deleted => true,
                        _ => false,
                    }
            });
            let survives = last.as_ref().is_some_and(|(_, now)| *now >= version);
            assert!(
                survives || replaced_later,
                "{}: a reader saw version {version}, the key now holds {last:?} and no later \
                 acknowledged write explains it",
                String::from_utf8_lossy(&k)
            );
        }
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
            let (recorder, stop, addr) = (recorder.clone(), stop.clone(), listen.clone());
            rt.spawn(client_loop(id, seed, addr, recorder, stop))
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
    let finals = rt.block_on(async {
        let client = Client::connect_with(&listen, client_config())
            .await
            .unwrap();
        let mut finals = Vec::new();
        for index in 0..KEYS {
            let pending = recorder.call(u32::MAX, &key(index), Call::Get);
            let got = client.get(&key(index)).await.expect("final read");
            let outcome = match &got {
                Some((value, version)) => Outcome::Found {
                    value: value.clone(),
                    version: *version,
                },
                None => Outcome::NotFound,
            };
            recorder.finish(pending, outcome);
            finals.push(got);
        }
        finals
    });
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
        let found = run
            .ops
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Found { .. }))
            .count();
        let unknown = run
            .ops
            .iter()
            .filter(|op| op.outcome == Outcome::Unknown)
            .count();
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
        match check(&run.ops) {
            Verdict::Linearizable { .. } => {}
            Verdict::Violation { key, report } => panic!(
                "seed {seed}: key {} is not linearizable:\n{report}\nreplay: \
                 TESSERA_LINCHECK_SEEDS={} cargo test -p tessera-server --test linearizable",
                String::from_utf8_lossy(&key),
                seed + 1
            ),
            Verdict::TooHard { key } => panic!(
                "seed {seed}: the checker gave up on key {}",
                String::from_utf8_lossy(&key)
            ),
        }
    }
}
