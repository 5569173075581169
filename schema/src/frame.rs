//! The frame codec: sans-IO, survives any split of the byte stream.
//!
//! ```text
//! offset  size  field
//!      0     2  magic 0x5354 ("TS" on the wire), little-endian
//!      2     1  frame format version (FRAME_VERSION)
//!      3     1  opcode (msg::Opcode); responses set the high bit
//!      4     4  body length in bytes, little-endian
//!      8     8  request id, little-endian; a response carries its request's id
//!     16     4  crc32c over bytes 0..16 and then the body, little-endian
//!     20     .  body: a flatbuffers RequestBody or ResponseBody (wire.rs)
//! ```
//!
//! The id and opcode live in the header, outside the body, so that a node can answer a frame it
//! refuses to buffer (body over `MAX_FRAME_BODY_BYTES`) with the right id and status and keep the
//! connection. A frame with a bad magic, an unknown version or a checksum mismatch means the
//! stream can no longer be trusted: the reader reports an error and the connection is closed.
//!
//! Change recipe: a new header layout gets a new FRAME_VERSION; readers refuse versions they do
//! not know, so old and new never misread each other. The golden-bytes test pins this layout.

use crate::limits::MAX_FRAME_BODY_BYTES;

pub const FRAME_MAGIC: u16 = 0x5354;
pub const FRAME_VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub opcode: u8,
    pub body_len: u32,
    pub request_id: u64,
    pub crc32c: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    #[error("frame checksum mismatch for request {request_id}")]
    Checksum { request_id: u64 },
}

/// Appends one frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, request_id: u64, body: &[u8]) {
    let body_len = u32::try_from(body.len()).expect("frame body over 4 GiB");
    let start = out.len();
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    out.push(FRAME_VERSION);
    out.push(opcode);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 16]), body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
}

fn parse_header(bytes: &[u8; HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
    let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if bytes[2] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(bytes[2]));
    }
    Ok(FrameHeader {
        opcode: bytes[3],
        body_len: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
        request_id: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        crc32c: u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
    })
}

/// What the reader found next in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent<'a> {
    /// A whole, checksum-verified frame.
    Frame { header: FrameHeader, body: &'a [u8] },
    /// A frame whose body is over the limit: its body is being skipped, not buffered. Answer it
    /// with an error status; the stream stays usable.
    Oversized { header: FrameHeader },
}

