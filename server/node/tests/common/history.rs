//! Recording linearizability histories against real servers: random GET, PUT, compare-and-set
//! PUT and DELETE on a few keys by concurrent clients, checked with `tessera-lincheck`.
//! Used by the single-node kill test (`linearizable.rs`) and the cluster one
//! (`cluster_linearizable.rs`), which include it with `#[path]`: `common` itself is shared
//! with crates that do not depend on tessera-lincheck.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tessera_client::{Client, ClientConfig, ClientError};
use tessera_lincheck::{Call, Op, Outcome, Recorder};
use tessera_schema::msg::{DeleteRequest, Durability, PutRequest, Status};

pub const KEYS: u64 = 5;

pub fn key(index: u64) -> Vec<u8> {
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
            status: Status::Overloaded | Status::MemoryLimit | Status::BadRequest | Status::Moved,
            ..
        } => None,
        // "write not acknowledged", UNAVAILABLE, a broken connection, a timeout: it may have
        // happened.
        _ => Some(Outcome::Unknown),
    }
}

/// One client: random operations on the keys until `stop`, connecting again after a broken
/// connection.
pub async fn client_loop(
    id: u32,
    seed: u64,
    (addr, config): (String, ClientConfig),
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32));
    let mut client: Option<Client> = None;
    let mut versions_seen = [0u64; KEYS as usize];
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(node) = &client else {
            client = Client::connect_with(&addr, config.clone()).await.ok();
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

/// Reads every key once more (recorded, retried for up to 30 s while the servers recover):
/// what the keys hold at the end.
pub async fn read_finals(
    (addr, config): (String, ClientConfig),
    recorder: &Recorder,
) -> Vec<Option<(Vec<u8>, u64)>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut finals = Vec::new();
    for index in 0..KEYS {
        loop {
            let Ok(client) = Client::connect_with(&addr, config.clone()).await else {
                assert!(
                    Instant::now() < deadline,
                    "the servers never answered again"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let pending = recorder.call(u32::MAX, &key(index), Call::Get);
            match client.get(&key(index)).await {
                Ok(got) => {
                    let outcome = match &got {
                        Some((value, version)) => Outcome::Found {
                            value: value.clone(),
                            version: *version,
                        },
                        None => Outcome::NotFound,
                    };
                    recorder.finish(pending, outcome);
                    finals.push(got);
                    break;
                }
                Err(error) => {
                    recorder.forget(pending);
                    assert!(
                        Instant::now() < deadline,
                        "a final read kept failing: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    finals
}

/// Every value a reader saw survives, or a later write replaced it: an acknowledged one, or one
/// whose outcome is unknown and whose window reaches past the read (it may have happened; the
/// linearizability check then decides whether it can have). A loss has no such explanation.
pub fn assert_seen_values_survive(ops: &[Op], finals: &[Option<(Vec<u8>, u64)>]) {
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
                        Outcome::Deleted | Outcome::Unknown => true,
                        _ => false,
                    }
            });
            let survives = last.as_ref().is_some_and(|(_, now)| *now >= version);
            assert!(
                survives || replaced_later,
                "{}: a reader saw version {version}, the key now holds {last:?} and no later \
                 write explains it",
                String::from_utf8_lossy(&k)
            );
        }
    }
}

/// Panics with the checker's report (and how to replay) unless the history is linearizable.
pub fn assert_linearizable(ops: &[Op], seed: u64, replay: &str) {
    match tessera_lincheck::check(ops) {
        tessera_lincheck::Verdict::Linearizable { .. } => {}
        tessera_lincheck::Verdict::Violation { key, report } => panic!(
            "seed {seed}: key {} is not linearizable:\n{report}\nreplay: {replay}",
            String::from_utf8_lossy(&key)
        ),
        tessera_lincheck::Verdict::TooHard { key } => panic!(
            "seed {seed}: the checker gave up on key {}",
            String::from_utf8_lossy(&key)
        ),
    }
}

/// How many reads saw a value, and how many writes ended with an unknown outcome.
pub fn summary(ops: &[Op]) -> (usize, usize) {
    let found = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Found { .. }))
        .count();
    let unknown = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Unknown)
        .count();
    (found, unknown)
}
