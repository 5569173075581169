//! `tessera`: the command-line client.
//!
//! Exit status: 0 on success, 1 on NOT_FOUND, 2 on any other error (status and message on
//! stderr); `verify` exits 2 when replicas differ.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tessera_client::{parse_duration, parse_ttl_ms};
use tessera_client::{
    Client, ClientConfig, ClientError, DeleteRequest, Durability, Level, PutRequest, ScanRequest,
    Status,
};

mod admin;
mod certs;
mod cluster_cmds;
mod login;
mod revoke;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Command-line client for a Tessera node"
)]
struct Cli {
    /// The node's client address; for a cluster, any of its members (comma-separated, tried in
    /// turn until one answers). Reads go through the first one when it holds a replica of
    /// the key; writes always go to the key's head.
    #[arg(long, global = true, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Consistency of data commands: eventual, session or strong (default: the node's, strong).
    #[arg(long, global = true, value_enum)]
    consistency: Option<Consistency>,
    /// Per-request timeout, e.g. 5s or 500ms.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Connect with TLS, trusting this CA (PEM) for the nodes' certificates (server's
    /// --tls-cert); each node's certificate must name the IP address dialed.
    #[arg(long, global = true, env = "TESSERA_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for nodes that ask for one (--tls-client-ca); with --tls-key.
    #[arg(
        long,
        global = true,
        env = "TESSERA_CLIENT_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "TESSERA_CLIENT_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// Log in as this user (nodes with --users); the password comes from TESSERA_PASSWORD or
    /// --password-file.
    #[arg(long, global = true, env = "TESSERA_USER")]
    user: Option<String>,
    /// A file whose first line is --user's password.
    #[arg(long, global = true, env = "TESSERA_PASSWORD_FILE")]
    password_file: Option<std::path::PathBuf>,
    /// --user's password: from the environment only, never a flag.
    #[arg(long, env = "TESSERA_PASSWORD", hide = true, hide_env_values = true)]
    password: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Consistency {
    Eventual,
    Session,
    Strong,
}

#[derive(Subcommand)]
enum Command {
    /// Store VALUE under KEY (VALUE `-` reads standard input); prints the new version.
    Put {
        key: String,
        value: String,
        /// Expire after this long, e.g. 30s, 500ms, 5m, 2h (at most 100 years; leave it out for
        /// no expiry).
        #[arg(long, value_parser = parse_ttl_ms)]
        ttl: Option<u64>,
        /// Only if the key's current version is N (0 = only if the key does not exist).
        #[arg(long)]
        if_version: Option<u64>,
        /// Return only after the write is on disk (fdatasync), whatever the node's mode.
        #[arg(long)]
        sync: bool,
    },
    /// Print the raw value of KEY on stdout.
    Get {
        key: String,
        /// Print the version on stderr.
        #[arg(long)]
        version: bool,
    },
    /// Delete KEY.
    Del {
        key: String,
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// List keys, one per line.
    Scan {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most keys to list (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
    /// Per-shard counters.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Check that the node answers.
    Ping,
    /// The cluster's members and every vnode's chain (head first) with its epoch.
    Topology {
        #[arg(long)]
        json: bool,
    },
    /// Compare every vnode's replicas (applied sequence, live keys, digest of keys and
    /// versions); exits 0 only when all agree.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Operator commands.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Every node's state, uptime, version, shards, keys, disk and memory, and every vnode's
    /// chain and lag; exits 2 when a node is down or a chain is short of a replica.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Makes a CA and a certificate per member for a dev cluster's mutual TLS (the server's
    /// --peer-tls-*): ca.pem, ca-key.pem, member-IP.pem and member-IP-key.pem in --out. Needs
    /// no running node.
    Certs {
        /// The folder to write them to (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The members' IP addresses, as in their --listen.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<std::net::IpAddr>,
        /// Client certificates to make too: for each NAME, client-NAME.pem and
        /// client-NAME-key.pem, naming NAME (a DNS name) for a user's `certificate`.
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
        /// Days the certificates are valid from now.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revokes certificates that `admin certs` made: adds them to the CA's record
    /// (revoked.txt in --ca-dir) and writes crl.pem there, for the nodes' --tls-client-crl and
    /// --peer-tls-crl (taken on SIGHUP). Needs no running node.
    Revoke {
        /// The folder with the CA (ca-key.pem); revoked.txt and crl.pem are written there.
        #[arg(long)]
        ca_dir: std::path::PathBuf,
        /// The certificates (PEM) to revoke; none only writes the list again.
        certificates: Vec<std::path::PathBuf>,
        /// Days until the list's next update.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Reads a password on standard input and prints its argon2id hash (a PHC string) for the
    /// users file's `password`. Needs no running node.
    HashPassword,
}

/// Standard output that ends the program quietly (status 0) when its reader goes away, as
/// `tessera topology | head` does: that is not an error of the command, and must not be
/// reported as one (Rust ignores SIGPIPE, so the write fails instead of killing us).
struct QuietPipe<W>(W);

impl<W: Write> Write for QuietPipe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).inspect_err(exit_on_broken_pipe)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().inspect_err(exit_on_broken_pipe)
    }
}

fn exit_on_broken_pipe(error: &std::io::Error) {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = if error.status() == Some(Status::NotFound) {
                1
            } else {
                2
            };
            eprintln!("tessera: {error}");
            ExitCode::from(code)
        }
    }
}

/// `--tls-ca` (and a client certificate): TLS to every node; none: plain TCP.
fn tls_settings(cli: &Cli) -> Result<Option<Arc<rustls::ClientConfig>>, ClientError> {
    let Some(ca) = &cli.tls_ca else {
        if cli.tls_cert.is_some() {
            return Err(ClientError::Io("--tls-cert needs --tls-ca".into()));
        }
        return Ok(None);
    };
    let identity = cli.tls_cert.as_deref().zip(cli.tls_key.as_deref());
    tessera_client::tls::client_tls(ca, identity).map(Some)
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    match &cli.command {
        Command::Admin {
            command:
                AdminCommand::Certs {
                    out,
                    members,
                    clients,
                    days,
                },
        } => {
            let made = certs::make(out, members, clients, *days).map_err(ClientError::Io)?;
            for path in made {
                println!("{path}");
            }
            return Ok(());
        }
        Command::Admin {
            command:
                AdminCommand::Revoke {
                    ca_dir,
                    certificates,
                    days,
                },
        } => {
            let crl = revoke::revoke(ca_dir, certificates, *days).map_err(ClientError::Io)?;
            println!("{crl}");
            return Ok(());
        }
        Command::Admin {
            command: AdminCommand::HashPassword,
        } => {
            println!("{}", login::hash_password()?);
            return Ok(());
        }
        _ => {}
    }
    let config = ClientConfig {
        pool_size: 1,
        timeout: cli.timeout,
        retries: 2,
        shard_aware: false,
        level: match cli.consistency {
            None => Level::Default,
            Some(Consistency::Eventual) => Level::Eventual,
            Some(Consistency::Session) => Level::Session,
            Some(Consistency::Strong) => Level::Strong,
        },
        prefer_first_address: true,
        tls: tls_settings(&cli)?,
        credentials: login::credentials(
            cli.user.as_deref(),
            cli.password.as_deref(),
            cli.password_file.as_deref(),
        )?,
    };
    let client = Client::connect_with(&cli.addr, config).await?;
    let mut stdout = QuietPipe(std::io::stdout().lock());
    let io = |e: std::io::Error| ClientError::Io(e.to_string());
    match cli.command {
        Command::Put {
            key,
            value,
            ttl,
            if_version,
            sync,
        } => {
            let value = if value == "-" {
                let mut bytes = Vec::new();
                std::io::stdin().read_to_end(&mut bytes).map_err(io)?;
                bytes
            } else {
                value.into_bytes()
            };
            let put = PutRequest {
                key: key.into_bytes(),
                value,
                ttl_ms: ttl.unwrap_or(0),
                if_version,
                durability: if sync {
                    Durability::Sync
                } else {
                    Durability::Default
                },
            };
            let version = client.put_with(put).await?;
            writeln!(stdout, "{version}").map_err(io)?;
        }
        Command::Get { key, version } => match client.get(key.as_bytes()).await? {
            Some((value, v)) => {
                stdout.write_all(&value).map_err(io)?;
                if version {
                    eprintln!("version {v}");
                }
            }
            None => {
                return Err(ClientError::Status {
                    status: Status::NotFound,
                    message: key,
                    version: 0,
                })
            }
        },
        Command::Del { key, if_version } => {
            let delete = DeleteRequest {
                key: key.into_bytes(),
                if_version,
                durability: Durability::Default,
            };
            client.delete_with(delete).await?;
        }
        Command::Scan { prefix, limit } => {
            let mut cursor = Vec::new();
            let mut listed = 0u64;
            loop {
                let page_size = if limit == 0 {
                    1000
                } else {
                    (limit - listed).min(1000) as u32
                };
                let request = ScanRequest {
                    cursor,
                    prefix: prefix.clone().into_bytes(),
                    limit: page_size,
                };
                let page = client.scan(request).await?;
                for entry in &page.entries {
                    stdout.write_all(&entry.key).map_err(io)?;
                    stdout.write_all(b"\n").map_err(io)?;
                }
                listed += page.entries.len() as u64;
                if page.next_cursor.is_empty() || (limit > 0 && listed >= limit) {
                    break;
                }
                cursor = page.next_cursor;
            }
        }
        Command::Stats { json } => {
            print_stats(&mut stdout, &client.stats().await?, json).map_err(io)?
        }
        Command::Ping => {
            client.ping().await?;
            writeln!(stdout, "PONG").map_err(io)?;
        }
        Command::Topology { json } => {
            cluster_cmds::print_topology(&mut stdout, &client.topology(), json).map_err(io)?
        }
        Command::Verify { json } => cluster_cmds::verify(&client, &mut stdout, json).await?,
        Command::Admin {
            command: AdminCommand::Status { json },
        } => admin::status(&client, &mut stdout, json).await?,
        Command::Admin {
            command:
                AdminCommand::Certs { .. } | AdminCommand::Revoke { .. } | AdminCommand::HashPassword,
        } => unreachable!("done before connecting"),
    }
    stdout.flush().map_err(io)
}

fn print_stats(
    out: &mut impl Write,
    shards: &[tessera_client::ShardStats],
    json: bool,
) -> std::io::Result<()> {
    let fields = |s: &tessera_client::ShardStats| {
        [
            ("keys", s.keys),
            ("live_bytes", s.live_bytes),
            ("disk_bytes", s.disk_bytes),
            ("segments", u64::from(s.segments)),
            ("gets", s.gets),
            ("puts", s.puts),
            ("deletes", s.deletes),
            ("scans", s.scans),
            ("fsyncs", s.fsyncs),
            ("bytes_written", s.bytes_written),
            ("forwarded_in", s.forwarded_in),
            ("overloaded", s.overloaded),
            ("cache_bytes", s.cache_bytes),
            ("cache_hits", s.cache_hits),
            ("cache_misses", s.cache_misses),
            ("index_bytes", s.index_bytes),
            ("compactions", s.compactions),
            ("bytes_reclaimed", s.bytes_reclaimed),
            ("expired_keys", s.expired_keys),
            ("synced_writes", s.synced_writes),
        ]
    };
    let total: Vec<(&str, u64)> = {
        let mut sums = fields(&tessera_client::ShardStats::default());
        for shard in shards {
            for (sum, (_, value)) in sums.iter_mut().zip(fields(shard)) {
                sum.1 += value;
            }
        }
        sums.to_vec()
    };
    if json {
        let object = |pairs: &[(&str, u64)]| {
            let counters = pairs
                .iter()
                .map(|(name, value)| (name.to_string(), (*value).into()));
            let ratios = derived(pairs)
                .into_iter()
                .map(|(name, value)| (name.to_string(), value.into()));
            serde_json::Value::Object(counters.chain(ratios).collect())
        };
        let shards_json: Vec<_> = shards
            .iter()
            .map(|s| {
                let mut value = object(&fields(s));
                value["shard"] = s.shard.into();
                value
            })
            .collect();
        let document = serde_json::json!({ "total": object(&total), "shards": shards_json });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&document).expect("json")
        )
    } else {
        // One row per counter, one column per shard and the total.
        let columns: Vec<Vec<(&str, u64)>> = shards
            .iter()
            .map(fields)
            .map(|f| f.to_vec())
            .chain([total.clone()])
            .collect();
        let mut header = format!("{:<18}", "");
        for s in shards {
            header.push_str(&format!("{:>16}", format!("shard {}", s.shard)));
        }
        writeln!(out, "{header}{:>16}", "total")?;
        for (row, (name, _)) in total.iter().enumerate() {
            let values: String = columns
                .iter()
                .map(|c| format!("{:>16}", c[row].1))
                .collect();
            writeln!(out, "{name:<18}{values}")?;
        }
        for (row, (name, _)) in derived(&total).iter().enumerate() {
            let values: String = columns
                .iter()
                .map(|c| format!("{:>16.3}", derived(c)[row].1))
                .collect();
            writeln!(out, "{name:<18}{values}")?;
        }
        Ok(())
    }
}

/// Ratios computed from the counters: the share of the log that is garbage, the share of disk
/// reads the cache saved, and the mean number of writes one fdatasync made durable.
fn derived(pairs: &[(&str, u64)]) -> [(&'static str, f64); 3] {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v) as f64
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    [
        (
            "garbage_ratio",
            ratio(get("disk_bytes") - get("live_bytes"), get("disk_bytes")).max(0.0),
        ),
        (
            "cache_hit_rate",
            ratio(get("cache_hits"), get("cache_hits") + get("cache_misses")),
        ),
        (
            "avg_group_commit",
            ratio(get("synced_writes"), get("fsyncs")),
        ),
    ]
}
