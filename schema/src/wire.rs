//! Flatbuffers encoding of the protocol's messages (schema: `fbs/tessera.fbs`).
//!
//! Decoding verifies the buffer (flatbuffers' verifier bounds every offset) and copies it into
//! owned `msg` values; a body that does not verify, or names an unknown union member, is a
//! `WireError`, which a node answers with BAD_REQUEST.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::fb;
use crate::frame::encode_frame;
use crate::limits::{
    DECODED_ITEM_BYTES, MAX_BATCH_OPS, MAX_DECODED_REQUEST_BYTES, MAX_MESSAGE_BYTES,
};
use crate::msg::*;
use crate::verify::Refusal;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed body: {0}")]
pub struct WireError(pub String);

/// Why a request body was not decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a valid body: the stream can no longer be trusted (the connection is closed).
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// A valid body over a limit checked before anything is copied (too many batch items, or
    /// items that share bytes and would decode past `MAX_DECODED_REQUEST_BYTES`): answer it with
    /// the refusal's status and go on.
    #[error("{}", .0.message)]
    Refused(Refusal),
}

fn bytes<'a>(vector: Option<flatbuffers::Vector<'a, u8>>) -> Vec<u8> {
    vector.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

fn durability_to_wire(durability: Durability) -> fb::Durability {
    match durability {
        Durability::Default => fb::Durability::Default,
        Durability::Sync => fb::Durability::Sync,
    }
}

fn durability_from_wire(durability: fb::Durability) -> Result<Durability, WireError> {
    match durability {
        fb::Durability::Default => Ok(Durability::Default),
        fb::Durability::Sync => Ok(Durability::Sync),
        other => Err(WireError(format!("unknown durability {}", other.0))),
    }
}

// ---------------------------------------------------------------- requests

/// Appends a whole request frame (header and body) to `out`, with default options.
pub fn encode_request_frame(out: &mut Vec<u8>, request_id: u64, request: &Request) {
    encode_request_frame_with(out, request_id, request, &RequestOptions::default());
}

fn level_to_wire(level: Level) -> fb::Level {
    match level {
        Level::Default => fb::Level::Default,
        Level::Eventual => fb::Level::Eventual,
        Level::Session => fb::Level::Session,
        Level::Strong => fb::Level::Strong,
    }
}

fn level_from_wire(level: fb::Level) -> Result<Level, WireError> {
    match level {
        fb::Level::Default => Ok(Level::Default),
        fb::Level::Eventual => Ok(Level::Eventual),
        fb::Level::Session => Ok(Level::Session),
        fb::Level::Strong => Ok(Level::Strong),
        other => Err(WireError(format!("unknown level {}", other.0))),
    }
}

/// Appends a whole request frame with its options (cluster, level, session tokens).
pub fn encode_request_frame_with(
    out: &mut Vec<u8>,
    request_id: u64,
    request: &Request,
    options: &RequestOptions,
) {
    let mut builder = FlatBufferBuilder::with_capacity(request_size_hint(request));
    let (kind, body) = build_request(&mut builder, request);
    let tokens: Vec<fb::Token> = options
        .tokens
        .iter()
        .map(|t| fb::Token::new(t.vnode, t.epoch, t.seq))
        .collect();
    let tokens = (!tokens.is_empty()).then(|| builder.create_vector(&tokens));
    let root = fb::RequestBody::create(
        &mut builder,
        &fb::RequestBodyArgs {
            request_type: kind,
            request: Some(body),
            cluster_id: options.cluster_id,
            level: level_to_wire(options.level),
            tokens,
        },
    );
    builder.finish(root, None);
    encode_frame(
        out,
        request.opcode() as u8,
        request_id,
        builder.finished_data(),
    );
}

fn request_size_hint(request: &Request) -> usize {
    let payload = match request {
        Request::Put(put) => put.key.len() + put.value.len(),
        Request::Batch(ops) => ops
            .iter()
            .map(|op| match op {
                BatchOp::Put(put) => put.key.len() + put.value.len() + 64,
                other => other.key().len() + 48,
            })
            .sum(),
        _ => 64,
    };
    payload + 128
}

type Union = WIPOffset<flatbuffers::UnionWIPOffset>;

fn build_request(builder: &mut FlatBufferBuilder<'_>, request: &Request) -> (fb::Request, Union) {
    match request {
        Request::Ping => (
            fb::Request::Ping,
            fb::Ping::create(builder, &fb::PingArgs {}).as_union_value(),
        ),
        Request::Get { key } => (fb::Request::Get, build_get(builder, key).as_union_value()),
        Request::Put(put) => (fb::Request::Put, build_put(builder, put).as_union_value()),
        Request::Delete(delete) => (
            fb::Request::Delete,
            build_delete(builder, delete).as_union_value(),
        ),
        Request::Batch(ops) => (
            fb::Request::Batch,
            build_batch(builder, ops).as_union_value(),
        ),
        Request::Scan(scan) => {
            let cursor = builder.create_vector(&scan.cursor);
            let prefix = builder.create_vector(&scan.prefix);
            let args = fb::ScanArgs {
                cursor: Some(cursor),
                prefix: Some(prefix),
                limit: scan.limit,
            };
            (
                fb::Request::Scan,
                fb::Scan::create(builder, &args).as_union_value(),
            )
        }
        Request::Stats => (
            fb::Request::Stats,
            fb::Stats::create(builder, &fb::StatsArgs {}).as_union_value(),
        ),
        Request::Topology => (
            fb::Request::Topology,
            fb::Topology::create(builder, &fb::TopologyArgs {}).as_union_value(),
        ),
        Request::Verify {
            from_vnode,
            count,
            values,
        } => {
            let args = fb::VerifyArgs {
                from_vnode: *from_vnode,
                count: *count,
                values: *values,
            };
            (
                fb::Request::Verify,
                fb::Verify::create(builder, &args).as_union_value(),
            )
        }
        Request::Auth(auth) => {
            let user = builder.create_string(&auth.user);
            let password = builder.create_string(&auth.password);
            let args = fb::AuthArgs {
                user: Some(user),
                password: Some(password),
            };
            (
                fb::Request::Auth,
                fb::Auth::create(builder, &args).as_union_value(),
            )
        }
    }
}

fn build_get<'b>(builder: &mut FlatBufferBuilder<'b>, key: &[u8]) -> WIPOffset<fb::Get<'b>> {
    let key = builder.create_vector(key);
    fb::Get::create(builder, &fb::GetArgs { key: Some(key) })
}

