//! The on-disk format of a shard's log: segment files of packed records.
//!
//! ```text
//! segment file `segment-{id:010}.log`, preallocated to segment_size_bytes, written with O_DIRECT
//! in 4 KiB-aligned blocks:
//!
//!   | record | record | ... | record | 00 00 00 ... (zeros to the end of the file)
//!
//! record, format 3 (little-endian, packed, no alignment):
//!   offset size field
//!        0    4 crc32c over bytes 4..48, then the key, then the value
//!        4    1 format version (RECORD_FORMAT_V3); 0 never starts a record, so zeros end the log
//!        5    1 flags: bit 0 = tombstone (value_len is 0); bit 1 = the key field holds the
//!                key's 16-byte digest, not the key (a tombstone written by a replica that
//!                never had the key's bytes: a state transfer's delete); bit 2 = a transfer
//!                mark, not a write (below); other bits must be 0
//!        6    2 key length (1..=MAX_KEY_BYTES)
//!        8    4 value length (0..=MAX_VALUE_BYTES)
//!       12    2 vnode
//!       14    2 reserved, 0
//!       16    8 version: per-key, only grows
//!       24    8 expiry, unix milliseconds; 0 = never
//!       32    8 seq: the write's sequence number in its vnode (replication, catch-up)
//!       40    4 epoch: the vnode's chain epoch when the head wrote it
//!       44    4 reserved, 0
//!       48    . key, then value
//!
//! transfer mark (format 3, flag bit 2): a replica receiving a state transfer of a vnode writes
//!   one before it applies the first part (key = [MARK_TRANSFER_STARTED], seq = its position
//!   then, version 0) and one after the last (key = [MARK_TRANSFER_DONE], seq and version = the
//!   position the transfer brought it to); no value, never a tombstone, not in the index. The
//!   newest mark of a vnode says after a restart whether a transfer was cut short there
//!   (`recovery.rs`); compaction copies that mark forward and drops the others.
//!
//! record, format 2 (read, never written): format 3 without flag bit 2.
//!
//! record, format 1 (read, never written): the first 32 bytes of format 2, then key and value;
//! its seq and epoch read as 0.
//! ```
//!
//! The log of a segment ends at the first all-zero header; everything after it must be zero. A
//! record that fails any check (version, flags, lengths, crc) is corruption: at the tail of the
//! newest segment it is a torn write and is truncated; anywhere else the store refuses to open
//! unless told to repair.
//!
//! Change recipe: a new layout gets a new format version byte; `parse_record` keeps reading every
//! older version it ever wrote, `encode_record` writes only the newest. Never reuse a version
//! number. The golden-bytes test pins the current layout.

use tessera_schema::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

pub const RECORD_FORMAT_V1: u8 = 1;
pub const RECORD_FORMAT_V2: u8 = 2;
/// The format written now: format 2's layout, plus transfer marks.
pub const RECORD_FORMAT_V3: u8 = 3;
/// Header bytes of a format 1 record.
pub const RECORD_HEADER_BYTES_V1: usize = 32;
/// Header bytes of the records written now (formats 2 and 3); no format has a longer header.
pub const RECORD_HEADER_BYTES: usize = 48;
pub const FLAG_TOMBSTONE: u8 = 1;
/// The key field holds the key's digest (tombstones only, formats 2 and 3).
pub const FLAG_DIGEST_KEY: u8 = 2;
/// A transfer mark, not a write (format 3).
pub const FLAG_TRANSFER_MARK: u8 = 4;
/// The key byte of a transfer mark written before a transfer's first part.
pub const MARK_TRANSFER_STARTED: u8 = 1;
/// The key byte of a transfer mark written after a transfer's last part.
pub const MARK_TRANSFER_DONE: u8 = 2;
/// Alignment of every O_DIRECT write and of segment sizes.
pub const BLOCK_BYTES: u64 = 4096;
/// The largest record the format allows.
pub const MAX_RECORD_BYTES: usize = RECORD_HEADER_BYTES + MAX_KEY_BYTES + MAX_VALUE_BYTES;

/// The fixed part of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub tombstone: bool,
    pub key_len: u16,
    pub value_len: u32,
    pub vnode: u16,
    pub version: u64,
    pub expiry_ms: u64,
    /// Sequence number of the write in its vnode (0 in format 1).
    pub seq: u64,
    /// Chain epoch of the vnode when the write was made (0 in format 1).
    pub epoch: u32,
    /// The record's format: the header of a format 1 record is shorter.
    pub format: u8,
    /// A tombstone whose key field is the key's digest (`FLAG_DIGEST_KEY`).
    pub digest_key: bool,
    /// A transfer mark (`FLAG_TRANSFER_MARK`): its one key byte says which.
    pub transfer_mark: bool,
}

