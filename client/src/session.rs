//! The sans-IO client core: turns requests into frames with fresh ids, and bytes from the
//! server into responses matched to their ids. No sockets, no clock: the async client pumps it.

use std::collections::HashMap;

use tessera_schema::frame::{FrameError, FrameEvent, FrameReader};
use tessera_schema::msg::{Opcode, Request, Response, Topology};
use tessera_schema::placement::vnode_of;
use tessera_schema::wire::{decode_response, encode_request_frame};

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
        let id = self.next_id;
        self.next_id += 1;
        encode_request_frame(out, id, request);
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

/// Which shard port serves each key, from a node's TOPOLOGY answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    topology: Topology,
}

impl Routing {
    pub fn new(topology: Topology) -> Option<Routing> {
        let vnodes = topology.vnode_shard.len();
        let valid = topology.shard_count > 0
            && (1..=tessera_schema::placement::MAX_VNODES as usize).contains(&vnodes)
            && topology
                .vnode_shard
                .iter()
                .all(|&s| s < topology.shard_count);
        valid.then_some(Routing { topology })
    }

    pub fn shard_count(&self) -> u16 {
        self.topology.shard_count
    }

    /// The cluster's vnode count.
    pub fn vnodes(&self) -> u32 {
        self.topology.vnode_shard.len() as u32
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> u16 {
        self.topology.vnode_shard[usize::from(vnode_of(key, self.vnodes()))]
    }

    /// The port of shard `shard`.
    pub fn port_of(&self, shard: u16) -> u16 {
        self.topology.shard_port_base + shard
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

    #[test]
    fn routing_follows_the_table() {
        let table = tessera_schema::placement::shard_table(4, 4096);
        let routing = Routing::new(Topology {
            shard_count: 4,
            shard_port_base: 7001,
            vnode_shard: table.clone(),
        })
        .unwrap();
        let key = b"user:42";
        assert_eq!(
            routing.shard_of(key),
            table[usize::from(vnode_of(key, 4096))]
        );
        assert_eq!(routing.port_of(3), 7004);
        assert!(Routing::new(Topology {
            shard_count: 1,
            shard_port_base: 1,
            vnode_shard: vec![]
        })
        .is_none());
    }
}
