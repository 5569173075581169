//! Key placement: key -> vnode by a stable 64-bit hash, vnode -> shard by a table.
//!
//! The hash is xxh3-64 with seed 0: specified, portable, fast, and the same in every client
//! language, which a shard-aware client needs. Changing it re-homes every key: it is part of the
//! on-disk and wire contract.
//!
//! The vnode -> shard table gives each shard a contiguous range of vnodes, so that a SCAN walking
//! vnodes in order crosses shards as rarely as possible.

/// The vnode count of a new cluster (`--vnodes`): fixed at creation, for the cluster's life.
pub const DEFAULT_VNODES: u32 = 4096;
/// The most vnodes a cluster may have (vnode ids are 16-bit on the wire and on disk).
pub const MAX_VNODES: u32 = 65_536;
/// The vnode count of data directories made before it was recorded (one node, 256 vnodes).
pub const LEGACY_VNODES: u32 = 256;

/// The vnode a key belongs to, in a cluster of `vnodes` vnodes.
pub fn vnode_of(key: &[u8], vnodes: u32) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(vnodes)) as u16
}

/// vnode -> shard for a node with `shard_count` shards in a cluster of `vnodes` vnodes: each
/// shard a contiguous range.
pub fn shard_table(shard_count: u16, vnodes: u32) -> Vec<u16> {
    assert!(shard_count >= 1 && u32::from(shard_count) <= vnodes && vnodes <= MAX_VNODES);
    (0..vnodes)
        .map(|vnode| shard_of_vnode(vnode as u16, shard_count, vnodes))
        .collect()
}

/// The shard of a node with `shard_count` shards that holds `vnode` (as `shard_table`).
pub fn shard_of_vnode(vnode: u16, shard_count: u16, vnodes: u32) -> u16 {
    (u64::from(vnode) * u64::from(shard_count) / u64::from(vnodes)) as u16
}

/// A SCAN cursor: the vnode to go on in and the key digest to go on after (`None`: from the
/// vnode's start). Clients read the vnode to send the next page to a node that holds it.
/// Layout: vnode u16 LE, then 0, or 1 and the digest u128 LE; empty = the start.
pub fn decode_scan_cursor(cursor: &[u8], vnodes: u32) -> Option<(u32, Option<u128>)> {
    let (vnode, after) = match cursor {
        [] => (0, None),
        [lo, hi, 0] => (u16::from_le_bytes([*lo, *hi]), None),
        [lo, hi, 1, digest @ ..] => {
            let digest = u128::from_le_bytes(digest.try_into().ok()?);
            (u16::from_le_bytes([*lo, *hi]), Some(digest))
        }
        _ => return None,
    };
    (u32::from(vnode) < vnodes).then_some((u32::from(vnode), after))
}

pub fn encode_scan_cursor(vnode: u16, after: Option<u128>) -> Vec<u8> {
    let mut cursor = vnode.to_le_bytes().to_vec();
    match after {
        Some(digest) => {
            cursor.push(1);
            cursor.extend_from_slice(&digest.to_le_bytes());
        }
        None => cursor.push(0),
    }
    cursor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnode_hash_is_stable() {
        // A change here re-homes every stored key: it must be deliberate.
        assert_eq!(
            vnode_of(b"hello", 256),
            (xxhash_rust::xxh3::xxh3_64(b"hello") % 256) as u16
        );
        assert_eq!(
            vnode_of(b"hello", 4096),
            (xxhash_rust::xxh3::xxh3_64(b"hello") % 4096) as u16
        );
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06800538d394c2);
    }

    #[test]
    fn shard_table_is_contiguous_and_balanced() {
        for shards in [1u16, 2, 3, 7, 64, 256] {
            let table = shard_table(shards, 256);
            assert_eq!(table.len(), 256);
            assert!(table.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= 1));
            assert_eq!(table[255], shards - 1);
            let mut counts = vec![0u32; usize::from(shards)];
            table.iter().for_each(|&s| counts[usize::from(s)] += 1);
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "{shards}: {counts:?}");
        }
    }

    #[test]
    fn scan_cursors_roundtrip_and_refuse_garbage() {
        for (vnode, after) in [(0u16, None), (4095, Some(7u128)), (17, Some(u128::MAX))] {
            let cursor = encode_scan_cursor(vnode, after);
            assert_eq!(
                decode_scan_cursor(&cursor, 4096),
                Some((u32::from(vnode), after))
            );
        }
        assert_eq!(decode_scan_cursor(&[], 16), Some((0, None)));
        assert_eq!(decode_scan_cursor(&encode_scan_cursor(16, None), 16), None);
        assert_eq!(decode_scan_cursor(&[1, 0, 2], 16), None);
        assert_eq!(decode_scan_cursor(&[1, 0, 1, 5], 16), None);
    }
}
