//! Hint files: a compact index of one sealed segment, so that a restart reads the hints instead
//! of every value.
//!
//! ```text
//! segment-{id:010}.hint:
//!   | rkyv archive of HintFile | crc32c of the archive (u32 LE) | magic "THN1" |
//! ```
//!
//! A hint lists every record of its segment in log order (key digest, vnode, offset, length,
//! version, expiry, tombstone, sequence number, transfer mark), so replaying it is exactly replaying the segment without the values. It
//! is written only after its segment is sealed and synced, and is advisory: a missing, short or
//! damaged hint (crc, magic, rkyv validation) makes recovery scan the segment instead. rkyv's
//! validation catches structural damage, not payload damage, hence the crc over the archive.
//!
//! Change recipe: a new layout gets a new magic ("THN2"); readers treat an unknown magic as a
//! missing hint and scan, so old and new never misread each other.

use rkyv::{Archive, Deserialize, Serialize};

/// "THN1" held keys; "THN2" holds their digests (the index keeps no keys); "THN3" adds each
/// record's sequence number in its vnode; "THN4" adds transfer marks (`mark`). An older hint
/// is ignored like a damaged one and its segment scanned, which writes a current hint.
pub const HINT_MAGIC: &[u8; 4] = b"THN4";

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HintEntry {
    /// `index::digest` of the key, high and low halves.
    pub digest_hi: u64,
    pub digest_lo: u64,
    pub vnode: u16,
    pub offset: u32,
    pub record_len: u32,
    pub version: u64,
    pub expiry_ms: u64,
    pub tombstone: bool,
    /// The record's sequence number in its vnode.
    pub seq: u64,
    /// 0 for a write; for a transfer mark, its kind (`ondisk::MARK_TRANSFER_*`).
    pub mark: u8,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HintFile {
    pub segment: u32,
    /// Bytes of log in the segment.
    pub end_offset: u64,
    pub entries: Vec<HintEntry>,
}

impl HintEntry {
    pub fn digest(&self) -> crate::index::Digest {
        u128::from(self.digest_hi) << 64 | u128::from(self.digest_lo)
    }
}

pub fn hint_file_name(segment: u32) -> String {
    format!("segment-{segment:010}.hint")
}

pub fn encode_hint(hint: &HintFile) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(hint).expect("hint serializes");
    let mut out = archive.to_vec();
    out.extend_from_slice(&crc32c::crc32c(&archive).to_le_bytes());
    out.extend_from_slice(HINT_MAGIC);
    out
}

/// The hint in `bytes`, or why it cannot be trusted.
pub fn decode_hint(bytes: &[u8]) -> Result<HintFile, String> {
    let Some(body_len) = bytes.len().checked_sub(8) else {
        return Err("too short".into());
    };
    let (archive, trailer) = bytes.split_at(body_len);
    if &trailer[4..] != HINT_MAGIC {
        return Err("unknown magic".into());
    }
    let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    if crc32c::crc32c(archive) != crc {
        return Err("checksum mismatch".into());
    }
    // rkyv needs an aligned buffer.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    rkyv::from_bytes::<HintFile, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint() -> HintFile {
        HintFile {
            segment: 3,
            end_offset: 4096,
            entries: vec![HintEntry {
                digest_hi: 1,
                digest_lo: 2,
                vnode: 9,
                offset: 0,
                record_len: 40,
                version: 7,
                expiry_ms: 0,
                tombstone: false,
                seq: 11,
                mark: 0,
            }],
        }
    }

    #[test]
    fn roundtrip_and_damage_is_refused() {
        let bytes = encode_hint(&hint());
        assert_eq!(decode_hint(&bytes), Ok(hint()));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(decode_hint(&damaged).is_err(), "byte {i}");
        }
        assert!(decode_hint(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_hint(b"").is_err());
    }
}
