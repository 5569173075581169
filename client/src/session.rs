//! The sans-IO client core: turns requests into frames with fresh ids, and bytes from the
//! server into responses matched to their ids. No sockets, no clock: the async client pumps it.

use std::collections::HashMap;

use tessera_schema::frame::{FrameError, FrameEvent, FrameReader};
use tessera_schema::msg::{Opcode, Request, RequestOptions, Response};
use tessera_schema::wire::{decode_response, encode_request_frame_with};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("bad frame from the server: {0}")]
    Frame(#[from] FrameError),
    #[error("bad response body: {0}")]
    Body(String),
    #[error("response to unknown request id {0}")]
    UnknownId(u64),
}

/// One connection's request/response bookkeeping.
#[derive(Debug, Default)]
pub struct Session {
    next_id: u64,
    /// Requests sent and not yet answered: id -> opcode.
    in_flight: HashMap<u64, Opcode>,
    reader: FrameReader,
}

impl Session {
    pub fn new() -> Session {
        Session {
            next_id: 1,
            ..Session::default()
        }
    }

    /// Appends the request's frame to `out` and returns its id.
    pub fn encode(&mut self, request: &Request, out: &mut Vec<u8>) -> u64 {
        self.encode_with(request, &RequestOptions::default(), out)
    }

    /// As `encode`, with a cluster id, a level and session tokens.
    pub fn encode_with(
        &mut self,
        request: &Request,
        options: &RequestOptions,
        out: &mut Vec<u8>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        encode_request_frame_with(out, id, request, options);
        self.in_flight.insert(id, request.opcode());
        id
    }

    /// Forgets a request (timed out or abandoned); a late response to it is ignored.
    pub fn abandon(&mut self, id: u64) {
        self.in_flight.remove(&id);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Adds bytes received from the server.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        self.reader.feed(bytes);
    }

    /// The next complete response, if any. An error means the connection is unusable. A frame
    /// with request id 0 is the server's word on the connection as a whole (it is closing it).
    pub fn poll_response(&mut self) -> Result<Option<(u64, Response)>, SessionError> {
        loop {
            let Some(event) = self.reader.next_event()? else {
                return Ok(None);
            };
            let FrameEvent::Frame { header, body } = event else {
                return Err(SessionError::Body("oversized response".into()));
            };
            let response = decode_response(body).map_err(|e| SessionError::Body(e.to_string()))?;
            let id = header.request_id;
            if id == 0 || self.in_flight.remove(&id).is_some() {
                return Ok(Some((id, response)));
            }
            // A response to an abandoned request: drop it and look at the next.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_schema::msg::OpResult;
    use tessera_schema::wire::encode_response_frame;

    #[test]
    fn matches_out_of_order_responses_and_drops_abandoned_ones() {
        let mut session = Session::new();
        let mut out = Vec::new();
        let a = session.encode(&Request::Ping, &mut out);
        let b = session.encode(&Request::Get { key: b"k".to_vec() }, &mut out);
        let c = session.encode(&Request::Ping, &mut out);
        session.abandon(c);
        let mut bytes = Vec::new();
        encode_response_frame(
            &mut bytes,
            Opcode::Ping as u8,
            c,
            &Response::Op(OpResult::ok(0)),
        );
        encode_response_frame(
            &mut bytes,
            Opcode::Get as u8,
            b,
            &Response::Op(OpResult::ok(5)),
        );
        encode_response_frame(
            &mut bytes,
            Opcode::Ping as u8,
            a,
            &Response::Op(OpResult::ok(0)),
        );
        for byte in bytes {
            session.handle_bytes(&[byte]);
        }
        let first = session.poll_response().unwrap().unwrap();
        assert_eq!(first, (b, Response::Op(OpResult::ok(5))));
        assert_eq!(session.poll_response().unwrap().unwrap().0, a);
        assert_eq!(session.poll_response().unwrap(), None);
        assert_eq!(session.in_flight(), 0);
    }
}
