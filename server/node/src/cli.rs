//! Command-line flags of `tessera-server`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields), for log shippers.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FsyncMode {
    /// Acknowledge a write only after an fdatasync covers it (group commit shares fdatasyncs).
    Always,
    /// fdatasync every --fsync-interval-ms or --fsync-writes writes; acknowledge on append.
    Interval,
}

/// A byte count: a number with an optional unit. K, M, G, T and KiB, MiB, GiB, TiB are powers
/// of 1024; KB, MB, GB, TB are powers of 1000 (as storage vendors write them). B is bytes.
/// `--peer-buffer-per-shard`: a byte count that holds at least one largest peer frame.
fn parse_peer_buffer(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    let least = tessera_schema::limits::MIN_PEER_SHARD_BUFFER_BYTES;
    if bytes < least {
        return Err(format!(
            "{text} cannot hold one largest peer frame: give at least {least} bytes (17MiB)"
        ));
    }
    Ok(bytes)
}

pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (try 1048576, 512MiB or 2GiB)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A Tessera node: one executor per core, each owning a disjoint set of the node's vnodes.
/// Every setting may also come from the environment (`TESSERA_` and the flag's name in
/// capitals, dashes as underscores) or from a TOML file (`--config`); flags override the
/// environment, which overrides the file.
#[derive(Clone, Debug, Parser)]
#[command(name = "tessera-server", version)]
pub struct Args {
    /// A TOML file of settings, keyed by the flags' names without dashes (ops/tessera.toml
    /// is an example with every setting).
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (defaults, file, environment and flags) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Directory for the node's data (created if missing; locked while the node runs).
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "./tessera-data")]
    pub data_dir: PathBuf,
    /// Client address. Every shard serves it (SO_REUSEPORT); shard i also serves PORT + 1 + i.
    /// Port 0 picks a free range and prints it on the ready line.
    #[arg(long, env = "TESSERA_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Number of shards (executors). Default: every online core, or what the data directory was
    /// created with. A data directory keeps its shard count: a different --shards is refused.
    #[arg(long, env = "TESSERA_SHARDS")]
    pub shards: Option<u16>,
    /// The cluster's vnode count (key -> vnode is xxh3-64 of the key modulo it): fixed when the
    /// data directory is created, at most 65 536; a different one on an existing directory is
    /// refused. Default 4096 for a new directory.
    #[arg(long, env = "TESSERA_VNODES")]
    pub vnodes: Option<u32>,
    /// The cluster's members, by their client addresses (each member's --listen), the same
    /// list on every node; this node finds itself in it by its own --listen. Without it the
    /// node is a cluster of one.
    #[arg(long, env = "TESSERA_PEERS", value_delimiter = ',')]
    pub peers: Vec<SocketAddr>,
    /// Replicas of each vnode (capped by the member count).
    #[arg(long, env = "TESSERA_REPLICATION_FACTOR", default_value_t = 3)]
    pub replication_factor: usize,
    /// This node's failure domain: a vnode's replicas go to distinct zones while there are
    /// enough.
    #[arg(long, env = "TESSERA_ZONE", default_value = "")]
    pub zone: String,
    /// The node's certificate chain (PEM) for TLS on the client and shard ports: with
    /// --tls-key, clients connect with TLS only (TLS 1.3; --tls12 allows 1.2). Reloaded with
    /// --tls-key and --tls-client-ca on SIGHUP; connections already open keep theirs.
    #[arg(long, env = "TESSERA_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "TESSERA_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// A CA (PEM) whose certificates clients must present on the client and shard ports
    /// (mutual TLS). Without it, clients need no certificate.
    #[arg(long, env = "TESSERA_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// The revocation list (PEM CRL) of --tls-client-ca: a client certificate it names is
    /// refused, as is one whose status it cannot tell (a list from another CA). Reloaded on
    /// SIGHUP. `tessera admin revoke` makes one for a dev CA.
    #[arg(long, env = "TESSERA_TLS_CLIENT_CRL")]
    pub tls_client_crl: Option<std::path::PathBuf>,
    /// Also take TLS 1.2 on the client and shard ports (1.3 only by default).
    #[arg(long, env = "TESSERA_TLS12")]
    pub tls12: bool,
    /// This member's certificate chain (PEM) for mutual TLS on the peer ports: with
    /// --peer-tls-key and --peer-tls-ca, every peer connection is TLS 1.3 and each side's
    /// certificate must chain to the CA and name its member's IP address. Without them, peer
    /// ports are plain TCP and anyone who reaches them can pose as a member.
    #[arg(long, env = "TESSERA_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --peer-tls-cert.
    #[arg(long, env = "TESSERA_PEER_TLS_KEY")]
    pub peer_tls_key: Option<std::path::PathBuf>,
    /// The cluster's CA certificate (PEM): the only issuer whose members are trusted.
    #[arg(long, env = "TESSERA_PEER_TLS_CA")]
    pub peer_tls_ca: Option<std::path::PathBuf>,
    /// The cluster CA's revocation list (PEM CRL): a member whose certificate it names is
    /// refused both ways. All --peer-tls-* files are reloaded on SIGHUP; peer connections
    /// already open keep theirs.
    #[arg(long, env = "TESSERA_PEER_TLS_CRL")]
    pub peer_tls_crl: Option<std::path::PathBuf>,
    /// The users file (TOML, `[[user]]` tables: name, argon2 password hash and/or client
    /// certificate name, read and write key prefixes, route, admin; see README "Users").
    /// With it, every client connection must log in (AUTH, or a client certificate naming a
    /// user) and each request is checked against its user's rights. Reloaded on SIGHUP.
    #[arg(long, env = "TESSERA_USERS")]
    pub users: Option<std::path::PathBuf>,
    /// With --users: how long, in milliseconds, a connection may stay without logging in
    /// before it is told UNAUTHENTICATED and closed.
    #[arg(long, env = "TESSERA_LOGIN_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub login_timeout_ms: u64,
    /// Run with plain-TCP ports on addresses other than loopback: client and shard ports
    /// without --tls-cert (anyone who reaches them can read and write every key), or peer
    /// ports without --peer-tls-* (anyone can pose as a member). Without it such a node
    /// refuses to start. For a network you trust, or a test.
    #[arg(long, env = "TESSERA_INSECURE")]
    pub insecure: bool,
    /// Memory for frames arriving on a shard's peer port, in bytes with an optional unit, per
    /// shard: the read buffers and frames part way in of all the members' connections
    /// together. A frame that does not fit waits until others are handled (its connection is
    /// not read), within its deadline. At least one largest frame (16 MiB and 64 KiB).
    #[arg(long, env = "TESSERA_PEER_BUFFER_PER_SHARD",
          default_value_t = tessera_schema::limits::DEFAULT_PEER_SHARD_BUFFER_BYTES,
          value_parser = parse_peer_buffer)]
    pub peer_buffer_per_shard: u64,
    /// Most state transfers (catch-ups of a replica that the retention queue cannot serve)
    /// each shard sends at once; the others wait their turn.
    #[arg(long, env = "TESSERA_TRANSFERS_PER_SHARD", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub transfers_per_shard: u16,
    /// Most MiB per second of values and key digests each shard's state transfers send
    /// (0: no limit), so that catching up a replica cannot take the disk or the network from
    /// requests.
    #[arg(long, env = "TESSERA_TRANSFER_MIB_PER_S", default_value_t = 128)]
    pub transfer_mib_per_s: u64,
    /// When writes become durable.
    #[arg(long, env = "TESSERA_FSYNC", value_enum, default_value_t = FsyncMode::Interval)]
    pub fsync: FsyncMode,
    /// With --fsync interval: the longest time between fdatasyncs.
    #[arg(long, env = "TESSERA_FSYNC_INTERVAL_MS", default_value_t = 100)]
    pub fsync_interval_ms: u64,
    /// With --fsync interval: the most writes between fdatasyncs.
    #[arg(long, env = "TESSERA_FSYNC_WRITES", default_value_t = 1000)]
    pub fsync_writes: u64,
    /// Size of each segment file, in MiB.
    #[arg(long, env = "TESSERA_SEGMENT_MIB", default_value_t = 64)]
    pub segment_mib: u64,
    /// Memory for the value cache of hot values, in bytes, for the whole node (split evenly
    /// among shards): a number with an optional unit (512MiB, 2GiB, 1500MB). 0 disables it;
    /// reads then go to the disk.
    #[arg(long, env = "TESSERA_CACHE_BYTES", default_value = "512MiB", value_parser = parse_bytes)]
    pub cache_bytes: u64,
    /// Memory for index plus value cache, in bytes (units as for --cache-bytes), for the whole
    /// node (split evenly among shards). The cache shrinks as the index grows; past the limit
    /// new keys are refused with MEMORY_LIMIT while reads, overwrites and deletes go on.
    /// Default: no limit.
    #[arg(long, env = "TESSERA_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,
    /// Compaction keeps the log within this factor of the live data (at least 1.2).
    #[arg(long, env = "TESSERA_SPACE_FACTOR", default_value_t = 2.0)]
    pub space_factor: f64,
    /// Most MiB per second each shard's compaction reads from victims (its copies are at most
    /// as much again), so that it cannot take the disk from requests. 0: no limit. Compaction
    /// that falls behind lets the log grow past --space-factor until it catches up.
    #[arg(long, env = "TESSERA_COMPACTION_MIB_PER_S", default_value_t = 128)]
    pub compaction_mib_per_s: u64,
    /// Memory for everything client connections make the node hold (partial frames, running
    /// requests, unwritten answers), in bytes with an optional unit, for the whole node (split
    /// evenly among shards). Past it new requests get OVERLOADED and new connections are
    /// refused with a reason; one connection stops being read past 4 MiB until its answers
    /// drain.
    #[arg(long, env = "TESSERA_CONNECTION_MEMORY", default_value_t = tessera_schema::limits::DEFAULT_CONNECTION_MEMORY_BYTES,
          value_parser = parse_bytes)]
    pub connection_memory: u64,
    /// Most client connections the node serves at once (split evenly among shards); past it a
    /// new connection is told UNAVAILABLE and closed.
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS", default_value_t = tessera_schema::limits::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: u32,
    /// How long a client may take to send one frame, in milliseconds from its first byte, plus
    /// one second per MiB of its body; a connection that overruns it (a sender that stalls half
    /// way) is told BAD_REQUEST and closed. Idle connections are never timed out.
    #[arg(long, env = "TESSERA_FRAME_TIMEOUT_MS", default_value_t = tessera_schema::limits::FRAME_ARRIVAL_GRACE_MS)]
    pub frame_timeout_ms: u64,
    /// Start even when a sealed segment is corrupt, cutting it at the damage (data after it in
    /// that segment is lost and reported).
    #[arg(long, env = "TESSERA_REPAIR")]
    pub repair: bool,
    /// Microseconds an idle executor spins before sleeping. Spinning cuts cross-shard latency
    /// but burns CPU that other work may need; 0 disables it.
    #[arg(long, env = "TESSERA_SPIN_BEFORE_PARK_US", default_value_t = 0)]
    pub spin_before_park_us: u64,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (text format 0.0.4), from a thread
    /// of its own: a scrape never runs on a shard. Off by default. A port in use stops startup.
    #[arg(long, env = "TESSERA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How log lines are written to stderr (the level comes from RUST_LOG, default info).
    #[arg(long, env = "TESSERA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Pin shard i to CPU i (modulo the online CPUs).
    #[arg(long, env = "TESSERA_PIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin: bool,
    /// The CPUs the shards run on, as a list like 0-3,8: shard i on the i-th CPU of the set,
    /// and (without --shards) one shard per CPU for a new data directory. Overrides --pin.
    #[arg(long, env = "TESSERA_CPUSET")]
    pub cpuset: Option<crate::cpuset::CpuSet>,
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_with_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1500MB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }
}
