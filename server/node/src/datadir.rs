//! The data directory: its lock, its metadata, and one folder per shard.
//!
//! ```text
//! DATA_DIR/
//!   LOCK                 held (flock) by the running node: two nodes never share a directory
//!   node.meta            "tessera-data 1\nshards N\n": the layout version and the shard count
//!   shard-000/segment-0000000001.log ...
//! ```
//!
//! The shard count is fixed when the directory is created, because vnode -> shard decides which
//! shard's log holds each key. Moving vnodes between shards is rebalancing (a later issue).

use std::fs::{self, File};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

const META_FILE: &str = "node.meta";
const META_VERSION: u32 = 1;

pub struct DataDir {
    pub root: PathBuf,
    pub shards: u16,
    _lock: File,
}

impl DataDir {
    /// Opens (or creates) the directory, takes its lock, and settles the shard count.
    pub fn open(root: &Path, requested_shards: Option<u16>) -> Result<DataDir, String> {
        fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let lock = File::create(root.join("LOCK"))
            .map_err(|e| format!("cannot create {}/LOCK: {e}", root.display()))?;
        lock.try_lock().map_err(|_| {
            format!(
                "{} is in use by another tessera-server (LOCK is held)",
                root.display()
            )
        })?;
        let shards = match read_meta(root)? {
            Some(stored) => match requested_shards {
                Some(wanted) if wanted != stored => {
                    return Err(format!(
                        "{} was created with {stored} shards; --shards {wanted} would re-home its keys (omit --shards or pass --shards {stored})",
                        root.display()
                    ))
                }
                _ => stored,
            },
            None => {
                let shards = requested_shards.unwrap_or_else(default_shards);
                write_meta(root, shards)?;
                shards
            }
        };
        if shards == 0 || shards > tessera_schema::placement::VNODES {
            return Err(format!("shards must be between 1 and 256, not {shards}"));
        }
        for shard in 0..shards {
            let dir = shard_dir(root, shard);
            fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            shards,
            _lock: lock,
        })
    }
}

pub fn shard_dir(root: &Path, shard: u16) -> PathBuf {
    root.join(format!("shard-{shard:03}"))
}

fn default_shards() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(256) as u16)
}

fn read_meta(root: &Path) -> Result<Option<u16>, String> {
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
    if version != META_VERSION {
        return Err(format!(
            "{}: data layout {version} is not supported",
            path.display()
        ));
    }
    let shards = lines
        .next()
        .and_then(|l| l.strip_prefix("shards "))
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    Ok(Some(shards))
}

fn write_meta(root: &Path, shards: u16) -> Result<(), String> {
    let path = root.join(META_FILE);
    let temp = root.join("node.meta.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        write!(file, "tessera-data {META_VERSION}\nshards {shards}\n")?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        File::open(root)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// With port 0, finds a port P such that P and the shard ports P+1..=P+shards are all free.
pub fn resolve_listen(listen: SocketAddr, shards: u16) -> Result<SocketAddr, String> {
    if listen.port() != 0 {
        if u32::from(listen.port()) + u32::from(shards) > 65535 {
            return Err(format!(
                "port {} leaves no room for {shards} shard ports",
                listen.port()
            ));
        }
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