fn build_put<'b>(builder: &mut FlatBufferBuilder<'b>, put: &PutRequest) -> WIPOffset<fb::Put<'b>> {
    let key = builder.create_vector(&put.key);
    let value = builder.create_vector(&put.value);
    let args = fb::PutArgs {
        key: Some(key),
        value: Some(value),
        ttl_ms: put.ttl_ms,
        if_version: put.if_version.unwrap_or(0),
        has_if_version: put.if_version.is_some(),
        durability: durability_to_wire(put.durability),
    };
    fb::Put::create(builder, &args)
}

fn build_delete<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    delete: &DeleteRequest,
) -> WIPOffset<fb::Delete<'b>> {
    let key = builder.create_vector(&delete.key);
    let args = fb::DeleteArgs {
        key: Some(key),
        if_version: delete.if_version.unwrap_or(0),
        has_if_version: delete.if_version.is_some(),
        durability: durability_to_wire(delete.durability),
    };
    fb::Delete::create(builder, &args)
}

fn build_batch<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    ops: &[BatchOp],
) -> WIPOffset<fb::Batch<'b>> {
    let items: Vec<_> = ops
        .iter()
        .map(|op| {
            let (op_type, body) = match op {
                BatchOp::Get { key } => {
                    (fb::BatchOp::Get, build_get(builder, key).as_union_value())
                }
                BatchOp::Put(put) => (fb::BatchOp::Put, build_put(builder, put).as_union_value()),
                BatchOp::Delete(delete) => (
                    fb::BatchOp::Delete,
                    build_delete(builder, delete).as_union_value(),
                ),
            };
            fb::BatchItem::create(
                builder,
                &fb::BatchItemArgs {
                    op_type,
                    op: Some(body),
                },
            )
        })
        .collect();
    let items = builder.create_vector(&items);
    fb::Batch::create(builder, &fb::BatchArgs { items: Some(items) })
}

