//! `tessera-loadgen`: latency benchmarking for Tessera and any RESP server, side by side.
//!
//! ```text
//! tessera-loadgen --target tessera://127.0.0.1:7000 --workload getset --read-ratio 0.5 \
//!     --connections 50 --pipeline 1 --duration 10s --json tessera.json
//! tessera-loadgen --target redis://127.0.0.1:6379 ... --json redis.json
//! tessera-loadgen plot --out latency.svg tessera.json redis.json
//! ```
//!
//! A run: connect, fill the key space (`--keys`, skip with `--no-load`), then measure for
//! `--duration` or `--ops`, closed loop or open loop (`--rate`), printing a live line each second
//! and a summary at the end; `--json FILE` keeps the whole result. Choices: one tokio thread by
//! default (`--threads`), so that on a small machine the generator's own CPU use is bounded and
//! the same for every backend; a connection with pipeline P has P requests in flight, each sent
//! when the previous answer on that lane arrives.

mod backend;
mod connect;
mod keydist;
mod plot;
mod report;
mod runner;
mod tls;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tessera_client::parse_duration;

use crate::backend::{Conn, Options, Target, Values};
use crate::keydist::Distribution;
use crate::report::{groups, RunResult};
use crate::runner::RunPlan;
use crate::workload::{Spec, WorkloadName};

#[derive(Parser)]
#[command(
    name = "tessera-loadgen",
    version,
    about = "Latency benchmarking for Tessera and RESP servers"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Draw the latency-percentile curves of result files on one chart (SVG).
    Plot {
        /// The chart to write (.svg).
        #[arg(long)]
        out: PathBuf,
        /// Which latencies: all, read or write.
        #[arg(long, default_value = "all")]
        group: String,
        #[arg(long, default_value = "Latency by percentile")]
        title: String,
        /// Result files written by --json.
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
    /// Open and close connections (TCP, TLS, login, one TOPOLOGY): connections per second and
    /// the time each takes (`connect.rs`).
    Connect(connect::ConnectArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Consistency {
    Eventual,
    Session,
    Strong,
}

#[derive(Args)]
struct RunArgs {
    /// tessera://HOST:PORT or redis://HOST:PORT; for a Tessera cluster, any of its members
    /// (tessera://HOST:PORT,HOST:PORT,...).
    #[arg(long, default_value = "tessera://127.0.0.1:7000")]
    target: String,
    /// Tessera: the consistency level of every request (default: the node's, strong).
    #[arg(long, value_enum)]
    consistency: Option<Consistency>,
    #[arg(long, value_enum, default_value_t = WorkloadName::Getset)]
    workload: WorkloadName,
    /// Keys in the key space (filled by the load phase).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Key size in bytes ("user" and a zero-padded number).
    #[arg(long, default_value_t = 48)]
    key_size: usize,
    /// Value size for getset and the YCSB workloads.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Share of reads in getset.
    #[arg(long, default_value_t = 0.5)]
    read_ratio: f64,
    /// Overrides the workload's key distribution.
    #[arg(long, value_enum)]
    distribution: Option<Distribution>,
    /// Connections (closed and open loop).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Open loop: total requests per second, sent on a schedule (latency corrected for
    /// coordinated omission). Without it the run is closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to measure, e.g. 10s, 2m (default 10s unless --ops is given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many operations.
    #[arg(long)]
    ops: Option<u64>,
    /// Seed of the key and operation streams.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the load phase (the keys are already there).
    #[arg(long)]
    no_load: bool,
    /// Write the result here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Name of this run in plots and tables.
    #[arg(long)]
    label: Option<String>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Tessera: route each key to its shard's port (false: the node forwards between shards).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    shard_aware: bool,
    /// Tessera: reads go to the first address's node whenever it holds a replica of the key
    /// (to load one replica, e.g. a transfer's sender); writes still go to heads.
    #[arg(long)]
    read_first: bool,
    #[command(flatten)]
    tls: tls::TlsArgs,
    /// Tessera: log every connection in as this user (nodes with --users); the password
    /// comes from TESSERA_PASSWORD.
    #[arg(long, env = "TESSERA_USER")]
    user: Option<String>,
    /// --user's password: from the environment only, never a flag.
    #[arg(long, env = "TESSERA_PASSWORD", hide = true, hide_env_values = true)]
    password: Option<String>,
    /// Print a line each second (default: on for runs of 5 s or more).
    #[arg(long, action = clap::ArgAction::Set)]
    live: Option<bool>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Plot {
            out,
            group,
            title,
            results,
        }) => plot_files(&out, &group, &title, &results),
        Some(Command::Connect(args)) => connect::run(args),
        None => run_load(cli.run),
    };
    if let Err(error) = result {
        eprintln!("tessera-loadgen: {error}");
        std::process::exit(2);
    }
}

