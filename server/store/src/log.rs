//! The shard's log tail in memory, and the plans that move it to disk.
//!
//! Appends go to the active chunk: a buffer that mirrors the active segment from the start of its
//! last partially-written 4 KiB block. A flush writes every block that holds unwritten bytes,
//! rewriting the last partial block each time (the bytes already on disk are rewritten with the
//! same contents, so a torn rewrite can only damage bytes that were never acknowledged, given
//! that the disk writes 512-byte sectors atomically). When a record does not fit in the active
//! segment, the chunk is sealed and a new segment begins; a sealed chunk is always written and
//! synced before any write to the next segment, so only the newest segment can have a torn tail.

use std::collections::VecDeque;

use crate::ondisk::{align_down, align_up};

/// One segment's bytes that are not yet known to be on disk and synced.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub segment: u32,
    /// File offset of `bytes[0]`; always block-aligned.
    pub base: u64,
    pub bytes: Vec<u8>,
    /// File offset up to which bytes have been written.
    pub written_end: u64,
    /// File offset up to which bytes have been written and synced.
    pub synced_end: u64,
    /// The segment file exists (its creation is durable).
    pub created: bool,
    /// No more appends: the next segment has begun.
    pub sealed: bool,
}

impl Chunk {
    pub fn new(segment: u32) -> Chunk {
        Chunk {
            segment,
            base: 0,
            bytes: Vec::new(),
            written_end: 0,
            synced_end: 0,
            created: false,
            sealed: false,
        }
    }

    pub fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    fn needs_write(&self) -> bool {
        !self.created || self.written_end < self.end()
    }

    fn needs_sync(&self) -> bool {
        self.synced_end < self.end()
    }
}

/// One step of a flush; the shell performs the steps in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushStep {
    /// Create the segment file, preallocate it to the segment size, and make its directory entry
    /// durable before reporting done.
    CreateSegment { segment: u32 },
    /// Write `len` bytes at `offset` (both block-aligned); the bytes come from
    /// `Store::copy_flush_bytes`, taken before the shell awaits anything.
    Write { segment: u32, offset: u64, len: u64 },
    /// fdatasync the segment: every earlier write to it must be durable before this is done.
    Sync { segment: u32 },
}

/// A flush the shell must perform, then report with `Store::handle_flush_done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushPlan {
    pub steps: Vec<FlushStep>,
    /// Every append with a sequence number up to this is covered.
    pub(crate) seq_covered: u64,
    /// The plan ends with a sync of the active segment: everything covered becomes durable.
    pub sync: bool,
    /// (segment, end offset) written by this plan.
    pub(crate) ends: Vec<(u32, u64)>,
}

#[derive(Debug)]
pub(crate) struct LogTail {
    pub chunks: VecDeque<Chunk>,
    /// The buffer of the last chunk that was written and dropped, emptied, for the next
    /// segment's chunk: a fresh one page-faults as it grows and freeing one unmaps it, each
    /// a stall of a few hundred microseconds on the shard's thread at every segment roll.
    pub spare: Vec<u8>,
}

impl LogTail {
    pub fn active(&mut self) -> &mut Chunk {
        self.chunks
            .back_mut()
            .expect("there is always an active chunk")
    }

    pub fn active_ref(&self) -> &Chunk {
        self.chunks.back().expect("there is always an active chunk")
    }

    pub fn unwritten_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| c.end() - c.written_end.max(c.base))
            .sum()
    }

    pub fn needs_write(&self) -> bool {
        self.chunks.iter().any(Chunk::needs_write)
    }

    pub fn has_sealed(&self) -> bool {
        self.chunks.iter().any(|c| c.sealed)
    }

    /// Seals the active chunk and starts `next_segment`.
    pub fn roll(&mut self, next_segment: u32) {
        self.active().sealed = true;
        let mut chunk = Chunk::new(next_segment);
        chunk.bytes = std::mem::take(&mut self.spare);
        self.chunks.push_back(chunk);
    }

    /// The steps that write every unwritten byte, syncing sealed chunks always and the active
    /// one when `sync` is set, and the (segment, end) each touched chunk reaches.
    pub fn plan(&self, sync: bool) -> (Vec<FlushStep>, Vec<(u32, u64)>) {
        let mut steps = Vec::new();
        let mut ends = Vec::new();
        for chunk in &self.chunks {
            let steps_before = steps.len();
            if !chunk.created {
                steps.push(FlushStep::CreateSegment {
                    segment: chunk.segment,
                });
            }
            if chunk.written_end < chunk.end() {
                let offset = align_down(chunk.written_end.max(chunk.base));
                let len = align_up(chunk.end()) - offset;
                steps.push(FlushStep::Write {
                    segment: chunk.segment,
                    offset,
                    len,
                });
            }
            if (chunk.sealed || sync) && chunk.needs_sync() {
                steps.push(FlushStep::Sync {
                    segment: chunk.segment,
                });
            }
            if steps.len() > steps_before {
                ends.push((chunk.segment, chunk.end()));
            }
        }
        (steps, ends)
    }

    /// Records that a plan's steps completed.
    pub fn complete(&mut self, plan: &FlushPlan) {
        for &(segment, end) in &plan.ends {
            let Some(chunk) = self.chunks.iter_mut().find(|c| c.segment == segment) else {
                continue;
            };
            chunk.created = true;
            chunk.written_end = chunk.written_end.max(end);
            let synced = plan.steps.contains(&FlushStep::Sync { segment });
            if synced {
                chunk.synced_end = chunk.synced_end.max(end);
            }
        }
        while let Some(done) = self
            .chunks
            .iter()
            .position(|c| c.sealed && !c.needs_write() && !c.needs_sync())
        {
            let mut bytes = self.chunks.remove(done).expect("found").bytes;
            if bytes.capacity() > self.spare.capacity() {
                bytes.clear();
                self.spare = bytes;
            }
        }
        let active = self.active();
        // Keep only the last partial block of written bytes: readers find older records on disk.
        let keep_from = align_down(active.written_end);
        if keep_from > active.base {
            let drop = (keep_from - active.base) as usize;
            active.bytes.drain(..drop);
            active.base = keep_from;
        }
    }

    /// Copies the bytes of a planned write into `out`, zero-filling past the appended end.
    pub fn copy_bytes(&self, segment: u32, offset: u64, out: &mut [u8]) {
        let chunk = self
            .chunks
            .iter()
            .find(|c| c.segment == segment)
            .expect("planned chunk");
        let start = (offset - chunk.base) as usize;
        let available = chunk.bytes.len().saturating_sub(start).min(out.len());
        out[..available].copy_from_slice(&chunk.bytes[start..start + available]);
        out[available..].fill(0);
    }

    /// The bytes of a record if they are still held in memory.
    pub fn record_bytes(&self, segment: u32, offset: u64, len: usize) -> Option<&[u8]> {
        let chunk = self.chunks.iter().find(|c| c.segment == segment)?;
        if offset < chunk.base || offset + len as u64 > chunk.end() {
            return None;
        }
        let start = (offset - chunk.base) as usize;
        Some(&chunk.bytes[start..start + len])
    }
}
