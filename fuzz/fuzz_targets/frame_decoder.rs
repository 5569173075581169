//! Any byte stream, cut at any point: the frame reader must return frames, ask for more, or
//! report an error; never panic, and never buffer an oversized body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_schema::frame::{FrameEvent, FrameReader};
use tessera_schema::limits::MAX_FRAME_BODY_BYTES;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    let cut = usize::from(cut).min(stream.len());
    let mut reader = FrameReader::new();
    for part in [&stream[..cut], &stream[cut..]] {
        reader.feed(part);
        loop {
            match reader.next_event() {
                Ok(Some(FrameEvent::Frame { body, .. })) => assert!(body.len() <= MAX_FRAME_BODY_BYTES),
                Ok(Some(FrameEvent::Oversized { .. })) => {}
                Ok(None) | Err(_) => break,
            }
        }
        assert!(reader.buffered_bytes() <= stream.len() + 20);
    }
});
