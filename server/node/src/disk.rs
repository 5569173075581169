//! The shard's segment files on glommio DmaFiles (O_DIRECT): open and recover at start, perform
//! the store's flush plans, read records back.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};
use tessera_store::hint::{decode_hint, hint_file_name, HintFile};
use tessera_store::ondisk::{parse_segment_file_name, segment_file_name};
use tessera_store::{DiskRead, FlushPlan, FlushStep, Recovery, RecoveryAction, Store, StoreConfig};

/// Bytes read per request while replaying a segment.
const RECOVERY_READ_BYTES: usize = 8 * 1024 * 1024;
/// Bytes read per request when compaction reads a victim.
const COMPACTION_READ_BYTES: usize = 1024 * 1024;

pub struct Segments {
    dir: PathBuf,
    segment_size_bytes: u64,
    files: RefCell<BTreeMap<u32, Rc<DmaFile>>>,
}

fn io_error(what: &str, path: &Path, error: impl std::fmt::Display) -> String {
    format!("{what} {}: {error}", path.display())
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
        for (i, &id) in ids.iter().enumerate() {
            let file = segments.open(id, false).await?;
            let is_newest = i + 1 == ids.len();
            if let Some(hint) = (!is_newest).then(|| segments.read_hint(id)).flatten() {
                recovery.add_segment_hint(hint);
                segments.files.borrow_mut().insert(id, Rc::new(file));
                from_hints += 1;
                continue;
            }
            let bytes = read_whole(&file, &segments.path(id), RECOVERY_READ_BYTES).await?;
            let report = recovery
                .add_segment(id, &bytes, i + 1 == ids.len())
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            if let Some(reason) = &report.cut_reason {
                tracing::warn!(segment = %segments.path(id).display(), offset = report.end_offset,
                    cut_bytes = report.cut_bytes, "cut the log: {reason}");
            }
            segments.files.borrow_mut().insert(id, Rc::new(file));
        }
        tracing::info!(dir = %dir.display(), segments = ids.len(), from_hints, "replayed the log");
        let (store, actions) = recovery.finish(now_ms);
        for action in actions {
            let RecoveryAction::Truncate { segment, len_bytes } = action;
            segments.truncate(segment, len_bytes).await?;
        }
        Ok((segments, store))
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

    /// Writes a hint file: temp file, fsync, rename, on the blocking pool. Hints are advisory,
    /// so a failure is logged, not fatal.
    pub async fn write_hint(&self, segment: u32, bytes: Vec<u8>) {
        let path = self.dir.join(hint_file_name(segment));
        let result = glommio::executor()
            .spawn_blocking(move || {
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
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .dma_open(&path)
            .await
            .map_err(|e| io_error("cannot open", &path, e))
    }

    fn file(&self, segment: u32) -> Result<Rc<DmaFile>, String> {
        self.files
            .borrow()
            .get(&segment)
            .cloned()
            .ok_or_else(|| format!("segment {segment} is not open"))
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

    /// Reads a whole segment (for compaction).
    pub async fn read_segment(&self, segment: u32) -> Result<Vec<u8>, String> {
        let file = self.file(segment)?;
        // Small reads: each one is copied out on the shard's thread, which must not stall.
        read_whole(&file, &self.path(segment), COMPACTION_READ_BYTES).await
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

async fn read_whole(file: &DmaFile, path: &Path, read_bytes: usize) -> Result<Vec<u8>, String> {
    let size = file
        .file_size()
        .await
        .map_err(|e| io_error("cannot stat", path, e))?;
    let mut bytes = Vec::with_capacity(size as usize);
    while (bytes.len() as u64) < size {
        let want = read_bytes.min((size - bytes.len() as u64) as usize);
        let chunk = file
            .read_at_aligned(bytes.len() as u64, want.next_multiple_of(4096))
            .await
            .map_err(|e| io_error("cannot read", path, e))?;
        if chunk.is_empty() {
            break;
        }
        bytes.extend_from_slice(&chunk[..chunk.len().min(want)]);
    }
    Ok(bytes)
}
