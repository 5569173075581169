//! Any request body: decoding and verification return a request or an error, never panic; a
//! request that passes verification re-encodes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_schema::frame::{FrameEvent, FrameReader};
use tessera_schema::verify::{check_batch_op, check_request};
use tessera_schema::wire::{decode_request, encode_request_frame};
use tessera_schema::Request;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode_request(data) else { return };
    if check_request(&request).is_err() {
        return;
    }
    if let Request::Batch(ops) = &request {
        for op in ops {
            let _ = check_batch_op(op);
        }
    }
    let mut frame = Vec::new();
    encode_request_frame(&mut frame, 1, &request);
    let mut reader = FrameReader::new();
    reader.feed(&frame);
    let Ok(Some(FrameEvent::Frame { body, .. })) = reader.next_event() else { panic!("re-encoded frame") };
    assert_eq!(decode_request(body).unwrap(), request);
});
