//! `tessera-loadgen connect`: the cost of opening a connection, as a client pool pays it on
//! start and after a node restarts: TCP, the TLS handshake (`--tls-ca`), the login (`--user`,
//! `TESSERA_PASSWORD`) and one TOPOLOGY, then the connection is closed. `--concurrency` of
//! them at a time, `--count` in all; prints connections per second and the latency of each,
//! and the first connection's on its own (the first login of a user costs argon2; the node
//! then knows the password again without it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_client::{Client, ClientConfig, Credentials};

use crate::report::new_histogram;

#[derive(clap::Args)]
pub struct ConnectArgs {
    /// tessera://HOST:PORT of one node (its client port).
    #[arg(long, default_value = "tessera://127.0.0.1:7000")]
    target: String,
    /// Connections to open in all.
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u64,
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
    /// Log in as this user (it needs the route permission: the connection asks for the
    /// TOPOLOGY); the password comes from TESSERA_PASSWORD.
    #[arg(long, env = "TESSERA_USER")]
    user: Option<String>,
    #[arg(long, env = "TESSERA_PASSWORD", hide = true, hide_env_values = true)]
    password: Option<String>,
    /// A label for the result line.
    #[arg(long, default_value = "connect")]
    label: String,
}

fn config(args: &ConnectArgs) -> Result<ClientConfig, String> {
    let tls = args.tls.client_tls()?;
    let credentials = match (&args.user, &args.password) {
        (None, _) => None,
        (Some(user), Some(password)) => Some(Credentials {
            user: user.clone(),
            password: password.clone(),
        }),
        (Some(user), None) => return Err(format!("--user {user} needs TESSERA_PASSWORD")),
    };
    Ok(ClientConfig {
        pool_size: 1,
        retries: 0,
        shard_aware: false,
        tls,
        credentials,
        ..ClientConfig::default()
    })
}

/// Opens and closes one connection; how long it took.
async fn one(address: &str, config: &ClientConfig) -> Result<Duration, String> {
    let started = Instant::now();
    let client = Client::connect_with(address, config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    drop(client);
    Ok(took)
}

pub fn run(args: ConnectArgs) -> Result<(), String> {
    let address = args
        .target
        .strip_prefix("tessera://")
        .ok_or("--target is tessera://HOST:PORT")?
        .to_string();
    let config = config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let first = one(&address, &config).await?;
        let histogram = Arc::new(Mutex::new(new_histogram()));
        let left = Arc::new(AtomicU64::new(args.count));
        let started = Instant::now();
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                let (address, config) = (address.clone(), config.clone());
                let (histogram, left) = (histogram.clone(), left.clone());
                tokio::spawn(async move {
                    while left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        let took = one(&address, &config).await?;
                        let micros = took.as_micros().max(1) as u64;
                        histogram
                            .lock()
                            .expect("histogram")
                            .saturating_record(micros);
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for worker in workers {
            worker.await.map_err(|e| e.to_string())??;
        }
        let elapsed = started.elapsed();
        let histogram = histogram.lock().expect("histogram");
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{}: {} connections in {:.2} s: {:.0} connections/s; each p50 {:.2} ms, p99 {:.2} \
             ms; the first {:.2} ms",
            args.label,
            args.count,
            elapsed.as_secs_f64(),
            args.count as f64 / elapsed.as_secs_f64(),
            ms(0.5),
            ms(0.99),
            first.as_secs_f64() * 1000.0
        );
        Ok(())
    })
}
