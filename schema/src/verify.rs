//! The request verifier: every limit in `limits.rs` mapped to its status code.
//!
//! A node runs it on every decoded request before touching a store; the client runs it before
//! sending, so that a caller gets the same answer without a round trip. Within a BATCH each item
//! is checked on its own: an item over a limit gets its own status and the rest still run; only a
//! batch with too many items is refused whole (BATCH_TOO_LARGE).

use crate::limits::*;
use crate::msg::{BatchOp, DeleteRequest, PutRequest, Request, Status};

/// Why a request or one item of a batch was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub message: String,
}

impl Refusal {
    fn new(status: Status, message: String) -> Refusal {
        Refusal { status, message }
    }
}

pub fn check_key(key: &[u8]) -> Result<(), Refusal> {
    if key.len() < MIN_KEY_BYTES {
        return Err(Refusal::new(Status::BadRequest, "empty key".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Refusal::new(
            Status::KeyTooLarge,
            format!("key is {} bytes, the limit is {MAX_KEY_BYTES}", key.len()),
        ));
    }
    Ok(())
}

pub fn check_put(put: &PutRequest) -> Result<(), Refusal> {
    check_key(&put.key)?;
    if put.value.len() > MAX_VALUE_BYTES {
        return Err(Refusal::new(
            Status::ValueTooLarge,
            format!(
                "value is {} bytes, the limit is {MAX_VALUE_BYTES}",
                put.value.len()
            ),
        ));
    }
    if put.ttl_ms > MAX_TTL_MS {
        return Err(Refusal::new(
            Status::BadRequest,
            format!(
                "ttl of {} ms is over the limit of {MAX_TTL_MS} ms",
                put.ttl_ms
            ),
        ));
    }
    Ok(())
}

pub fn check_delete(delete: &DeleteRequest) -> Result<(), Refusal> {
    check_key(&delete.key)
}

pub fn check_batch_op(op: &BatchOp) -> Result<(), Refusal> {
    match op {
        BatchOp::Get { key } => check_key(key),
        BatchOp::Put(put) => check_put(put),
        BatchOp::Delete(delete) => check_delete(delete),
    }
}

/// Checks what can be refused for the request as a whole. Batch items are checked one by one
/// with [`check_batch_op`] by whoever runs them.
pub fn check_request(request: &Request) -> Result<(), Refusal> {
    match request {
        Request::Get { key } => check_key(key),
        Request::Put(put) => check_put(put),
        Request::Delete(delete) => check_delete(delete),
        Request::Batch(ops) if ops.len() > MAX_BATCH_OPS => Err(Refusal::new(
            Status::BatchTooLarge,
            format!(
                "batch has {} operations, the limit is {MAX_BATCH_OPS}",
                ops.len()
            ),
        )),
        Request::Batch(ops) if ops.is_empty() => {
            Err(Refusal::new(Status::BadRequest, "empty batch".into()))
        }
        Request::Scan(scan) if scan.prefix.len() > MAX_KEY_BYTES => Err(Refusal::new(
            Status::KeyTooLarge,
            format!(
                "scan prefix is {} bytes, the limit is {MAX_KEY_BYTES}",
                scan.prefix.len()
            ),
        )),
        Request::Scan(scan) if scan.cursor.len() > MAX_CURSOR_BYTES => Err(Refusal::new(
            Status::BadRequest,
            "scan cursor is not one this node made".into(),
        )),
        _ => Ok(()),
    }
}

/// The status for a frame whose body was over `MAX_FRAME_BODY_BYTES` and was skipped unread.
pub fn oversized_frame_refusal(opcode: u8, body_len: u32) -> Refusal {
    let status = if crate::msg::Opcode::from_wire(opcode) == Some(crate::msg::Opcode::Batch) {
        Status::BatchTooLarge
    } else {
        Status::ValueTooLarge
    };
    Refusal::new(
        status,
        format!("frame body is {body_len} bytes, the limit is {MAX_FRAME_BODY_BYTES}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Durability;

    fn put(key_len: usize, value_len: usize) -> Request {
        Request::Put(PutRequest {
            key: vec![b'k'; key_len],
            value: vec![0; value_len],
            ttl_ms: 0,
            if_version: None,
            durability: Durability::Default,
        })
    }

    fn status(request: &Request) -> Option<Status> {
        check_request(request).err().map(|r| r.status)
    }

    #[test]
    fn every_limit_has_its_status() {
        assert_eq!(status(&put(MAX_KEY_BYTES, MAX_VALUE_BYTES)), None);
        assert_eq!(status(&put(0, 1)), Some(Status::BadRequest));
        assert_eq!(
            status(&put(MAX_KEY_BYTES + 1, 1)),
            Some(Status::KeyTooLarge)
        );
        assert_eq!(
            status(&put(1, MAX_VALUE_BYTES + 1)),
            Some(Status::ValueTooLarge)
        );
        let get = |n| BatchOp::Get { key: vec![1; n] };
        assert_eq!(
            status(&Request::Batch(
                (0..MAX_BATCH_OPS).map(|_| get(1)).collect()
            )),
            None
        );
        assert_eq!(
            status(&Request::Batch(
                (0..=MAX_BATCH_OPS).map(|_| get(1)).collect()
            )),
            Some(Status::BatchTooLarge)
        );
        assert_eq!(status(&Request::Batch(vec![])), Some(Status::BadRequest));
        assert_eq!(
            check_batch_op(&get(MAX_KEY_BYTES + 1)).unwrap_err().status,
            Status::KeyTooLarge
        );
        assert_eq!(
            oversized_frame_refusal(5, 1 << 30).status,
            Status::BatchTooLarge
        );
        assert_eq!(
            oversized_frame_refusal(3, 1 << 30).status,
            Status::ValueTooLarge
        );
    }
}
