//! Every bound of the protocol, with the reason for its value. Each one that a request can exceed
//! has the status code it answers with next to it (see `verify.rs`).

/// Smallest key: an empty key has no vnode worth the name and is almost always a client bug.
/// Below it: BAD_REQUEST.
pub const MIN_KEY_BYTES: usize = 1;
/// Largest key. Keys live in the in-memory index, so they are kept small. Above it: KEY_TOO_LARGE.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value: the brief's hard limit of 1 MiB. Above it: VALUE_TOO_LARGE.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most operations in one BATCH. Above it: BATCH_TOO_LARGE.
pub const MAX_BATCH_OPS: usize = 1000;
/// Largest frame body. A single PUT at the value limit fits with room to spare, so that a value
/// one byte over the limit is still parsed and answered VALUE_TOO_LARGE. A larger frame is skipped
/// without being buffered and answered VALUE_TOO_LARGE (single op) or BATCH_TOO_LARGE (batch),
/// and the connection stays usable.
pub const MAX_FRAME_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest SCAN page. Above it the page is clamped, not refused: a page size is a hint.
pub const MAX_SCAN_PAGE: u32 = 10_000;
/// SCAN page size when the request says 0.
pub const DEFAULT_SCAN_PAGE: u32 = 100;
/// Longest error message a node sends; longer ones are cut.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest TTL: 100 years. Longer ones are BAD_REQUEST (they are almost always unit mistakes).
pub const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
/// Largest SCAN cursor a node hands out: 2 bytes of vnode, a flag byte, and a 16-byte key digest.
pub const MAX_CURSOR_BYTES: usize = 3 + 16;

const _: () = assert!(MAX_VALUE_BYTES + MAX_KEY_BYTES + 4096 < MAX_FRAME_BODY_BYTES);
const _: () = assert!(MAX_FRAME_BODY_BYTES <= u32::MAX as usize);
