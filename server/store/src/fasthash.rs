//! A hasher for keys that are already uniform (digests) or small integers (segment ids):
//! SipHash's protection against chosen keys buys nothing there and cost 5 % of the store's time.

use std::hash::{BuildHasherDefault, Hasher};

/// Folds a digest's halves; multiplies integers by the golden ratio (Fibonacci hashing) so that
/// sequential ids spread over the map's buckets and tag bits.
#[derive(Default)]
pub struct FoldHasher(u64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(GOLDEN);
    }
    fn write_u128(&mut self, n: u128) {
        // A digest: already uniform, so folding is enough.
        self.0 ^= (n >> 64) as u64 ^ n as u64;
    }
}

pub type Fold = BuildHasherDefault<FoldHasher>;