impl RecordHeader {
    /// A format 2 tombstone of `version` for a key field of `key_len` bytes (the key, or with
    /// `digest_key` its 16-byte digest).
    pub fn tombstone(
        vnode: u16,
        key_len: usize,
        version: u64,
        (seq, epoch): (u64, u32),
        digest_key: bool,
    ) -> RecordHeader {
        RecordHeader {
            tombstone: true,
            key_len: key_len as u16,
            value_len: 0,
            vnode,
            version,
            expiry_ms: 0,
            seq,
            epoch,
            format: RECORD_FORMAT_V3,
            digest_key,
            transfer_mark: false,
        }
    }

    /// A transfer mark of `vnode` (its key is `[kind]`: `MARK_TRANSFER_STARTED` or
    /// `MARK_TRANSFER_DONE`) at position (`seq`, `version`).
    pub fn transfer_mark(vnode: u16, seq: u64, version: u64) -> RecordHeader {
        RecordHeader {
            tombstone: false,
            key_len: 1,
            value_len: 0,
            vnode,
            version,
            expiry_ms: 0,
            seq,
            epoch: 0,
            format: RECORD_FORMAT_V3,
            digest_key: false,
            transfer_mark: true,
        }
    }

    pub fn header_len(&self) -> usize {
        header_len(self.format)
    }

    pub fn record_len(&self) -> usize {
        self.header_len() + usize::from(self.key_len) + self.value_len as usize
    }
}

/// Header bytes of a record of `format` (the byte at offset 4).
pub fn header_len(format: u8) -> usize {
    match format {
        RECORD_FORMAT_V1 => RECORD_HEADER_BYTES_V1,
        _ => RECORD_HEADER_BYTES,
    }
}

pub fn segment_file_name(segment: u32) -> String {
    format!("segment-{segment:010}.log")
}

/// The segment id of a file name made by [`segment_file_name`].
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".log")?;
    (digits.len() == 10).then(|| digits.parse().ok()).flatten()
}

/// Appends one record to `out`.
pub fn encode_record(out: &mut Vec<u8>, header: &RecordHeader, key: &[u8], value: &[u8]) {
    debug_assert_eq!(usize::from(header.key_len), key.len());
    debug_assert_eq!(header.value_len as usize, value.len());
    debug_assert!(!header.tombstone || value.is_empty());
    debug_assert_eq!(
        header.format, RECORD_FORMAT_V3,
        "only the newest format is written"
    );
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(RECORD_FORMAT_V3);
    let flags = u8::from(header.tombstone) * FLAG_TOMBSTONE
        + u8::from(header.digest_key) * FLAG_DIGEST_KEY
        + u8::from(header.transfer_mark) * FLAG_TRANSFER_MARK;
    out.push(flags);
    out.extend_from_slice(&header.key_len.to_le_bytes());
    out.extend_from_slice(&header.value_len.to_le_bytes());
    out.extend_from_slice(&header.vnode.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&header.version.to_le_bytes());
    out.extend_from_slice(&header.expiry_ms.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    out.extend_from_slice(&header.epoch.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What lies at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Record {
        header: RecordHeader,
        key: &'a [u8],
        value: &'a [u8],
    },
    /// An all-zero header (or too few bytes left for a header): the log ends here.
    End,
    Corrupt(&'static str),
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}
fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses the record at the start of `bytes`, checking everything.
pub fn parse_record(bytes: &[u8]) -> Parsed<'_> {
    let header = match parse_header(bytes) {
        Ok(Some(header)) => header,
        Ok(None) => return Parsed::End,
        Err(reason) => return Parsed::Corrupt(reason),
    };
    let Some(record) = bytes.get(..header.record_len()) else {
        return Parsed::Corrupt("record runs past the end of the segment");
    };
    if crc32c::crc32c(&record[4..]) != le_u32(record, 0) {
        return Parsed::Corrupt("checksum mismatch");
    }
    let (key, value) = record[header.header_len()..].split_at(usize::from(header.key_len));
    if header.transfer_mark && ![MARK_TRANSFER_STARTED, MARK_TRANSFER_DONE].contains(&key[0]) {
        return Parsed::Corrupt("unknown transfer mark");
    }
    Parsed::Record { header, key, value }
}

/// Checks and decodes the header at the start of `bytes`: `None` for zeros (the end of the
/// log: an all-zero format 1 header, or fewer bytes than that, all zero).
fn parse_header(bytes: &[u8]) -> Result<Option<RecordHeader>, &'static str> {
    let Some(head) = bytes.first_chunk::<RECORD_HEADER_BYTES_V1>() else {
        return match bytes.iter().all(|&b| b == 0) {
            true => Ok(None),
            false => Err("short header"),
        };
    };
    if head.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let format = head[4];
    let (seq, epoch) = match format {
        RECORD_FORMAT_V1 => (0, 0),
        RECORD_FORMAT_V2 | RECORD_FORMAT_V3 => {
            let Some(head) = bytes.first_chunk::<RECORD_HEADER_BYTES>() else {
                return Err("short header");
            };
            if le_u32(head, 44) != 0 {
                return Err("unknown flags");
            }
            (le_u64(head, 32), le_u32(head, 40))
        }
        _ => return Err("unknown record format version"),
    };
    let known_flags = match format {
        RECORD_FORMAT_V1 => FLAG_TOMBSTONE,
        RECORD_FORMAT_V2 => FLAG_TOMBSTONE | FLAG_DIGEST_KEY,
        _ => FLAG_TOMBSTONE | FLAG_DIGEST_KEY | FLAG_TRANSFER_MARK,
    };
    if head[5] & !known_flags != 0 || le_u16(head, 14) != 0 {
        return Err("unknown flags");
    }
    let header = RecordHeader {
        tombstone: head[5] & FLAG_TOMBSTONE != 0,
        key_len: le_u16(head, 6),
        value_len: le_u32(head, 8),
        vnode: le_u16(head, 12),
        version: le_u64(head, 16),
        expiry_ms: le_u64(head, 24),
        seq,
        epoch,
        format,
        digest_key: head[5] & FLAG_DIGEST_KEY != 0,
        transfer_mark: head[5] & FLAG_TRANSFER_MARK != 0,
    };
    let key_len = usize::from(header.key_len);
    if key_len == 0 || key_len > MAX_KEY_BYTES || header.value_len as usize > MAX_VALUE_BYTES {
        return Err("length out of range");
    }
    if header.tombstone && header.value_len != 0 {
        return Err("tombstone with a value");
    }
    if header.digest_key && (!header.tombstone || key_len != 16) {
        return Err("a digest key on something other than a tombstone");
    }
    let plain_mark = !header.tombstone && !header.digest_key && key_len == 1;
    if header.transfer_mark && (!plain_mark || header.value_len != 0) {
        return Err("a transfer mark with a tombstone, a value or a key of more than a byte");
    }
    Ok(Some(header))
}

/// The header and key of the record at the start of `bytes`, which may stop after the key. The
/// checksum covers the value too, so it is not checked: callers check the key against what
/// they expect (its digest) instead.
pub fn parse_key(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), &'static str> {
    let header = parse_header(bytes)?.ok_or("zeros where a record should be")?;
    let start = header.header_len();
    let key = bytes
        .get(start..start + usize::from(header.key_len))
        .ok_or("key runs past the bytes read")?;
    Ok((header, key))
}

