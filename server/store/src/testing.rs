//! `MemDisk`: an in-memory disk that runs a store's plans and can crash, tear writes and fail
//! syncs. Used by this crate's model test and by anyone testing on top of the store.
//!
//! Crash model: writes since a file's last sync are each kept, dropped, or torn (an arbitrary
//! subset of their 512-byte sectors reaches the platter), independently and in order. Synced
//! writes always survive. Creating a segment is durable at once (the shell syncs the directory).

use std::collections::BTreeMap;

use crate::config::StoreConfig;
use crate::log::{FlushPlan, FlushStep};
use crate::recovery::{CorruptSegment, Recovery, RecoveryAction, SegmentReport};
use crate::store::{DiskRead, Store};

const SECTOR_BYTES: usize = 512;

#[derive(Debug, Default, Clone)]
struct MemFile {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<(usize, Vec<u8>)>,
}

/// A tiny deterministic generator (xorshift64*), so that the crate needs no RNG dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Debug, Default)]
pub struct MemDisk {
    files: BTreeMap<u32, MemFile>,
    /// Hint files by segment (written whole and durable at once: they are advisory).
    hints: BTreeMap<u32, Vec<u8>>,
    /// Recovery reads hints where they are valid (else it scans every segment).
    pub use_hints: bool,
    /// The next fdatasync fails (EIO).
    pub fail_next_sync: bool,
    /// Creating segments fails with ENOSPC while this is set.
    pub disk_full: bool,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// Performs every step of `plan` and reports the outcome to the store.
    pub fn perform(
        &mut self,
        store: &mut Store,
        plan: &FlushPlan,
        now_ms: u64,
    ) -> Result<(), String> {
        let segment_size = store.config().segment_size_bytes as usize;
        for step in &plan.steps {
            match *step {
                FlushStep::CreateSegment { segment } => {
                    if self.disk_full {
                        let reason = format!("preallocating segment {segment}: ENOSPC");
                        store.handle_disk_full(plan, reason.clone(), now_ms);
                        return Err(reason);
                    }
                    let zeros = vec![0; segment_size];
                    self.files.insert(
                        segment,
                        MemFile {
                            durable: zeros.clone(),
                            current: zeros,
                            unsynced: Vec::new(),
                        },
                    );
                }
                FlushStep::Write {
                    segment,
                    offset,
                    len,
                } => {
                    let mut bytes = vec![0; len as usize];
                    store.copy_flush_bytes(segment, offset, &mut bytes);
                    let file = self
                        .files
                        .get_mut(&segment)
                        .expect("write to a created segment");
                    let at = offset as usize;
                    file.current[at..at + bytes.len()].copy_from_slice(&bytes);
                    file.unsynced.push((at, bytes));
                }
                FlushStep::Sync { segment } => {
                    if std::mem::take(&mut self.fail_next_sync) {
                        let reason = format!("fdatasync of segment {segment}: EIO");
                        store.handle_flush_failed(plan, reason.clone());
                        return Err(reason);
                    }
                    let file = self
                        .files
                        .get_mut(&segment)
                        .expect("sync of a created segment");
                    file.durable.clone_from(&file.current);
                    file.unsynced.clear();
                }
            }
        }
        store.handle_flush_done(plan, now_ms);
        Ok(())
    }

    /// Runs flushes until none is due at `now_ms`, then writes the hints that became ready.
    pub fn flush_due(&mut self, store: &mut Store, now_ms: u64) -> Result<(), String> {
        while let Some(plan) = store.poll_flush(now_ms) {
            self.perform(store, &plan, now_ms)?;
        }
        while let Some(hint) = store.poll_hint() {
            let (segment, bytes) = (hint.segment, crate::hint::encode_hint(&hint));
            self.hints.insert(segment, bytes);
        }
        Ok(())
    }

    pub fn hint_segments(&self) -> Vec<u32> {
        self.hints.keys().copied().collect()
    }

    /// Flips one byte of a hint file.
    pub fn corrupt_hint(&mut self, segment: u32, offset: usize) {
        let hint = self.hints.get_mut(&segment).expect("hint exists");
        let at = offset % hint.len();
        hint[at] ^= 0x5A;
    }

