//! The data directory: its lock, its metadata, and one folder per shard.
//!
//! ```text
//! DATA_DIR/
//!   LOCK                 held (flock) by the running node: two nodes never share a directory
//!   node.meta            "tessera-data 3\nshards N\nvnodes V\n": layout version, shard count,
//!                        the cluster's vnode count (layout 1 had no vnodes line: 256)
//!   shard-000/segment-0000000001.log ...
//! ```
//!
//! The shard count is fixed when the directory is created, because vnode -> shard decides which
//! shard's log holds each key (moving vnodes between shards is rebalancing, a later issue), and
//! so is the vnode count, because key -> vnode is the hash modulo it.

use std::fs::{self, File};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

const META_FILE: &str = "node.meta";
/// 3: segments may hold record format 3 (transfer marks, `tessera-store`'s `ondisk.rs`). A
/// binary that knows only 2 would take such a record for a torn tail and cut the log there, so
/// a directory opened by this binary is marked 3 before it writes any record, and an older
/// binary refuses it instead.
const META_VERSION: u32 = 3;

/// What `node.meta` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub shards: u16,
    pub vnodes: u32,
}

pub struct DataDir {
    pub root: PathBuf,
    pub shards: u16,
    pub vnodes: u32,
    _lock: File,
}

impl DataDir {
    /// Opens (or creates) the directory, takes its lock, and settles the shard and vnode
    /// counts: a directory keeps the ones it was created with, and a different one asked for is
    /// refused with a message.
    pub fn open(
        root: &Path,
        requested_shards: Option<u16>,
        requested_vnodes: Option<u32>,
    ) -> Result<DataDir, String> {
        fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let lock = File::create(root.join("LOCK"))
            .map_err(|e| format!("cannot create {}/LOCK: {e}", root.display()))?;
        lock.try_lock().map_err(|_| {
            format!(
                "{} is in use by another tessera-server (LOCK is held)",
                root.display()
            )
        })?;
        let meta = match read_meta(root)? {
            Some((stored, version)) => {
                check_kept(
                    root,
                    "shards",
                    stored.shards.into(),
                    requested_shards.map(u32::from),
                )?;
                check_kept(root, "vnodes", stored.vnodes, requested_vnodes)?;
                if version < META_VERSION {
                    write_meta(root, &stored)?; // before any record of the newer format
                }
                stored
            }
            None => {
                let meta = Meta {
                    shards: requested_shards.unwrap_or_else(default_shards),
                    vnodes: requested_vnodes.unwrap_or(tessera_schema::placement::DEFAULT_VNODES),
                };
                check_meta(&meta)?;
                write_meta(root, &meta)?;
                meta
            }
        };
        check_meta(&meta)?;
        let shards = meta.shards;
        for shard in 0..shards {
            let dir = shard_dir(root, shard);
            fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            shards,
            vnodes: meta.vnodes,
            _lock: lock,
        })
    }
}

/// A count the directory was created with may not change.
fn check_kept(root: &Path, what: &str, stored: u32, requested: Option<u32>) -> Result<(), String> {
    match requested {
        Some(wanted) if wanted != stored => Err(format!(
            "{} was created with {stored} {what}; --{what} {wanted} would re-home its keys (omit --{what} or pass --{what} {stored})",
            root.display()
        )),
        _ => Ok(()),
    }
}

fn check_meta(meta: &Meta) -> Result<(), String> {
    let max_vnodes = tessera_schema::placement::MAX_VNODES;
    if meta.vnodes == 0 || meta.vnodes > max_vnodes {
        return Err(format!(
            "vnodes must be between 1 and {max_vnodes}, not {}",
            meta.vnodes
        ));
    }
    if meta.shards == 0 || u32::from(meta.shards) > meta.vnodes.min(256) {
        return Err(format!(
            "shards must be between 1 and {} (and at most the vnode count), not {}",
            meta.vnodes.min(256),
            meta.shards
        ));
    }
    Ok(())
}

pub fn shard_dir(root: &Path, shard: u16) -> PathBuf {
    root.join(format!("shard-{shard:03}"))
}

fn default_shards() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(256) as u16)
}

