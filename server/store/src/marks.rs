//! Transfer marks: what a replica must remember across a restart about a state transfer it
//! was receiving (`ondisk.rs` has the record).
//!
//! A transfer's values raise a vnode's position as they are applied, but the deletes come
//! last, with the keep list. A replica that restarts between the two recovers the values'
//! position and nothing says that deletes are missing: its predecessor, restarted too, would
//! resend from the queue, which does not carry them (simulator seed 647). So the receiver logs
//! a `started` mark before it applies the first part and a `done` mark after the last; after a
//! restart, a vnode whose newest mark is `started` was cut short, and the replication core
//! asks for another transfer before it claims or serves anything past the mark's position.
//!
//! Marks are in log order like every record, so a surviving value implies a surviving
//! `started` mark before it. Compaction copies a vnode's newest mark forward and drops older
//! ones (a copy lands after everything else, so it stays the newest); a `done` mark is kept for
//! as long as it is the newest, so an older `started` mark left in an uncompacted segment never
//! reads as the newest.

use crate::replicated::Position;

use crate::ondisk::{RecordHeader, MARK_TRANSFER_DONE, MARK_TRANSFER_STARTED};
use crate::store::{Store, WriteError};

/// The newest transfer mark of a vnode, and where it lies in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TransferMark {
    pub started: bool,
    pub seq: u64,
    pub segment: u32,
    pub offset: u64,
}

impl Store {
    /// Logs that a transfer into `vnode` starts with the vnode at `seq`.
    pub fn mark_transfer_started(&mut self, vnode: u16, seq: u64) -> Result<(), WriteError> {
        self.check_writable()?;
        let header = RecordHeader::transfer_mark(vnode, seq, 0);
        self.append_mark(&header, MARK_TRANSFER_STARTED);
        Ok(())
    }

    /// Logs that a transfer into `vnode` brought it whole to `through`; the mark carries that
    /// position, so a restart recovers it even if no record of the transfer has it.
    pub fn mark_transfer_done(&mut self, vnode: u16, through: Position) -> Result<(), WriteError> {
        self.check_writable()?;
        let header = RecordHeader::transfer_mark(vnode, through.seq, through.version);
        self.append_mark(&header, MARK_TRANSFER_DONE);
        Ok(())
    }

    /// The position where a transfer into `vnode` started, if the newest mark says one was
    /// cut short (its deletes may be missing).
    pub fn transfer_cut_short(&self, vnode: u16) -> Option<u64> {
        self.transfer_marks
            .get(&vnode)
            .filter(|mark| mark.started)
            .map(|mark| mark.seq)
    }

    fn append_mark(&mut self, header: &RecordHeader, kind: u8) {
        let (segment, offset, _) = self.append(header, &[kind], 0, &[]);
        self.note_mark(header, kind, segment, offset);
        // Not a write, but it must reach the disk like one before what follows it counts.
        self.seq += 1;
    }

    /// A mark found in the log (recovery) or just written: the newest one of its vnode.
    pub(crate) fn note_mark(&mut self, header: &RecordHeader, kind: u8, segment: u32, offset: u64) {
        let mark = TransferMark {
            started: kind == MARK_TRANSFER_STARTED,
            seq: header.seq,
            segment,
            offset,
        };
        self.transfer_marks.insert(header.vnode, mark);
    }

    /// Compaction found a mark at `offset` of `victim`: copied forward if it is its vnode's
    /// newest, dropped otherwise.
    pub(crate) fn relocate_mark(
        &mut self,
        victim: u32,
        offset: usize,
        header: &RecordHeader,
        kind: u8,
    ) {
        let newest = self
            .transfer_marks
            .get(&header.vnode)
            .is_some_and(|m| m.segment == victim && m.offset == offset as u64);
        if newest {
            let (segment, offset, _) = self.append(header, &[kind], 0, &[]);
            self.note_mark(header, kind, segment, offset);
        }
    }
}
