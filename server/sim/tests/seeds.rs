//! A fixed set of simulation seeds (the library's header says what each run checks), under
//! both fsync policies, with the classic faults, with every richer one (`faults.rs`) and with
//! each alone, and without faults; and the same seed twice gives the same trace. A failure
//! prints the command that replays the seed.

use tessera_sim::{run, FaultModel, SimConfig};

fn run_seeds(seeds: std::ops::Range<u64>, config: &SimConfig) {
    let mut failures = Vec::new();
    for seed in seeds {
        let report = run(seed, config);
        assert!(
            report.acked_writes > 5,
            "seed {seed} did little: {report:?}"
        );
        if !report.ok() {
            failures.push(format!(
                "seed {seed}:\n  {}\n  replay: {}",
                report.violations.join("\n  "),
                report.replay(config)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn seeds_with_classic_faults_under_fsync_always() {
    run_seeds(0..40, &SimConfig::classic());
}

#[test]
fn seeds_with_classic_faults_under_fsync_interval() {
    let config = SimConfig {
        fsync_always: false,
        ..SimConfig::classic()
    };
    run_seeds(100..140, &config);
}

#[test]
fn seeds_with_every_fault_under_fsync_always() {
    run_seeds(1000..1030, &SimConfig::default());
}

#[test]
fn seeds_with_every_fault_under_fsync_interval() {
    let config = SimConfig {
        fsync_always: false,
        ..SimConfig::default()
    };
    run_seeds(1100..1130, &config);
}

/// Each richer fault on its own, so that one that breaks something is named by the test.
#[test]
fn seeds_with_each_richer_fault_alone() {
    for (i, name) in FaultModel::NAMES.iter().enumerate() {
        let more = FaultModel::parse(name).expect("a known fault");
        for fsync_always in [true, false] {
            let config = SimConfig {
                fsync_always,
                more,
                ..SimConfig::classic()
            };
            let first = 2000 + 100 * i as u64 + if fsync_always { 0 } else { 50 };
            run_seeds(first..first + 6, &config);
        }
    }
}

/// The richer faults happen: every kind is injected somewhere in a few seeds, and clusters
/// come in several sizes.
#[test]
fn the_richer_faults_are_injected() {
    let mut injected = std::collections::BTreeMap::new();
    let mut sizes = std::collections::BTreeSet::new();
    for seed in 3000..3012 {
        let report = run(seed, &SimConfig::default());
        for (name, count) in report.injected {
            *injected.entry(name).or_insert(0) += count;
        }
        sizes.insert(report.nodes);
    }
    for name in [
        "duplicate",
        "one_way",
        "long_cut",
        "pause",
        "two_down",
        "eio",
    ] {
        assert!(
            injected.get(name).is_some_and(|&n| n > 0),
            "no {name} in {injected:?}"
        );
    }
    assert!(sizes.len() >= 3, "cluster sizes {sizes:?}");
}

#[test]
fn seeds_without_faults() {
    let config = SimConfig {
        faults: false,
        ..SimConfig::default()
    };
    run_seeds(200..204, &config);
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    let config = SimConfig::default();
    let first = run(7, &config);
    let second = run(7, &config);
    assert_eq!(first.trace, second.trace);
    assert!(first.crashes > 0, "the seed exercises crashes");
    let other = run(8, &config);
    assert_ne!(first.trace, other.trace, "different seeds differ");
}

/// Seeds that once failed, kept as they were found (the fix is named beside each).
#[test]
fn regression_seeds() {
    let interval = SimConfig {
        fsync_always: false,
        ..SimConfig::classic()
    };
    // A head resumed a restarted successor with a state transfer from the position it had
    // reported before its crash, past the writes it lost: a State now carries `since`, and a
    // replica behind it asks again from where it is.
    run_seeds(63..64, &interval);
    // A session read at a replica in the middle of a transfer saw an old value: the replica's
    // position had passed the session's token while the delete was still due in the keep
    // list. Session tokens (`Replicator::applied`) now claim no more than where the transfer
    // started, until it completes.
    run_seeds(44..45, &interval);
    run_seeds(238..239, &interval);
    // A transfer cut short, then a restart of its sender: the receiver kept its cap for ever
    // and never acknowledged again. A replica whose copy a transfer left partial now reports
    // `ResumeTransfer`, and its predecessor transfers again instead of resending its queue.
    run_seeds(381..382, &interval);
    // A middle restarted while its tail was cut off (and its head restarted too) released
    // reads at its head's commit point, below the writes it had recovered: a `strong` read
    // there showed a delete the tail did not have. Its read floor is now all it holds. (Each
    // seed runs with the faults it was found under: a fault added later changes the run.)
    let found_under = |list: &str| FaultModel::parse(list).expect("known faults");
    let first_richer =
        found_under("duplicate,one_way,long_cut,pause,two_down,disk,sizes,cas_current");
    let always = SimConfig {
        more: first_richer,
        ..SimConfig::default()
    };
    run_seeds(95..96, &always);
    // Two shards refused each other's appends while behind their tails, then waited for
    // room in their queues, which each other's refused write held: a vnode now asks again
    // as soon as its own successor has caught up.
    let compaction = SimConfig {
        fsync_always: false,
        more: FaultModel::parse("compaction").expect("a known fault"),
        ..SimConfig::classic()
    };
    run_seeds(332..333, &compaction);
    // A key deleted before a transfer's `through` and written again before its keep list was
    // read was kept at the receiver with its value from before the delete, and reads were
    // released before the new write arrived: `caught_up_at` now covers the keep list.
    let interval = SimConfig {
        fsync_always: false,
        more: found_under(
            "duplicate,one_way,long_cut,pause,two_down,disk,slow_transfers,sizes,cas_current",
        ),
        ..SimConfig::default()
    };
    run_seeds(1077..1078, &interval);
    // A recovering head whose pull failed (a full disk) and whose link to the replica it
    // pulled from then broke had lost the answer of a replica whose link had come up during
    // the pull, and never asked it again: it now asks every replica whose link comes up.
    let full_disk = SimConfig {
        more: found_under("disk,compaction"),
        ..SimConfig::classic()
    };
    run_seeds(252..253, &full_disk);
}

/// Seed 647: the middle crashed while sending its tail a transfer, after the values and
/// before the keep list; the tail crashed too. Both forgot the transfer: the tail reported the
/// values' position as a plain `Position`, its restarted predecessor resent from there, and the
/// delete only the keep list carried never reached it, so it served the deleted value to
/// `strong` reads. The tail's store now keeps a durable mark of a transfer in progress.
#[test]
fn a_transfer_cut_short_by_restarts_of_both_ends() {
    let interval = SimConfig {
        fsync_always: false,
        ..SimConfig::default()
    };
    run_seeds(647..648, &interval);
}