/// A frame no honest client sends: a BATCH of `items` PUTs that all point at the same key and
/// value bytes, so that a small frame names `items` times the value. For tests, fuzzing and the
/// load generator's hostile mode (a node must refuse it before copying anything).
pub fn encode_shared_value_batch_frame(
    out: &mut Vec<u8>,
    request_id: u64,
    items: usize,
    value: &[u8],
) {
    let mut builder = FlatBufferBuilder::with_capacity(value.len() + items * 32 + 256);
    let key = builder.create_vector(b"shared-key");
    let value = builder.create_vector(value);
    let args = fb::PutArgs {
        key: Some(key),
        value: Some(value),
        ..Default::default()
    };
    let put = fb::Put::create(&mut builder, &args).as_union_value();
    let item_args = fb::BatchItemArgs {
        op_type: fb::BatchOp::Put,
        op: Some(put),
    };
    let item = fb::BatchItem::create(&mut builder, &item_args);
    let items = builder.create_vector(&vec![item; items]);
    let batch = fb::Batch::create(&mut builder, &fb::BatchArgs { items: Some(items) });
    let root = fb::RequestBody::create(
        &mut builder,
        &fb::RequestBodyArgs {
            request_type: fb::Request::Batch,
            request: Some(batch.as_union_value()),
            ..Default::default()
        },
    );
    builder.finish(root, None);
    encode_frame(
        out,
        Opcode::Batch as u8,
        request_id,
        builder.finished_data(),
    );
}

/// Decodes a request body.
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    decode_request_with_options(body).map(|(request, _)| request)
}

