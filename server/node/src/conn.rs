//! One client connection: read frames, run each request in its own task (so a connection can
//! pipeline and responses may leave out of order), write responses in batches.
//!
//! Bad input: a frame over the size limit is skipped unread and answered VALUE_TOO_LARGE or
//! BATCH_TOO_LARGE, and the connection goes on; a request over a limit gets its status and the
//! connection goes on; a frame that cannot be decoded (bad magic, version, checksum, body) is
//! answered BAD_REQUEST and only this connection is closed.

use std::rc::Rc;

use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use tessera_schema::frame::{FrameEvent, FrameReader};
use tessera_schema::msg::{Opcode, Response, Status};
use tessera_schema::verify::oversized_frame_refusal;
use tessera_schema::wire::{decode_request, encode_response_frame};

use crate::route::handle_request;
use crate::shard::{Shard, MAX_INFLIGHT_PER_CONNECTION};

const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Responses are gathered into one write up to this size.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

fn respond(out: &LocalSender<Vec<u8>>, opcode: u8, request_id: u64, response: &Response) {
    let mut frame = Vec::new();
    encode_response_frame(
        &mut frame,
        opcode & !Opcode::RESPONSE_BIT,
        request_id,
        response,
    );
    let _ = out.try_send(frame);
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.split();
    let (out, out_rx) = local_channel::new_unbounded::<Vec<u8>>();
    let out = Rc::new(out);
    let writer_task = glommio::spawn_local(write_loop(writer, out_rx));
    let permits = Rc::new(Semaphore::new(MAX_INFLIGHT_PER_CONNECTION));
    let mut frames = FrameReader::new();
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    // Responses of requests answered inline, sent together once the bytes read are processed.
    let mut inline = Vec::new();
    'read: loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        frames.feed(&buffer[..n]);
        loop {
            let event = match frames.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(error) => {
                    let id = match error {
                        tessera_schema::frame::FrameError::Checksum { request_id } => request_id,
                        _ => 0,
                    };
                    respond(
                        &out,
                        0,
                        id,
                        &Response::error(Status::BadRequest, error.to_string()),
                    );
                    break 'read;
                }
            };
            let (header, body) = match event {
                FrameEvent::Oversized { header } => {
                    let refusal = oversized_frame_refusal(header.opcode, header.body_len);
                    let response = Response::error(refusal.status, refusal.message);
                    respond(&out, header.opcode, header.request_id, &response);
                    continue;
                }
                FrameEvent::Frame { header, body } => (header, body),
            };
            let request = match decode_request(body) {
                Ok(request) if request.opcode() as u8 == header.opcode => request,
                decoded => {
                    let message = match decoded {
                        Err(error) => error.to_string(),
                        Ok(_) => "the frame's opcode does not match its body".to_string(),
                    };
                    let response = Response::error(Status::BadRequest, message);
                    respond(&out, header.opcode, header.request_id, &response);
                    break 'read;
                }
            };
            let Ok(permit) = permits.clone().acquire_static_permit(1).await else {
                break 'read;
            };
            let request_shard = shard.clone();
            let mut task = Box::pin(async move {
                request_shard.inflight.set(request_shard.inflight.get() + 1);
                let response = handle_request(&request_shard, request).await;
                request_shard.inflight.set(request_shard.inflight.get() - 1);
                response
            });
            // Most requests finish without waiting (an in-memory read, a write acknowledged on
            // append): answer those inline, gathered into one write per read from the socket.
            // The rest (disk reads, syncs, other shards) continue in their own task.
            match futures::poll!(&mut task) {
                std::task::Poll::Ready(response) => {
                    encode_response_frame(&mut inline, header.opcode, header.request_id, &response);
                    drop(permit);
                    if inline.len() >= WRITE_BATCH_BYTES {
                        let _ = out.try_send(std::mem::take(&mut inline));
                    }
                }
                std::task::Poll::Pending => {
                    let out = out.clone();
                    glommio::spawn_local(async move {
                        let response = task.await;
                        respond(&out, header.opcode, header.request_id, &response);
                        drop(permit);
                    })
                    .detach();
                }
            }
        }
        if !inline.is_empty() {
            let _ = out.try_send(std::mem::take(&mut inline));
        }
    }
    if !inline.is_empty() {
        let _ = out.try_send(inline);
    }
    drop(out);
    let _ = writer_task.await;
}

async fn write_loop<W: futures::AsyncWrite + Unpin>(
    mut writer: W,
    responses: LocalReceiver<Vec<u8>>,
) {
    while let Some(mut batch) = responses.recv().await {
        while batch.len() < WRITE_BATCH_BYTES {
            match responses.recv().now_or_never() {
                Some(Some(more)) => batch.extend_from_slice(&more),
                _ => break,
            }
        }
        if writer.write_all(&batch).await.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
    let _ = writer.close().await;
}
