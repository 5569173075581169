//! Batches whose items share bytes (the shape a hostile client uses to make a small frame name
//! gigabytes): decoding refuses every one that would decode past MAX_DECODED_REQUEST_BYTES
//! before copying anything, and accepts the rest; never a panic. The first bytes choose the
//! item count and the shared value's length; the rest mutate the frame's body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_schema::frame::HEADER_BYTES;
use tessera_schema::limits::{DECODED_ITEM_BYTES, MAX_BATCH_OPS, MAX_DECODED_REQUEST_BYTES};
use tessera_schema::wire::{decode_request, encode_shared_value_batch_frame, DecodeError};
use tessera_schema::Request;

fuzz_target!(|data: &[u8]| {
    let [a, b, c, d, mutations @ ..] = data else { return };
    let items = usize::from(u16::from_le_bytes([*a, *b])) % (MAX_BATCH_OPS + 50) + 1;
    let value_len = usize::from(u16::from_le_bytes([*c, *d])) * 32;
    let mut frame = Vec::new();
    encode_shared_value_batch_frame(&mut frame, 1, items, &vec![1u8; value_len]);
    let body = &mut frame[HEADER_BYTES..];
    let clean = mutations.is_empty();
    for pair in mutations.chunks(2) {
        if let [at, byte] = pair {
            let index = usize::from(*at) * body.len() / 256;
            body[index] = *byte;
        }
    }
    let decoded = decode_request(body);
    if !clean {
        return;
    }
    let named = items * (DECODED_ITEM_BYTES + value_len + "shared-key".len());
    match decoded {
        Ok(Request::Batch(ops)) => {
            assert!(items <= MAX_BATCH_OPS && named <= MAX_DECODED_REQUEST_BYTES);
            assert_eq!(ops.len(), items);
        }
        Err(DecodeError::Refused(_)) => {
            assert!(items > MAX_BATCH_OPS || named > MAX_DECODED_REQUEST_BYTES)
        }
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
});