/// Decodes a request body and the options that came with it.
pub fn decode_request_with_options(body: &[u8]) -> Result<(Request, RequestOptions), DecodeError> {
    let root = flatbuffers::root::<fb::RequestBody<'_>>(body)
        .map_err(|error| WireError(error.to_string()))?;
    check_decoded_size(&root).map_err(DecodeError::Refused)?;
    let options = RequestOptions {
        cluster_id: root.cluster_id(),
        level: level_from_wire(root.level())?,
        tokens: root
            .tokens()
            .map(|tokens| {
                tokens
                    .iter()
                    .map(|t| Token {
                        vnode: t.vnode(),
                        epoch: t.epoch(),
                        seq: t.seq(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok((copy_request(root)?, options))
}

/// Refuses, before anything is copied, a batch with too many items or whose items would decode
/// to more than `MAX_DECODED_REQUEST_BYTES` (items may share bytes in the frame, so the frame's
/// own size bounds nothing). A single operation decodes to at most twice its frame.
fn check_decoded_size(root: &fb::RequestBody<'_>) -> Result<(), Refusal> {
    let Some(items) = root.request_as_batch().and_then(|batch| batch.items()) else {
        return Ok(());
    };
    if items.len() > MAX_BATCH_OPS {
        return Err(Refusal {
            status: Status::BatchTooLarge,
            message: format!(
                "batch has {} operations, the limit is {MAX_BATCH_OPS}",
                items.len()
            ),
        });
    }
    let len = |vector: Option<flatbuffers::Vector<'_, u8>>| vector.map_or(0, |v| v.len());
    let mut decoded_bytes = 0usize;
    for item in items.iter() {
        decoded_bytes += DECODED_ITEM_BYTES
            + match item.op_type() {
                fb::BatchOp::Get => item.op_as_get().map_or(0, |get| len(get.key())),
                fb::BatchOp::Put => item
                    .op_as_put()
                    .map_or(0, |put| len(put.key()) + len(put.value())),
                fb::BatchOp::Delete => item.op_as_delete().map_or(0, |delete| len(delete.key())),
                _ => 0,
            };
        if decoded_bytes > MAX_DECODED_REQUEST_BYTES {
            return Err(Refusal {
                status: Status::BatchTooLarge,
                message: format!(
                    "batch decodes to more than {MAX_DECODED_REQUEST_BYTES} bytes (its items \
                     name more bytes than the frame limit; items may not share bytes past it)"
                ),
            });
        }
    }
    Ok(())
}

fn copy_request(root: fb::RequestBody<'_>) -> Result<Request, WireError> {
    let missing = || WireError("request body names no operation".into());
    Ok(match root.request_type() {
        fb::Request::Ping => Request::Ping,
        fb::Request::Get => Request::Get {
            key: bytes(root.request_as_get().ok_or_else(missing)?.key()),
        },
        fb::Request::Put => Request::Put(decode_put(root.request_as_put().ok_or_else(missing)?)?),
        fb::Request::Delete => Request::Delete(decode_delete(
            root.request_as_delete().ok_or_else(missing)?,
        )?),
        fb::Request::Batch => {
            Request::Batch(decode_batch(root.request_as_batch().ok_or_else(missing)?)?)
        }
        fb::Request::Scan => {
            let scan = root.request_as_scan().ok_or_else(missing)?;
            Request::Scan(ScanRequest {
                cursor: bytes(scan.cursor()),
                prefix: bytes(scan.prefix()),
                limit: scan.limit(),
            })
        }
        fb::Request::Stats => Request::Stats,
        fb::Request::Topology => Request::Topology,
        fb::Request::Verify => {
            let verify = root.request_as_verify().ok_or_else(missing)?;
            Request::Verify {
                from_vnode: verify.from_vnode(),
                count: verify.count(),
                values: verify.values(),
            }
        }
        fb::Request::Auth => {
            let auth = root.request_as_auth().ok_or_else(missing)?;
            Request::Auth(AuthRequest {
                user: auth.user().unwrap_or_default().to_string(),
                password: auth.password().unwrap_or_default().to_string(),
            })
        }
        other => return Err(WireError(format!("unknown operation {}", other.0))),
    })
}

fn decode_put(put: fb::Put<'_>) -> Result<PutRequest, WireError> {
    Ok(PutRequest {
        key: bytes(put.key()),
        value: bytes(put.value()),
        ttl_ms: put.ttl_ms(),
        if_version: put.has_if_version().then_some(put.if_version()),
        durability: durability_from_wire(put.durability())?,
    })
}

fn decode_delete(delete: fb::Delete<'_>) -> Result<DeleteRequest, WireError> {
    Ok(DeleteRequest {
        key: bytes(delete.key()),
        if_version: delete.has_if_version().then_some(delete.if_version()),
        durability: durability_from_wire(delete.durability())?,
    })
}

fn decode_batch(batch: fb::Batch<'_>) -> Result<Vec<BatchOp>, WireError> {
    let Some(items) = batch.items() else {
        return Ok(Vec::new());
    };
    let missing = || WireError("batch item names no operation".into());
    items
        .iter()
        .map(|item| {
            Ok(match item.op_type() {
                fb::BatchOp::Get => BatchOp::Get {
                    key: bytes(item.op_as_get().ok_or_else(missing)?.key()),
                },
                fb::BatchOp::Put => {
                    BatchOp::Put(decode_put(item.op_as_put().ok_or_else(missing)?)?)
                }
                fb::BatchOp::Delete => {
                    BatchOp::Delete(decode_delete(item.op_as_delete().ok_or_else(missing)?)?)
                }
                other => return Err(WireError(format!("unknown batch operation {}", other.0))),
            })
        })
        .collect()
}

// ---------------------------------------------------------------- responses

/// Appends a whole response frame to `out`. `opcode` is the request's opcode byte.
pub fn encode_response_frame(out: &mut Vec<u8>, opcode: u8, request_id: u64, response: &Response) {
    let mut builder = FlatBufferBuilder::with_capacity(response_size_hint(response));
    let (status, message, reply_type, reply) = build_response(&mut builder, response);
    let message = message.map(|m| builder.create_string(truncate_message(m)));
    let root = fb::ResponseBody::create(
        &mut builder,
        &fb::ResponseBodyArgs {
            status: fb::Status(status as u8),
            message,
            reply_type,
            reply,
        },
    );
    builder.finish(root, None);
    encode_frame(
        out,
        opcode | Opcode::RESPONSE_BIT,
        request_id,
        builder.finished_data(),
    );
}

fn truncate_message(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

fn response_size_hint(response: &Response) -> usize {
    match response {
        Response::Op(result) => result.value.as_ref().map_or(0, Vec::len) + 96,
        Response::Batch(results) => {
            results
                .iter()
                .map(|r| r.value.as_ref().map_or(0, Vec::len) + 64)
                .sum::<usize>()
                + 64
        }
        Response::Scan(page) => page.entries.iter().map(|e| e.key.len() + 32).sum::<usize>() + 64,
        Response::Verify(checks) => checks.len() * 32 + 64,
        _ => 256,
    }
}

fn build_response<'r>(
    builder: &mut FlatBufferBuilder<'_>,
    response: &'r Response,
) -> (Status, Option<&'r str>, fb::Reply, Option<Union>) {
    match response {
        Response::Error { status, message } => (*status, Some(message), fb::Reply::NONE, None),
        Response::Op(result) => (
            Status::Ok,
            None,
            fb::Reply::OpResult,
            Some(build_op_result(builder, result).as_union_value()),
        ),
        Response::Batch(results) => {
            let items: Vec<_> = results
                .iter()
                .map(|r| build_op_result(builder, r))
                .collect();
            let results = builder.create_vector(&items);
            let batch = fb::BatchResult::create(
                builder,
                &fb::BatchResultArgs {
                    results: Some(results),
                },
            );
            (
                Status::Ok,
                None,
                fb::Reply::BatchResult,
                Some(batch.as_union_value()),
            )
        }
        Response::Scan(page) => (
            Status::Ok,
            None,
            fb::Reply::ScanResult,
            Some(build_scan(builder, page).as_union_value()),
        ),
        Response::Stats(shards) => {
            let items: Vec<_> = shards
                .iter()
                .map(|s| build_shard_stats(builder, s))
                .collect();
            let shards = builder.create_vector(&items);
            let stats = fb::StatsResult::create(
                builder,
                &fb::StatsResultArgs {
                    shards: Some(shards),
                },
            );
            (
                Status::Ok,
                None,
                fb::Reply::StatsResult,
                Some(stats.as_union_value()),
            )
        }
        Response::Topology(topology) => {
            let table = builder.create_vector(&topology.vnode_shard);
            let members: Vec<_> = topology
                .members
                .iter()
                .map(|m| {
                    let addr = builder.create_string(&m.addr);
                    let zone = builder.create_string(&m.zone);
                    let args = fb::MemberArgs {
                        id: m.id,
                        addr: Some(addr),
                        shard_count: m.shard_count,
                        zone: Some(zone),
                    };
                    fb::Member::create(builder, &args)
                })
                .collect();
            let members = builder.create_vector(&members);
            let replicas = builder.create_vector(&topology.chain_replicas);
            let epochs = builder.create_vector(&topology.chain_epochs);
            let args = fb::TopologyResultArgs {
                shard_count: topology.shard_count,
                shard_port_base: topology.shard_port_base,
                vnode_shard: Some(table),
                cluster_id: topology.cluster_id,
                node_id: topology.node_id,
                members: Some(members),
                chain_width: topology.chain_width,
                chain_replicas: Some(replicas),
                chain_epochs: Some(epochs),
            };
            let reply = fb::TopologyResult::create(builder, &args);
            (
                Status::Ok,
                None,
                fb::Reply::TopologyResult,
                Some(reply.as_union_value()),
            )
        }
        Response::Verify(checks) => {
            let items: Vec<fb::VnodeCheck> = checks
                .iter()
                .map(|c| fb::VnodeCheck::new(c.vnode, c.applied, c.keys, c.digest))
                .collect();
            let vnodes = builder.create_vector(&items);
            let values: Vec<u64> = checks.iter().map(|c| c.values).collect();
            let values = builder.create_vector(&values);
            let args = fb::VerifyResultArgs {
                vnodes: Some(vnodes),
                values: Some(values),
            };
            let reply = fb::VerifyResult::create(builder, &args);
            (
                Status::Ok,
                None,
                fb::Reply::VerifyResult,
                Some(reply.as_union_value()),
            )
        }
    }
}

fn build_op_result<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    result: &OpResult,
) -> WIPOffset<fb::OpResult<'b>> {
    let message = (!result.message.is_empty())
        .then(|| builder.create_string(truncate_message(&result.message)));
    let value = result.value.as_ref().map(|v| builder.create_vector(v));
    let args = fb::OpResultArgs {
        status: fb::Status(result.status as u8),
        message,
        value,
        version: result.version,
        token_epoch: result.token_epoch,
        token_seq: result.token_seq,
    };
    fb::OpResult::create(builder, &args)
}

fn build_scan<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    page: &ScanPage,
) -> WIPOffset<fb::ScanResult<'b>> {
    let entries: Vec<_> = page
        .entries
        .iter()
        .map(|entry| {
            let key = builder.create_vector(&entry.key);
            fb::ScanEntry::create(
                builder,
                &fb::ScanEntryArgs {
                    key: Some(key),
                    version: entry.version,
                },
            )
        })
        .collect();
    let entries = builder.create_vector(&entries);
    let cursor = builder.create_vector(&page.next_cursor);
    fb::ScanResult::create(
        builder,
        &fb::ScanResultArgs {
            entries: Some(entries),
            next_cursor: Some(cursor),
        },
    )
}

fn build_shard_stats<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    s: &ShardStats,
) -> WIPOffset<fb::ShardStats<'b>> {
    let version = Some(builder.create_string(&s.version));
    let transfers: Vec<_> = s
        .transfers
        .iter()
        .map(|t| {
            let args = fb::TransferStatsArgs {
                vnode: t.vnode,
                to_node: t.to_node,
                keys: t.keys,
                bytes: t.bytes,
                elapsed_ms: t.elapsed_ms,
            };
            fb::TransferStats::create(builder, &args)
        })
        .collect();
    let transfers = Some(builder.create_vector(&transfers));
    let args = fb::ShardStatsArgs {
        shard: s.shard,
        keys: s.keys,
        live_bytes: s.live_bytes,
        disk_bytes: s.disk_bytes,
        segments: s.segments,
        gets: s.gets,
        puts: s.puts,
        deletes: s.deletes,
        scans: s.scans,
        fsyncs: s.fsyncs,
        bytes_written: s.bytes_written,
        forwarded_in: s.forwarded_in,
        overloaded: s.overloaded,
        cache_bytes: s.cache_bytes,
        cache_hits: s.cache_hits,
        cache_misses: s.cache_misses,
        index_bytes: s.index_bytes,
        compactions: s.compactions,
        bytes_reclaimed: s.bytes_reclaimed,
        expired_keys: s.expired_keys,
        synced_writes: s.synced_writes,
        uptime_ms: s.uptime_ms,
        version,
        transfers,
    };
    fb::ShardStats::create(builder, &args)
}