fn plot_files(
    out: &std::path::Path,
    group: &str,
    title: &str,
    files: &[PathBuf],
) -> Result<(), String> {
    let results = files
        .iter()
        .map(|file| {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            serde_json::from_str::<RunResult>(&text).map_err(|e| format!("{}: {e}", file.display()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    plot::plot(&results, group, title, out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn run_load(args: RunArgs) -> Result<(), String> {
    if args.connections == 0 || args.pipeline == 0 {
        return Err("--connections and --pipeline must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err("--read-ratio must be between 0 and 1".into());
    }
    let target = Target::parse(&args.target)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(run_async(&args, &target))?;
    eprintln!("{}", result.summary());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result).expect("serializable result");
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

async fn run_async(args: &RunArgs, target: &Target) -> Result<RunResult, String> {
    let mut spec = Spec::new(args.workload, args.read_ratio, args.value_size);
    if let Some(distribution) = args.distribution {
        spec.distribution = distribution;
    }
    let spec = Arc::new(spec);
    let values = Arc::new(Values::new(spec.values.max_bytes(), args.seed));
    let tls = args.tls.client_tls()?;
    let credentials = match (&args.user, &args.password) {
        (None, _) => None,
        (Some(user), Some(password)) => Some(tessera_client::Credentials {
            user: user.clone(),
            password: password.clone(),
        }),
        (Some(user), None) => return Err(format!("--user {user} needs TESSERA_PASSWORD")),
    };
    let options = Arc::new(Options {
        tls,
        credentials,
        key_size: args.key_size,
        timeout: args.timeout,
        shard_aware: args.shard_aware,
        read_first: args.read_first,
        level: match args.consistency {
            None => tessera_client::Level::Default,
            Some(Consistency::Eventual) => tessera_client::Level::Eventual,
            Some(Consistency::Session) => tessera_client::Level::Session,
            Some(Consistency::Strong) => tessera_client::Level::Strong,
        },
    });
    let mut conns = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        conns.push(Conn::open(target, &options).await?);
    }
    if !args.no_load {
        let started = std::time::Instant::now();
        runner::load(&conns, &spec, &values, &options, args.keys, args.seed).await?;
        eprintln!(
            "loaded {} keys in {:.1} s",
            args.keys,
            started.elapsed().as_secs_f64()
        );
    }
    let duration = args.duration.or(if args.ops.is_none() {
        Some(Duration::from_secs(10))
    } else {
        None
    });
    let plan = RunPlan {
        connections: args.connections,
        pipeline: args.pipeline,
        rate_ops_s: args.rate,
        duration,
        max_ops: args.ops,
        seed: args.seed,
        live: args
            .live
            .unwrap_or(duration.is_some_and(|d| d >= Duration::from_secs(5))),
    };
    let key_count = Arc::new(AtomicU64::new(args.keys));
    let measured = runner::run(conns, spec, values, options, key_count, plan).await;
    let recorder = &measured.recorder;
    let duration_s = measured.elapsed.as_secs_f64();
    let workload = serde_json::to_value(args.workload)
        .expect("name")
        .as_str()
        .unwrap_or("")
        .to_string();
    Ok(RunResult {
        backend: target.backend_name().into(),
        target: args.target.clone(),
        label: args
            .label
            .clone()
            .unwrap_or_else(|| format!("{} {}", target.backend_name(), workload)),
        workload,
        mode: if args.rate.is_some() {
            "open".into()
        } else {
            "closed".into()
        },
        connections: args.connections,
        pipeline: args.pipeline,
        rate_ops_s: args.rate,
        duration_s,
        ops: recorder.ops(),
        errors: recorder.error_count(),
        errors_by_status: recorder.errors.clone(),
        not_found: recorder.not_found,
        throughput_ops_s: recorder.ops() as f64 / duration_s.max(1e-9),
        latency_us: groups(recorder),
    })
}