    /// The bytes of a disk read (what the device holds now, synced or not).
    pub fn read(&self, read: &DiskRead) -> Vec<u8> {
        let file = &self.files[&read.segment];
        let at = read.offset as usize;
        file.current[at..at + read.len].to_vec()
    }

    /// Power loss: every unsynced write is kept, dropped or torn, at random.
    pub fn crash(&mut self, rng: &mut Rng) {
        for file in self.files.values_mut() {
            let mut image = file.durable.clone();
            for (at, bytes) in file.unsynced.drain(..) {
                match rng.below(3) {
                    0 => image[at..at + bytes.len()].copy_from_slice(&bytes),
                    1 => {}
                    _ => {
                        for (i, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
                            if rng.below(2) == 0 {
                                let start = at + i * SECTOR_BYTES;
                                image[start..start + sector.len()].copy_from_slice(sector);
                            }
                        }
                    }
                }
            }
            file.durable.clone_from(&image);
            file.current = image;
        }
    }

    /// Flips one byte of a segment, on the platter and in the cache.
    pub fn corrupt(&mut self, segment: u32, offset: usize) {
        let file = self.files.get_mut(&segment).expect("segment exists");
        file.durable[offset] ^= 0x5A;
        file.current[offset] ^= 0x5A;
    }

    /// A segment's whole contents, as the device holds them now.
    pub fn segment_bytes(&self, segment: u32) -> Vec<u8> {
        self.files[&segment].current.clone()
    }

    /// Deletes a segment file and its hint (compaction). Durable at once, like creation.
    pub fn delete_segment(&mut self, segment: u32) {
        self.files.remove(&segment);
        self.hints.remove(&segment);
    }

    /// Runs one whole compaction if one is due: relocation in small steps, a flush, deletion.
    pub fn compact(&mut self, store: &mut Store, now_ms: u64) -> Result<Option<u32>, String> {
        let Some(victim) = store.poll_compaction() else {
            return Ok(None);
        };
        let bytes = self.segment_bytes(victim);
        let mut offset = 0;
        while let Some(next) = store
            .relocate(victim, &bytes, offset, 16 * 1024, now_ms)
            .map_err(|e| e.to_string())?
        {
            offset = next;
            self.flush_due(store, now_ms)?;
        }
        self.flush_due(store, now_ms)?;
        while let Some(segment) = store.poll_segment_delete() {
            self.delete_segment(segment);
        }
        Ok(Some(victim))
    }

    pub fn segments(&self) -> Vec<u32> {
        self.files.keys().copied().collect()
    }

    /// Restart: recovers a store from what is on the platter and applies its repairs.
    pub fn recover(
        &mut self,
        config: StoreConfig,
        repair: bool,
        now_ms: u64,
    ) -> Result<(Store, Vec<SegmentReport>), CorruptSegment> {
        for file in self.files.values_mut() {
            file.current.clone_from(&file.durable);
            file.unsynced.clear();
        }
        let mut recovery = Recovery::new(config, repair);
        recovery.expect_log_bytes(self.files.values().map(|f| f.durable.len() as u64).sum());
        let newest = self.files.keys().next_back().copied();
        let mut reports = Vec::new();
        for (&segment, file) in &self.files {
            let is_newest = Some(segment) == newest;
            let hint = self
                .hints
                .get(&segment)
                .filter(|_| self.use_hints && !is_newest);
            let replayed = match hint.map(|bytes| crate::hint::decode_hint(bytes)) {
                Some(Ok(hint)) if hint.segment == segment => recovery.add_segment_hint(hint).ok(),
                _ => None,
            };
            match replayed {
                Some(report) => reports.push(report),
                None => reports.push(recovery.add_segment(segment, &file.durable, is_newest)?),
            }
        }
        let (store, actions) = recovery.finish(now_ms);
        for action in actions {
            // After `crash` every byte left is durable: a sync has nothing to do.
            let RecoveryAction::Truncate { segment, len_bytes } = action else {
                continue;
            };
            let file = self.files.get_mut(&segment).expect("segment exists");
            file.durable[len_bytes as usize..].fill(0);
            file.current.clone_from(&file.durable);
        }
        Ok((store, reports))
    }
}