fn status_from_wire(status: fb::Status) -> Result<Status, WireError> {
    Status::from_wire(status.0).ok_or_else(|| WireError(format!("unknown status {}", status.0)))
}

/// Decodes a response body.
pub fn decode_response(body: &[u8]) -> Result<Response, WireError> {
    let root = flatbuffers::root::<fb::ResponseBody<'_>>(body)
        .map_err(|error| WireError(error.to_string()))?;
    let status = status_from_wire(root.status())?;
    if status != Status::Ok {
        return Ok(Response::Error {
            status,
            message: root.message().unwrap_or("").to_string(),
        });
    }
    let missing = || WireError("response names no reply".into());
    Ok(match root.reply_type() {
        fb::Reply::OpResult => Response::Op(decode_op_result(
            root.reply_as_op_result().ok_or_else(missing)?,
        )?),
        fb::Reply::BatchResult => {
            let batch = root.reply_as_batch_result().ok_or_else(missing)?;
            let results = batch
                .results()
                .map(|r| r.iter().map(decode_op_result).collect());
            Response::Batch(results.unwrap_or(Ok(Vec::new()))?)
        }
        fb::Reply::ScanResult => {
            let scan = root.reply_as_scan_result().ok_or_else(missing)?;
            let entries = scan.entries().map(|entries| {
                entries
                    .iter()
                    .map(|e| ScanEntry {
                        key: bytes(e.key()),
                        version: e.version(),
                    })
                    .collect()
            });
            Response::Scan(ScanPage {
                entries: entries.unwrap_or_default(),
                next_cursor: bytes(scan.next_cursor()),
            })
        }
        fb::Reply::StatsResult => {
            let stats = root.reply_as_stats_result().ok_or_else(missing)?;
            let shards = stats
                .shards()
                .map(|s| s.iter().map(decode_shard_stats).collect());
            Response::Stats(shards.unwrap_or_default())
        }
        fb::Reply::TopologyResult => {
            let topology = root.reply_as_topology_result().ok_or_else(missing)?;
            let members = topology.members().map(|members| {
                members
                    .iter()
                    .map(|m| MemberInfo {
                        id: m.id(),
                        addr: m.addr().unwrap_or("").to_string(),
                        shard_count: m.shard_count(),
                        zone: m.zone().unwrap_or("").to_string(),
                    })
                    .collect()
            });
            Response::Topology(Topology {
                shard_count: topology.shard_count(),
                shard_port_base: topology.shard_port_base(),
                vnode_shard: topology
                    .vnode_shard()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
                cluster_id: topology.cluster_id(),
                node_id: topology.node_id(),
                members: members.unwrap_or_default(),
                chain_width: topology.chain_width(),
                chain_replicas: topology
                    .chain_replicas()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
                chain_epochs: topology
                    .chain_epochs()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
            })
        }
        fb::Reply::VerifyResult => {
            let verify = root.reply_as_verify_result().ok_or_else(missing)?;
            let values = verify.values();
            let checks = verify.vnodes().map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, c)| VnodeCheck {
                        vnode: c.vnode(),
                        applied: c.applied(),
                        keys: c.keys(),
                        digest: c.digest(),
                        values: values.filter(|v| i < v.len()).map_or(0, |v| v.get(i)),
                    })
                    .collect()
            });
            Response::Verify(checks.unwrap_or_default())
        }
        other => return Err(WireError(format!("unknown reply {}", other.0))),
    })
}

