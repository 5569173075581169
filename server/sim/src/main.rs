//! `tessera-sim`: runs seeds of the cluster simulation (see the library's header).
//!
//! `cargo run --release -p tessera-sim -- --seeds 200` runs seeds 0..200; `--seed S` runs one
//! and prints its report; `--interval` uses `--fsync interval`, `--no-faults` turns faults
//! off, `--faults LIST` picks the richer ones (`faults.rs`; all by default), `--steps N` sets the length, `--watch-vnode V` prints one vnode's messages. Exits 1 when any seed fails, printing how to replay it.

use clap::Parser;
use tessera_sim::{run, FaultModel, SimConfig};

#[derive(Parser)]
#[command(
    name = "tessera-sim",
    about = "Deterministic simulation of a Tessera cluster"
)]
struct Args {
    /// Run seeds 0..N.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// Run only this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Milliseconds of client traffic per seed.
    #[arg(long, default_value_t = 3000)]
    steps: u64,
    /// Writes count once appended (`--fsync interval`), not once durable.
    #[arg(long)]
    interval: bool,
    /// No faults at all.
    #[arg(long)]
    no_faults: bool,
    /// The richer faults on top of crashes and cuts: `all`, `none`, or a comma-separated list
    /// of duplicate, one_way, long_cut, pause, two_down, disk, slow_transfers, compaction, skew,
    /// sizes, cas_current.
    #[arg(long, default_value = "all", value_parser = FaultModel::parse)]
    faults: FaultModel,
    /// Print this vnode's messages and the faults to stderr (for reading a failing seed).
    #[arg(long)]
    watch_vnode: Option<u16>,
}

fn main() {
    let args = Args::parse();
    let config = SimConfig {
        steps: args.steps,
        fsync_always: !args.interval,
        faults: !args.no_faults,
        more: args.faults,
        watch_vnode: args.watch_vnode,
        ..SimConfig::default()
    };
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (0..args.seeds).collect(),
    };
    let mut failed = 0;
    for seed in seeds {
        let report = run(seed, &config);
        println!(
            "seed {seed}: {} nodes, {} acked writes, {} reads, {} strong ops, {} crashes, {} messages, {} paused streams resumed, trace {:016x}{}{}",
            report.nodes,
            report.acked_writes,
            report.reads,
            report.strong_ops,
            report.crashes,
            report.messages,
            report.streams_resumed,
            report.trace,
            injected(&report),
            if report.ok() { "" } else { "  FAILED" }
        );
        if !report.ok() {
            failed += 1;
            for violation in &report.violations {
                println!("  {violation}");
            }
            println!("  replay: {}", report.replay(&config));
        }
    }
    if failed > 0 {
        println!("{failed} seed(s) failed");
        std::process::exit(1);
    }
}

/// The richer faults a run injected, as ", 3 pause, 1 two_down".
fn injected(report: &tessera_sim::Report) -> String {
    report
        .injected
        .iter()
        .map(|(name, count)| format!(", {count} {name}"))
        .collect()
}