/// Accumulates bytes from a stream and cuts them into frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Start of the unconsumed bytes in `buffer`.
    start: usize,
    /// Bytes of an oversized body still to be dropped as they arrive.
    skip_remaining_bytes: u64,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// True while an oversized or refused body is being skipped.
    pub fn is_skipping(&self) -> bool {
        self.skip_remaining_bytes > 0
    }

    /// True while a frame is part way in: some of its bytes arrived, not all of them (or a
    /// body is being skipped). A node times such a connection out if the rest does not come.
    pub fn is_partial(&self) -> bool {
        self.buffered_bytes() > 0 || self.is_skipping()
    }

    /// The header of the frame whose body is still arriving, once its 20 bytes are in, so that
    /// the caller can decide, before buffering the body, whether to take it or to skip it
    /// with [`FrameReader::skip_partial`]. `None` when no header is waiting for its body.
    pub fn partial_header(&self) -> Option<FrameHeader> {
        let header = self.buffer[self.start..].first_chunk::<HEADER_BYTES>()?;
        parse_header(header).ok()
    }

    /// Drops the body of the frame [`FrameReader::partial_header`] names: what is buffered now
    /// and what is still to come, without buffering it. The caller answers the frame.
    pub fn skip_partial(&mut self) -> Option<FrameHeader> {
        let header = self.partial_header()?;
        let body_len = header.body_len as usize;
        let in_buffer = (self.buffered_bytes() - HEADER_BYTES).min(body_len);
        self.start += HEADER_BYTES + in_buffer;
        self.skip_remaining_bytes = (body_len - in_buffer) as u64;
        Some(header)
    }

    /// Frees the buffer's memory when nothing is in it (an idle connection keeps none).
    pub fn shrink_when_empty(&mut self) {
        if self.buffered_bytes() == 0 {
            self.buffer = Vec::new();
            self.start = 0;
        }
    }

    /// Adds bytes read from the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if self.skip_remaining_bytes > 0 {
            let skipped = (bytes.len() as u64).min(self.skip_remaining_bytes);
            self.skip_remaining_bytes -= skipped;
            bytes = &bytes[skipped as usize..];
        }
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buffer.len() {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next frame, `Ok(None)` when more bytes are needed, or an error after which the stream
    /// must be closed.
    pub fn next_event(&mut self) -> Result<Option<FrameEvent<'_>>, FrameError> {
        let available = &self.buffer[self.start..];
        let Some(header_bytes) = available.first_chunk::<HEADER_BYTES>() else {
            return Ok(None);
        };
        let header = parse_header(header_bytes)?;
        let body_len = header.body_len as usize;
        if body_len > MAX_FRAME_BODY_BYTES {
            let in_buffer = (available.len() - HEADER_BYTES).min(body_len);
            self.start += HEADER_BYTES + in_buffer;
            self.skip_remaining_bytes = (body_len - in_buffer) as u64;
            return Ok(Some(FrameEvent::Oversized { header }));
        }
        if available.len() < HEADER_BYTES + body_len {
            return Ok(None);
        }
        let frame_start = self.start;
        let body = &self.buffer[frame_start + HEADER_BYTES..frame_start + HEADER_BYTES + body_len];
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&self.buffer[frame_start..frame_start + 16]),
            body,
        );
        if crc != header.crc32c {
            return Err(FrameError::Checksum {
                request_id: header.request_id,
            });
        }
        self.start += HEADER_BYTES + body_len;
        Ok(Some(FrameEvent::Frame { header, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, id: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, id, body);
        out
    }

    #[test]
    fn a_partial_frame_can_be_skipped_before_its_body_is_buffered() {
        let mut stream = frame(3, 1, &[9u8; 100_000]);
        stream.extend(frame(3, 2, b"next"));
        let mut reader = FrameReader::new();
        reader.feed(&stream[..10]);
        assert_eq!(reader.partial_header(), None, "the header is not complete");
        assert!(reader.is_partial());
        reader.feed(&stream[10..1000]);
        let header = reader
            .partial_header()
            .expect("a header waits for its body");
        assert_eq!((header.request_id, header.body_len), (1, 100_000));
        assert_eq!(reader.skip_partial().map(|h| h.request_id), Some(1));
        assert!(reader.is_skipping());
        reader.feed(&stream[1000..]);
        assert_eq!(collect(&mut reader), vec![(2, b"next".to_vec())]);
        assert!(!reader.is_partial());
        reader.shrink_when_empty();
        assert_eq!(reader.buffered_bytes(), 0);
    }

    #[test]
    fn golden_bytes() {
        // Pins the header layout: any change to it must show up here as a diff.
        let bytes = frame(3, 0x0102_0304_0506_0708, b"abc");
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..16]), b"abc");
        let mut want = vec![0x54, 0x53, 1, 3, 3, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1];
        want.extend_from_slice(&crc.to_le_bytes());
        want.extend_from_slice(b"abc");
        assert_eq!(bytes, want);
        assert_eq!(crc, 0x19ec_515c, "crc32c of the golden frame changed");
    }

    fn collect(reader: &mut FrameReader) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            match event {
                FrameEvent::Frame { header, body } => out.push((header.request_id, body.to_vec())),
                FrameEvent::Oversized { header } => out.push((header.request_id, b"!".to_vec())),
            }
        }
        out
    }

    #[test]
    fn every_split_of_the_stream_yields_the_same_frames() {
        let mut stream = Vec::new();
        let frames: Vec<(u64, Vec<u8>)> = (0..5)
            .map(|i| (i, vec![i as u8; (i * 7) as usize]))
            .collect();
        for (id, body) in &frames {
            encode_frame(&mut stream, 2, *id, body);
        }
        for split_a in 0..=stream.len() {
            for split_b in split_a..=stream.len() {
                let mut reader = FrameReader::new();
                let mut got = Vec::new();
                for part in [
                    &stream[..split_a],
                    &stream[split_a..split_b],
                    &stream[split_b..],
                ] {
                    reader.feed(part);
                    got.extend(collect(&mut reader));
                }
                assert_eq!(got, frames, "split at {split_a},{split_b}");
                assert_eq!(reader.buffered_bytes(), 0);
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let mut stream = frame(1, 7, b"");
        stream.extend(frame(2, 8, &[9; 300]));
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        for byte in &stream {
            reader.feed(std::slice::from_ref(byte));
            got.extend(collect(&mut reader));
        }
        assert_eq!(got, vec![(7, vec![]), (8, vec![9; 300])]);
    }

    #[test]
    fn oversized_body_is_skipped_and_the_stream_goes_on() {
        let mut header = Vec::new();
        encode_frame(&mut header, 3, 11, b"");
        let too_big = (MAX_FRAME_BODY_BYTES + 5) as u32;
        header[4..8].copy_from_slice(&too_big.to_le_bytes());
        let mut reader = FrameReader::new();
        reader.feed(&header);
        assert_eq!(collect(&mut reader), vec![(11, b"!".to_vec())]);
        let chunk = vec![0xAB; 1 << 20];
        let mut left = too_big as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            reader.feed(&chunk[..n]);
            left -= n;
            assert!(collect(&mut reader).is_empty());
        }
        assert!(!reader.is_skipping());
        reader.feed(&frame(2, 12, b"next"));
        assert_eq!(collect(&mut reader), vec![(12, b"next".to_vec())]);
    }

    #[test]
    fn corruption_is_an_error() {
        let mut bytes = frame(2, 1, b"hello");
        bytes[HEADER_BYTES + 1] ^= 1;
        let mut reader = FrameReader::new();
        reader.feed(&bytes);
        assert_eq!(
            reader.next_event(),
            Err(FrameError::Checksum { request_id: 1 })
        );

        let mut reader = FrameReader::new();
        reader.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(reader.next_event(), Err(FrameError::BadMagic(_))));

        let mut bytes = frame(2, 1, b"x");
        bytes[2] = 9;
        let mut reader = FrameReader::new();
        reader.feed(&bytes);
        assert_eq!(reader.next_event(), Err(FrameError::UnsupportedVersion(9)));
    }
}