fn decode_op_result(result: fb::OpResult<'_>) -> Result<OpResult, WireError> {
    Ok(OpResult {
        status: status_from_wire(result.status())?,
        message: result.message().unwrap_or("").to_string(),
        value: result.value().map(|v| v.bytes().to_vec()),
        version: result.version(),
        token_epoch: result.token_epoch(),
        token_seq: result.token_seq(),
    })
}

fn decode_shard_stats(s: fb::ShardStats<'_>) -> ShardStats {
    ShardStats {
        shard: s.shard(),
        keys: s.keys(),
        live_bytes: s.live_bytes(),
        disk_bytes: s.disk_bytes(),
        segments: s.segments(),
        gets: s.gets(),
        puts: s.puts(),
        deletes: s.deletes(),
        scans: s.scans(),
        fsyncs: s.fsyncs(),
        bytes_written: s.bytes_written(),
        forwarded_in: s.forwarded_in(),
        overloaded: s.overloaded(),
        cache_bytes: s.cache_bytes(),
        cache_hits: s.cache_hits(),
        cache_misses: s.cache_misses(),
        index_bytes: s.index_bytes(),
        compactions: s.compactions(),
        bytes_reclaimed: s.bytes_reclaimed(),
        expired_keys: s.expired_keys(),
        synced_writes: s.synced_writes(),
        uptime_ms: s.uptime_ms(),
        version: s.version().unwrap_or_default().to_string(),
        transfers: s
            .transfers()
            .map(|list| {
                list.iter()
                    .map(|t| TransferStats {
                        vnode: t.vnode(),
                        to_node: t.to_node(),
                        keys: t.keys(),
                        bytes: t.bytes(),
                        elapsed_ms: t.elapsed_ms(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameEvent, FrameReader};

    fn roundtrip_request(request: Request) {
        let mut out = Vec::new();
        encode_request_frame(&mut out, 42, &request);
        let mut reader = FrameReader::new();
        reader.feed(&out);
        let Some(FrameEvent::Frame { header, body }) = reader.next_event().unwrap() else {
            panic!("no frame")
        };
        assert_eq!(header.request_id, 42);
        assert_eq!(Opcode::from_wire(header.opcode), Some(request.opcode()));
        assert_eq!(decode_request(body).unwrap(), request);
    }

    fn roundtrip_response(response: Response) {
        let mut out = Vec::new();
        encode_response_frame(&mut out, Opcode::Get as u8, 7, &response);
        let mut reader = FrameReader::new();
        reader.feed(&out);
        let Some(FrameEvent::Frame { header, body }) = reader.next_event().unwrap() else {
            panic!("no frame")
        };
        assert_eq!(header.opcode, Opcode::Get as u8 | Opcode::RESPONSE_BIT);
        assert_eq!(decode_response(body).unwrap(), response);
    }

    fn put(key: &[u8], value: &[u8]) -> PutRequest {
        PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_ms: 30_000,
            if_version: Some(0),
            durability: Durability::Sync,
        }
    }

    #[test]
    fn request_options_roundtrip() {
        let options = RequestOptions {
            cluster_id: 0xabc,
            level: Level::Session,
            tokens: vec![Token {
                vnode: 7,
                epoch: 2,
                seq: 99,
            }],
        };
        let mut out = Vec::new();
        let request = Request::Get { key: b"k".to_vec() };
        encode_request_frame_with(&mut out, 1, &request, &options);
        let body = &out[crate::frame::HEADER_BYTES..];
        assert_eq!(
            decode_request_with_options(body).unwrap(),
            (request, options)
        );
        // A request without options decodes to the defaults.
        let mut out = Vec::new();
        encode_request_frame(&mut out, 1, &Request::Ping);
        let decoded = decode_request_with_options(&out[crate::frame::HEADER_BYTES..]).unwrap();
        assert_eq!(decoded.1, RequestOptions::default());
    }

    #[test]
    fn every_request_roundtrips() {
        roundtrip_request(Request::Ping);
        roundtrip_request(Request::Get { key: b"k".to_vec() });
        roundtrip_request(Request::Put(put(b"k", &[7; 5000])));
        roundtrip_request(Request::Delete(DeleteRequest {
            key: b"k".to_vec(),
            if_version: None,
            durability: Durability::Default,
        }));
        roundtrip_request(Request::Batch(vec![
            BatchOp::Get { key: b"a".to_vec() },
            BatchOp::Put(put(b"b", b"v")),
            BatchOp::Delete(DeleteRequest {
                key: b"c".to_vec(),
                if_version: Some(3),
                durability: Durability::Default,
            }),
        ]));
        roundtrip_request(Request::Scan(ScanRequest {
            cursor: vec![0, 1, b'x'],
            prefix: b"user:".to_vec(),
            limit: 10,
        }));
        roundtrip_request(Request::Stats);
        roundtrip_request(Request::Topology);
        roundtrip_request(Request::Verify {
            from_vnode: 7,
            count: 4089,
            values: true,
        });
        roundtrip_request(Request::Auth(AuthRequest {
            user: "app".into(),
            password: "correct horse".into(),
        }));
    }

    #[test]
    fn every_response_roundtrips() {
        roundtrip_response(Response::error(Status::Overloaded, "queue full"));
        roundtrip_response(Response::Op(OpResult::found(b"value".to_vec(), 9)));
        roundtrip_response(Response::Op(OpResult::error(Status::NotFound, "")));
        roundtrip_response(Response::Op(OpResult::ok(3)));
        roundtrip_response(Response::Batch(vec![
            OpResult::ok(1),
            OpResult::error(Status::VersionMismatch, "current version is 4"),
        ]));
        roundtrip_response(Response::Scan(ScanPage {
            entries: vec![ScanEntry {
                key: b"a".to_vec(),
                version: 1,
            }],
            next_cursor: vec![1, 2],
        }));
        roundtrip_response(Response::Stats(vec![ShardStats {
            shard: 1,
            keys: 5,
            uptime_ms: 12_345,
            version: "0.1.0".into(),
            ..Default::default()
        }]));
        roundtrip_response(Response::Verify(vec![
            VnodeCheck {
                vnode: 3,
                applied: 99,
                keys: 12,
                digest: u64::MAX - 5,
                values: 7,
            },
            VnodeCheck::default(),
        ]));
        roundtrip_response(Response::Topology(Topology {
            shard_count: 2,
            shard_port_base: 7001,
            vnode_shard: crate::placement::shard_table(2, 4096),
            ..Topology::default()
        }));
        roundtrip_response(Response::Topology(Topology {
            shard_count: 1,
            shard_port_base: 7001,
            vnode_shard: vec![0; 4],
            cluster_id: 0xfeed,
            node_id: 1,
            members: vec![MemberInfo {
                id: 1,
                addr: "127.0.0.1:7000".into(),
                shard_count: 1,
                zone: "a".into(),
            }],
            chain_width: 1,
            chain_replicas: vec![1, 1, 1, 1],
            chain_epochs: vec![1, 2, 3, 4],
        }));
        roundtrip_response(Response::Op(OpResult::ok(3).with_token(2, 99)));
    }

    #[test]
    fn items_sharing_bytes_are_refused_before_they_are_copied() {
        // 2 000 items all pointing at one 1 MiB value: a 1 MiB frame naming 2 GiB.
        let mut frame = Vec::new();
        encode_shared_value_batch_frame(&mut frame, 1, 2000, &vec![7u8; 1 << 20]);
        assert!(frame.len() < (1 << 20) + 64 * 1024);
        let body = &frame[crate::frame::HEADER_BYTES..];
        match decode_request(body) {
            Err(DecodeError::Refused(refusal)) => {
                assert_eq!(refusal.status, Status::BatchTooLarge)
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        // Within the limit, sharing is allowed and costs what the items decode to.
        let mut frame = Vec::new();
        encode_shared_value_batch_frame(&mut frame, 1, 10, &[7u8; 1000]);
        let Ok(Request::Batch(ops)) = decode_request(&frame[crate::frame::HEADER_BYTES..]) else {
            panic!("a small shared batch decodes");
        };
        assert_eq!(ops.len(), 10);
        // More items than a batch may hold are refused before decoding too.
        let mut frame = Vec::new();
        encode_shared_value_batch_frame(&mut frame, 1, MAX_BATCH_OPS + 1, b"v");
        let refused = decode_request(&frame[crate::frame::HEADER_BYTES..]);
        assert!(
            matches!(refused, Err(DecodeError::Refused(r)) if r.status == Status::BatchTooLarge)
        );
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut valid = Vec::new();
        encode_request_frame(
            &mut valid,
            1,
            &Request::Batch(vec![BatchOp::Put(put(b"k", b"v"))]),
        );
        let body = valid[crate::frame::HEADER_BYTES..].to_vec();
        for _ in 0..20_000 {
            let mut mutated = body.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..mutated.len());
                mutated[i] = rng.gen();
            }
            let _ = decode_request(&mutated);
            let len = rng.gen_range(0..64);
            let random: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = decode_request(&random);
            let _ = decode_response(&random);
        }
    }
}