/// The directory's meta and its layout version.
fn read_meta(root: &Path) -> Result<Option<(Meta, u32)>, String> {
    let path = root.join(META_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let bad = || format!("{} is not a tessera node.meta file", path.display());
    let mut lines = text.lines();
    let version: u32 = lines
        .next()
        .and_then(|l| l.strip_prefix("tessera-data "))
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    if !(1..=META_VERSION).contains(&version) {
        return Err(format!(
            "{}: data layout {version} is not supported",
            path.display()
        ));
    }
    let fields: std::collections::HashMap<&str, &str> =
        lines.filter_map(|line| line.split_once(' ')).collect();
    let field = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    let shards = field("shards")
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(bad)?;
    let vnodes = match version {
        1 => tessera_schema::placement::LEGACY_VNODES,
        _ => field("vnodes")
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)?,
    };
    Ok(Some((Meta { shards, vnodes }, version)))
}

fn write_meta(root: &Path, meta: &Meta) -> Result<(), String> {
    let path = root.join(META_FILE);
    let temp = root.join("node.meta.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        write!(
            file,
            "tessera-data {META_VERSION}\nshards {}\nvnodes {}\n",
            meta.shards, meta.vnodes
        )?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        File::open(root)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// With port 0, finds a port P such that P and the shard ports P+1..=P+shards are all free;
/// otherwise checks that the given ports are free (`check_ports_free`).
pub fn resolve_listen(
    root: &Path,
    listen: SocketAddr,
    shards: u16,
    clustered: bool,
) -> Result<SocketAddr, String> {
    if listen.port() != 0 {
        if u32::from(listen.port()) + u32::from(shards) > 65535 {
            return Err(format!(
                "port {} leaves no room for {shards} shard ports",
                listen.port()
            ));
        }
        check_ports_free(root, listen, shards, clustered)?;
        return Ok(listen);
    }
    for _ in 0..100 {
        let probe = TcpListener::bind(SocketAddr::new(listen.ip(), 0))
            .map_err(|e| format!("cannot bind {}: {e}", listen.ip()))?;
        let base = probe.local_addr().map_err(|e| e.to_string())?.port();
        if u32::from(base) + u32::from(shards) > 65535 {
            continue;
        }
        let all_free =
            (1..=shards).all(|i| TcpListener::bind(SocketAddr::new(listen.ip(), base + i)).is_ok());
        if all_free {
            return Ok(SocketAddr::new(listen.ip(), base));
        }
    }
    Err("no free range of ports found".into())
}

/// How long a start waits for its ports when the data directory's previous node is gone but
/// its sockets are not yet: a node killed with SIGKILL keeps its listening sockets open until
/// its last in-flight disk writes finish (io_uring holds them), seconds on a busy disk.
const PORT_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Refuses ports that something already listens on. The shards bind with SO_REUSEPORT (they
/// share the client port), which would let a second node on the same port start silently and
/// take half the connections. Listeners are found in the kernel's socket table
/// (`/proc/net/tcp`, `tcp6`) rather than by a trial bind: a trial bind also fails on the dead
/// predecessor's closing connections (FIN_WAIT2 for up to a minute), which are harmless.
///
/// A port with a listener is refused at once, unless this data directory's previous node has
/// died (its LOCK exists and is free): then the listener is most likely that node's, still
/// closing (a node killed with SIGKILL keeps its sockets until its last in-flight disk writes
/// finish), and the start waits up to `PORT_RELEASE_WAIT` for it. Joining it instead would
/// send some new connections to a listener nobody accepts on.
pub fn check_ports_free(
    root: &Path,
    listen: SocketAddr,
    shards: u16,
    clustered: bool,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    let mut warned = false;
    loop {
        let Err(error) = no_listeners(listen, shards, clustered) else {
            return Ok(());
        };
        if std::time::Instant::now() > deadline || !previous_node_gone(root) {
            return Err(error);
        }
        if !warned {
            tracing::warn!("{error}; waiting for the previous node's sockets to close");
            warned = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The ports a node serves: its client port, each shard's, and in a cluster each shard's peer
/// port (`crate::cluster::PEER_PORT_OFFSET`).
fn node_ports(listen: SocketAddr, shards: u16, clustered: bool) -> Vec<u16> {
    let base = listen.port();
    let mut ports: Vec<u16> = (0..=shards).map(|i| base + i).collect();
    if clustered {
        ports.extend((0..shards).map(|i| base + crate::cluster::PEER_PORT_OFFSET + i));
    }
    ports
}

fn no_listeners(listen: SocketAddr, shards: u16, clustered: bool) -> Result<(), String> {
    let listeners = tcp_listeners()?;
    for port in node_ports(listen, shards, clustered) {
        let taken = listeners.iter().any(|(ip, listening_port)| {
            *listening_port == port && (*ip == listen.ip() || ip.is_unspecified())
        });
        if taken {
            return Err(format!(
                "cannot listen on {}: something already listens there (another tessera-server \
                 or another program; a node uses its --listen port, the {shards} after it, and \
                 in a cluster its peer ports from PORT+33)",
                SocketAddr::new(listen.ip(), port)
            ));
        }
    }
    Ok(())
}

/// Every TCP socket in the LISTEN state, from `/proc/net/tcp` and `/proc/net/tcp6`.
fn tcp_listeners() -> Result<Vec<(std::net::IpAddr, u16)>, String> {
    let mut listeners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {table}: {e}")),
        };
        listeners.extend(text.lines().skip(1).filter_map(parse_listener));
    }
    Ok(listeners)
}

/// `sl local_address rem_address st ...`, addresses as hex `IP:PORT` with the IP in the
/// kernel's byte order (32-bit words, little-endian here); state 0A is LISTEN.
fn parse_listener(line: &str) -> Option<(std::net::IpAddr, u16)> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != "0A" {
        return None;
    }
    let (ip_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let words: Vec<u32> = (0..ip_hex.len() / 8)
        .map(|i| u32::from_str_radix(&ip_hex[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| w.swap_bytes().to_be_bytes())
        .collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some((ip, port))
}

/// The data directory had a node, and it is gone: its LOCK exists and nobody holds it. Looked
/// at without writing anything.
fn previous_node_gone(root: &Path) -> bool {
    File::open(root.join("LOCK")).is_ok_and(|lock| lock.try_lock().is_ok())
}

/// The shard count a start would settle on, read without writing anything: the data
/// directory's, or the one asked for, or one per core.
pub fn planned_shards(root: &Path, requested: Option<u16>) -> Result<u16, String> {
    Ok(match read_meta(root)? {
        Some((stored, _)) => stored.shards,
        None => requested.unwrap_or_else(default_shards),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_read_from_the_kernel_table() {
        let line = "   0: 0100007F:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 1 1";
        assert_eq!(
            parse_listener(line),
            Some(("127.0.0.1".parse().unwrap(), 7000))
        );
        let established =
            "   1: 0100007F:1B58 0100007F:E3BA 01 00000000:00000000 00:00000000 00000000 0 0 2 1";
        assert_eq!(parse_listener(established), None);
        let v6 = "   0: 00000000000000000000000001000000:1B58 00000000000000000000000000000000:0000 0A 0";
        assert_eq!(parse_listener(v6), Some(("::1".parse().unwrap(), 7000)));
        // A real listener is found.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = tcp_listeners().unwrap();
        assert!(found.iter().any(|(_, p)| *p == port), "{port} in {found:?}");
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// A directory of layout 2 is marked 3 when opened (an older binary then refuses it rather
    /// than cutting its log at the first format-3 record); one newer than this binary is refused.
    #[test]
    fn an_older_layout_is_marked_current_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(META_FILE),
            "tessera-data 2\nshards 1\nvnodes 64\n",
        )
        .unwrap();
        let data = DataDir::open(dir.path(), None, None).unwrap();
        assert_eq!((data.shards, data.vnodes), (1, 64));
        drop(data);
        let text = fs::read_to_string(dir.path().join(META_FILE)).unwrap();
        assert!(text.starts_with("tessera-data 3\n"), "{text}");
        fs::write(
            dir.path().join(META_FILE),
            "tessera-data 4\nshards 1\nvnodes 64\n",
        )
        .unwrap();
        let refused = DataDir::open(dir.path(), None, None).err().unwrap();
        assert!(
            refused.contains("data layout 4 is not supported"),
            "{refused}"
        );
    }
}
