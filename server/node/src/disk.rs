//! The shard's segment files on glommio DmaFiles (O_DIRECT): open and recover at start, perform
//! the store's flush plans, read records back.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::{DmaFile, OpenOptions};

use crate::pace::Pacer;
use tessera_store::hint::{decode_hint, encode_hint, hint_file_name, HintFile};
use tessera_store::ondisk::{parse_segment_file_name, segment_file_name};
use tessera_store::{DiskRead, FlushPlan, FlushStep, Recovery, RecoveryAction, Store, StoreConfig};

/// Bytes read per request when compaction reads a victim: each is copied on the shard's
/// thread (~25 us for 256 KiB), so requests never wait long behind one.
const COMPACTION_READ_BYTES: usize = 256 * 1024;

pub struct Segments {
    dir: PathBuf,
    segment_size_bytes: u64,
    files: RefCell<BTreeMap<u32, Rc<DmaFile>>>,
}

/// A segment as recovery reads it: its hint, or its whole log.
enum Loaded {
    Hint(HintFile),
    Log(glommio::io::ReadResult),
}

fn io_error(what: &str, path: &Path, error: impl std::fmt::Display) -> String {
    format!("{what} {}: {error}", path.display())
}

/// How long a restart waits for a dead predecessor's writes to a segment to finish.
const SEGMENT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Takes an exclusive flock on a segment through the very file description its I/O goes
/// through, waiting while another description holds it.
///
/// Why: after kill -9, writes the dead process had submitted can still be in flight, queued in
/// the block layer (seconds on a busy or throttled device): io_uring's requests keep their file
/// descriptions open until they complete, while the data directory's LOCK is released at once.
/// A restart that read the segment meanwhile would see a torn tail that is not torn yet, cut it,
/// and the late writes would then land over its own. An flock lives as long as the description,
/// so it is held until the last of those writes completes: recovery waits for it.
async fn lock_segment(file: &DmaFile, path: &Path) -> Result<(), String> {
    use nix::fcntl::{flock, FlockArg};
    use std::os::fd::AsRawFd;
    let started = Instant::now();
    let mut warned = false;
    loop {
        match flock(file.as_raw_fd(), FlockArg::LockExclusiveNonblock) {
            Ok(()) => {
                if warned {
                    tracing::info!(segment = %path.display(), waited_ms = started.elapsed().as_millis() as u64,
                        "the previous process's writes finished");
                }
                return Ok(());
            }
            Err(nix::errno::Errno::EWOULDBLOCK) if started.elapsed() < SEGMENT_LOCK_WAIT => {
                if !warned {
                    tracing::warn!(segment = %path.display(),
                        "waiting for a previous process's writes to this segment to finish");
                    warned = true;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => {
                return Err(io_error(
                    "cannot lock (another process still writes it?)",
                    path,
                    error,
                ))
            }
        }
    }
}

/// Works around glommio's poll-queue probe (upstream issue #605, see PLATFORM.md): the first
/// DmaFile a thread opens on a device is read at offset 0 to decide whether the device supports
/// polled I/O, and an empty new file answers "yes" wrongly, after which every DmaFile read fails
/// with EOPNOTSUPP. Opening a non-empty file first caches the right answer for this thread.
pub async fn probe_workaround(dir: &Path) -> Result<(), String> {
    let path = dir.join(".io-probe");
    std::fs::write(&path, vec![0x55u8; 4096]).map_err(|e| io_error("cannot write", &path, e))?;
    let file = DmaFile::open(&path)
        .await
        .map_err(|e| io_error("cannot open", &path, e))?;
    let read = file.read_at(0, 4096).await;
    let _ = file.close().await;
    read.map(|_| ())
        .map_err(|e| io_error("probe read of", &path, e))
}

impl Segments {
    /// Replays every segment in `dir` into a store and performs recovery's repairs.
    pub async fn recover(
        dir: &Path,
        config: StoreConfig,
        repair: bool,
        now_ms: u64,
    ) -> Result<(Segments, Store), String> {
        let mut ids: Vec<u32> = std::fs::read_dir(dir)
            .map_err(|e| io_error("cannot list", dir, e))?
            .filter_map(|entry| {
                entry
                    .ok()?
                    .file_name()
                    .to_str()
                    .and_then(parse_segment_file_name)
            })
            .collect();
        ids.sort_unstable();
        let segments = Segments {
            dir: dir.to_path_buf(),
            segment_size_bytes: config.segment_size_bytes,
            files: RefCell::new(BTreeMap::new()),
        };
        let expected_log_bytes = ids.len() as u64 * config.segment_size_bytes;
        let mut recovery = Recovery::new(config, repair);
        recovery.expect_log_bytes(expected_log_bytes);
        let mut from_hints = 0;
        // Segment i+1 is read while segment i is replayed: the replay is CPU work on this
        // thread and the read is the device's, so a restart takes about the longer of the two
        // rather than their sum.
        let mut files = Vec::with_capacity(ids.len());
        for &id in &ids {
            let file = Rc::new(segments.open(id, false).await?);
            segments.files.borrow_mut().insert(id, file.clone());
            files.push(file);
        }
        // Everything a read needs is known before its first poll, so that first poll queues all
        // of the segment's reads at once.
        let load = |i: usize| {
            let (segments, id, file) = (&segments, ids[i], files[i].clone());
            let hint = (i + 1 < ids.len())
                .then(|| segments.read_hint(id))
                .flatten();
            let path = segments.path(id);
            Box::pin(futures::future::maybe_done(async move {
                if let Some(hint) = hint {
                    return Ok(Loaded::Hint(hint));
                }
                let size = std::fs::metadata(&path)
                    .map_err(|e| io_error("cannot stat", &path, e))?
                    .len();
                // One request for the whole segment: the device splits it, and the records
                // are parsed straight from the read's buffer, without a copy.
                let bytes = file
                    .read_at_aligned(0, (size as usize).next_multiple_of(4096))
                    .await
                    .map_err(|e| io_error("cannot read", &path, e))?;
                Ok::<_, String>(Loaded::Log(bytes))
            }))
        };
        let mut next = (!ids.is_empty()).then(|| load(0));
        let (mut replay_time, mut wait_time) = (Duration::ZERO, Duration::ZERO);
        for i in 0..ids.len() {
            let mut current = next.take().expect("loaded in order");
            let waited = Instant::now();
            current.as_mut().await;
            wait_time += waited.elapsed();
            let loaded = current.as_mut().take_output().expect("done")?;
            let id = ids[i];
            if i + 1 < ids.len() {
                let mut ahead = load(i + 1);
                // Queue its reads, and let the reactor submit them before the replay.
                let _ = futures::poll!(ahead.as_mut());
                glommio::timer::sleep(Duration::from_micros(1)).await;
                next = Some(ahead);
            }
            let replayed = Instant::now();
            let loaded = match loaded {
                Loaded::Hint(hint) => match recovery.add_segment_hint(hint) {
                    Ok(_) => {
                        from_hints += 1;
                        None
                    }
                    Err(_) => {
                        tracing::warn!(segment = %segments.path(id).display(),
                            "ignoring a hint that names vnodes past the directory's count: scanning");
                        Some(Loaded::Log(segments.read_whole(id, &files[i]).await?))
                    }
                },
                log => Some(log),
            };
            match loaded {
                None | Some(Loaded::Hint(_)) => {}
                Some(Loaded::Log(bytes)) => {
                    let report = recovery
                        .add_segment(id, &bytes, i + 1 == ids.len())
                        .map_err(|e| format!("{}: {e}", dir.display()))?;
                    if let Some(reason) = &report.cut_reason {
                        tracing::warn!(segment = %segments.path(id).display(), offset = report.end_offset,
                            cut_bytes = report.cut_bytes, "cut the log: {reason}");
                    }
                }
            }
            replay_time += replayed.elapsed();
        }
        drop(next);
        tracing::info!(dir = %dir.display(), segments = ids.len(), from_hints,
            replay_ms = replay_time.as_millis(), read_wait_ms = wait_time.as_millis(), "replayed the log");
        let (store, actions) = recovery.finish(now_ms);
        for action in actions {
            match action {
                RecoveryAction::Truncate { segment, len_bytes } => {
                    segments.truncate(segment, len_bytes).await?
                }
                RecoveryAction::Sync { segment } => segments.sync(segment).await?,
            }
        }
        Ok((segments, store))
    }

    /// A segment's whole contents.
    async fn read_whole(
        &self,
        segment: u32,
        file: &DmaFile,
    ) -> Result<glommio::io::ReadResult, String> {
        let path = self.path(segment);
        let size = std::fs::metadata(&path)
            .map_err(|e| io_error("cannot stat", &path, e))?
            .len();
        file.read_at_aligned(0, (size as usize).next_multiple_of(4096))
            .await
            .map_err(|e| io_error("cannot read", &path, e))
    }

    /// The hint of a segment, if it exists and is intact (else the segment is scanned).
    fn read_hint(&self, segment: u32) -> Option<HintFile> {
        let path = self.dir.join(hint_file_name(segment));
        let bytes = std::fs::read(&path).ok()?;
        match decode_hint(&bytes) {
            Ok(hint) if hint.segment == segment => Some(hint),
            Ok(_) => None,
            Err(reason) => {
                tracing::warn!(hint = %path.display(), "ignoring a damaged hint ({reason}): scanning its segment");
                None
            }
        }
    }

    /// Encodes and writes a hint file (temp file, fsync, rename) on the blocking pool. Hints are advisory,
    /// so a failure is logged, not fatal.
    pub async fn write_hint(&self, hint: HintFile) {
        let path = self.dir.join(hint_file_name(hint.segment));
        let result = glommio::executor()
            .spawn_blocking(move || {
                let bytes = encode_hint(&hint);
                let temp = path.with_extension("hint.tmp");
                let write = || -> std::io::Result<()> {
                    let mut file = std::fs::File::create(&temp)?;
                    std::io::Write::write_all(&mut file, &bytes)?;
                    file.sync_all()?;
                    std::fs::rename(&temp, &path)
                };
                write().map_err(|e| io_error("cannot write", &path, e))
            })
            .await;
        if let Err(error) = result {
            tracing::warn!("hint not written (restart will scan the segment): {error}");
        }
    }

    fn path(&self, segment: u32) -> PathBuf {
        self.dir.join(segment_file_name(segment))
    }

    async fn open(&self, segment: u32, create: bool) -> Result<DmaFile, String> {
        let path = self.path(segment);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .dma_open(&path)
            .await
            .map_err(|e| io_error("cannot open", &path, e))?;
        lock_segment(&file, &path).await?;
        Ok(file)
    }

    fn file(&self, segment: u32) -> Result<Rc<DmaFile>, String> {
        self.files
            .borrow()
            .get(&segment)
            .cloned()
            .ok_or_else(|| format!("segment {segment} is not open"))
    }

    async fn sync(&self, segment: u32) -> Result<(), String> {
        let file = self.file(segment)?;
        file.fdatasync()
            .await
            .map_err(|e| io_error("cannot sync", &self.path(segment), e))
    }

    async fn truncate(&self, segment: u32, len_bytes: u64) -> Result<(), String> {
        let file = self.file(segment)?;
        let path = self.path(segment);
        file.truncate(len_bytes)
            .await
            .map_err(|e| io_error("cannot truncate", &path, e))?;
        file.pre_allocate(self.segment_size_bytes, false)
            .await
            .map_err(|e| io_error("cannot preallocate", &path, e))?;
        file.fdatasync()
            .await
            .map_err(|e| io_error("cannot sync", &path, e))
    }

    async fn create(&self, segment: u32) -> Result<(), FlushFailure> {
        let path = self.path(segment);
        // Not create_new: an earlier attempt may have created the file and then found the disk
        // full; the retry preallocates it again.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&path)
            .await
            .map_err(|e| FlushFailure::of("cannot create", &path, e))?;
        file.pre_allocate(self.segment_size_bytes, false)
            .await
            .map_err(|e| FlushFailure::of("cannot preallocate", &path, e))?;
        file.fdatasync()
            .await
            .map_err(|e| FlushFailure::of("cannot sync", &path, e))?;
        // The new name must be durable before any write in the file counts as durable. glommio's
        // Directory::open fails with EBADF here, so the sync goes through std, on glommio's
        // blocking thread pool so that the shard's thread keeps serving.
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || sync_directory(&dir))
            .await
            .map_err(FlushFailure::fatal)?;
        self.files.borrow_mut().insert(segment, Rc::new(file));
        Ok(())
    }

    /// Performs the steps of a flush plan in order. The bytes of each write are copied out of
    /// the store before the first await, as `copy_flush_bytes` requires.
    pub async fn perform(
        &self,
        store: &RefCell<Store>,
        plan: &FlushPlan,
    ) -> Result<(), FlushFailure> {
        for step in &plan.steps {
            match *step {
                FlushStep::CreateSegment { segment } => self.create(segment).await?,
                FlushStep::Write {
                    segment,
                    offset,
                    len,
                } => {
                    let file = self.file(segment).map_err(FlushFailure::fatal)?;
                    let mut buffer = file.alloc_dma_buffer(len as usize);
                    store
                        .borrow()
                        .copy_flush_bytes(segment, offset, buffer.as_bytes_mut());
                    file.write_at(buffer, offset)
                        .await
                        .map_err(|e| FlushFailure::of("write failed on", &self.path(segment), e))?;
                }
                FlushStep::Sync { segment } => {
                    self.file(segment)
                        .map_err(FlushFailure::fatal)?
                        .fdatasync()
                        .await
                        .map_err(|e| {
                            FlushFailure::of("fdatasync failed on", &self.path(segment), e)
                        })?;
                }
            }
        }
        Ok(())
    }

    /// Reads a whole segment into `bytes` (for compaction), replacing what it held.
    pub async fn read_segment(
        &self,
        segment: u32,
        bytes: &mut Vec<u8>,
        pacer: &mut Pacer,
    ) -> Result<(), String> {
        let file = self.file(segment)?;
        let path = self.path(segment);
        let size = file
            .file_size()
            .await
            .map_err(|e| io_error("cannot stat", &path, e))?;
        bytes.clear();
        // Small reads, one at a time: each is copied out on the shard's thread, which must not
        // stall, and the device stays free for the foreground's reads.
        for offset in (0..size).step_by(COMPACTION_READ_BYTES) {
            let want = (COMPACTION_READ_BYTES as u64).min(size - offset) as usize;
            let chunk = file
                .read_at_aligned(offset, want.next_multiple_of(4096))
                .await
                .map_err(|e| io_error("cannot read", &path, e))?;
            bytes.extend_from_slice(&chunk[..chunk.len().min(want)]);
            if chunk.len() < want {
                break;
            }
            let wait = pacer.charge(want as u64, Instant::now());
            if !wait.is_zero() {
                glommio::timer::sleep(wait).await;
            }
        }
        Ok(())
    }

    /// Deletes a compacted segment. Reads still in flight keep their open file handle. The
    /// unlink and the directory sync run on glommio's blocking thread pool, so that the shard's
    /// thread keeps serving meanwhile.
    pub async fn delete(&self, segment: u32) -> Result<(), String> {
        self.files.borrow_mut().remove(&segment);
        let (path, dir) = (self.path(segment), self.dir.clone());
        glommio::executor()
            .spawn_blocking(move || {
                let _ = std::fs::remove_file(path.with_extension("hint"));
                std::fs::remove_file(&path).map_err(|e| io_error("cannot delete", &path, e))?;
                sync_directory(&dir)
            })
            .await
    }

    /// Reads the bytes of one record.
    pub async fn read(&self, read: &DiskRead) -> Result<Vec<u8>, String> {
        let file = self.file(read.segment)?;
        let result = file
            .read_at(read.offset, read.len)
            .await
            .map_err(|e| io_error("read failed on", &self.path(read.segment), e))?;
        if result.len() < read.len {
            return Err(format!(
                "short read of segment {} at {}",
                read.segment, read.offset
            ));
        }
        Ok(result.to_vec())
    }
}

/// Why a flush failed: a full disk (retried later, reads go on) or anything else (the shard
/// stops writing: the state of the file is unknown).
#[derive(Debug)]
pub struct FlushFailure {
    pub reason: String,
    pub disk_full: bool,
}

impl FlushFailure {
    fn fatal(reason: String) -> FlushFailure {
        FlushFailure {
            reason,
            disk_full: false,
        }
    }

    fn of<T>(what: &str, path: &Path, error: glommio::GlommioError<T>) -> FlushFailure {
        let error = std::io::Error::from(error);
        // glommio keeps the kind but not always the errno.
        let disk_full = error.raw_os_error() == Some(libc::ENOSPC)
            || error.kind() == std::io::ErrorKind::StorageFull;
        FlushFailure {
            reason: io_error(what, path, error),
            disk_full,
        }
    }
}

fn sync_directory(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| io_error("cannot sync directory", dir, e))
}