/// The index digest of a record: of its key, or the digest its key field holds.
pub fn record_digest(header: &RecordHeader, key: &[u8]) -> crate::index::Digest {
    if header.digest_key {
        let bytes: [u8; 16] = key.try_into().expect("parse_header checked the length");
        u128::from_le_bytes(bytes)
    } else {
        crate::index::digest(key)
    }
}

pub fn align_down(offset: u64) -> u64 {
    offset & !(BLOCK_BYTES - 1)
}

pub fn align_up(offset: u64) -> u64 {
    align_down(offset + BLOCK_BYTES - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &[u8], value: &[u8]) -> RecordHeader {
        RecordHeader {
            tombstone: false,
            key_len: key.len() as u16,
            value_len: value.len() as u32,
            vnode: 7,
            version: 0x0102,
            expiry_ms: 0,
            seq: 0x0304,
            epoch: 5,
            format: RECORD_FORMAT_V3,
            digest_key: false,
            transfer_mark: false,
        }
    }

    #[test]
    fn a_digest_tombstone_names_its_key_by_digest() {
        let digest = crate::index::digest(b"some key");
        let key = digest.to_le_bytes();
        let header = RecordHeader {
            tombstone: true,
            key_len: 16,
            value_len: 0,
            digest_key: true,
            ..header(b"", b"")
        };
        let mut out = Vec::new();
        encode_record(&mut out, &header, &key, b"");
        let Parsed::Record { header, key, .. } = parse_record(&out) else {
            panic!()
        };
        assert_eq!(record_digest(&header, key), digest);
        // Only a tombstone may carry one.
        let mut value = out.clone();
        value[5] = FLAG_DIGEST_KEY;
        let crc = crc32c::crc32c(&value[4..]);
        value[..4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(parse_record(&value), Parsed::Corrupt(_)));
    }

    #[test]
    fn golden_bytes() {
        let mut out = Vec::new();
        encode_record(&mut out, &header(b"k", b"vv"), b"k", b"vv");
        let mut want = vec![0, 0, 0, 0, 3, 0, 1, 0, 2, 0, 0, 0, 7, 0, 0, 0];
        want.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(b"kvv");
        let crc = crc32c::crc32c(&want[4..]);
        want[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(out, want);
    }

    /// The bytes of a format 2 record as the previous version wrote them, with its crc.
    fn with_format(mut record: Vec<u8>, format: u8, flags: u8) -> Vec<u8> {
        record[4] = format;
        record[5] = flags;
        let crc = crc32c::crc32c(&record[4..]);
        record[..4].copy_from_slice(&crc.to_le_bytes());
        record
    }

    #[test]
    fn format_2_records_are_still_read_and_carry_no_marks() {
        let mut out = Vec::new();
        encode_record(&mut out, &header(b"k", b"vv"), b"k", b"vv");
        let v2 = with_format(out, RECORD_FORMAT_V2, 0);
        let Parsed::Record { header, key, value } = parse_record(&v2) else {
            panic!("format 2 parses")
        };
        assert_eq!((key, value, header.seq), (&b"k"[..], &b"vv"[..], 0x0304));
        let mut mark = Vec::new();
        encode_record(&mut mark, &RecordHeader::transfer_mark(7, 9, 0), &[1], b"");
        let v2_mark = with_format(mark, RECORD_FORMAT_V2, FLAG_TRANSFER_MARK);
        assert!(matches!(parse_record(&v2_mark), Parsed::Corrupt(_)));
    }

    #[test]
    fn transfer_marks_roundtrip_and_are_checked() {
        for kind in [MARK_TRANSFER_STARTED, MARK_TRANSFER_DONE] {
            let mut out = Vec::new();
            encode_record(
                &mut out,
                &RecordHeader::transfer_mark(7, 9, 11),
                &[kind],
                b"",
            );
            let Parsed::Record { header, key, .. } = parse_record(&out) else {
                panic!("a mark parses")
            };
            assert!(header.transfer_mark && !header.tombstone);
            assert_eq!((key, header.seq, header.version), (&[kind][..], 9, 11));
        }
        let mut unknown = Vec::new();
        encode_record(
            &mut unknown,
            &RecordHeader::transfer_mark(7, 9, 0),
            &[3],
            b"",
        );
        assert!(matches!(parse_record(&unknown), Parsed::Corrupt(_)));
        let mut tombstone = Vec::new();
        encode_record(&mut tombstone, &header(b"k", b""), b"k", b"");
        let flags = FLAG_TOMBSTONE | FLAG_TRANSFER_MARK;
        let tombstone_mark = with_format(tombstone, RECORD_FORMAT_V3, flags);
        assert!(matches!(parse_record(&tombstone_mark), Parsed::Corrupt(_)));
    }

    #[test]
    fn format_1_records_are_still_read() {
        // A format 1 record as the previous version wrote it (golden bytes of that version).
        let mut v1 = vec![0, 0, 0, 0, 1, 0, 1, 0, 2, 0, 0, 0, 7, 0, 0, 0];
        v1.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        v1.extend_from_slice(b"kvv");
        let crc = crc32c::crc32c(&v1[4..]);
        v1[..4].copy_from_slice(&crc.to_le_bytes());
        let Parsed::Record { header, key, value } = parse_record(&v1) else {
            panic!("format 1 parses")
        };
        assert_eq!((key, value), (&b"k"[..], &b"vv"[..]));
        assert_eq!((header.version, header.seq, header.epoch), (0x0102, 0, 0));
        assert_eq!(header.record_len(), v1.len());
        assert_eq!(parse_key(&v1).map(|(_, key)| key), Ok(&b"k"[..]));
    }

    #[test]
    fn roundtrip_and_every_single_bit_flip_is_caught() {
        let mut out = Vec::new();
        encode_record(&mut out, &header(b"key", b"value"), b"key", b"value");
        let Parsed::Record { key, value, .. } = parse_record(&out) else {
            panic!()
        };
        assert_eq!((key, value), (&b"key"[..], &b"value"[..]));
        for bit in 0..out.len() * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(parse_record(&damaged), Parsed::Corrupt(_)),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn zeros_end_the_log_and_truncation_is_corruption() {
        assert_eq!(parse_record(&[0; 100]), Parsed::End);
        assert_eq!(parse_record(&[0; 5]), Parsed::End);
        let mut out = Vec::new();
        encode_record(&mut out, &header(b"key", b"value"), b"key", b"value");
        assert!(matches!(
            parse_record(&out[..out.len() - 1]),
            Parsed::Corrupt(_)
        ));
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(12), "segment-0000000012.log");
        assert_eq!(parse_segment_file_name("segment-0000000012.log"), Some(12));
        assert_eq!(parse_segment_file_name("segment-12.log"), None);
    }
}
