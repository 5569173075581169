//! One client connection: read frames, run each request in its own task (so a connection can
//! pipeline and responses may leave out of order), write responses in batches.
//!
//! Bad input: a frame over the size limit is skipped unread and answered VALUE_TOO_LARGE or
//! BATCH_TOO_LARGE, and the connection goes on; a request over a limit gets its status and the
//! connection goes on; a frame that cannot be decoded (bad magic, version, checksum, body) is
//! answered BAD_REQUEST and only this connection is closed.
//!
//! Memory (`budget.rs`): the connection's partial frame, its running requests and its unwritten
//! answers are charged to it and to its shard. Past `CONNECTION_SOFT_BYTES` the reader waits
//! for answers to drain before taking another frame; a frame's body is reserved when its header
//! arrives, or skipped and answered OVERLOADED when the shard has no room for it; a shard over
//! its budget answers new requests OVERLOADED (PING excepted) without decoding them.
//!
//! Time: a frame must arrive within `--frame-timeout-ms` (default `FRAME_ARRIVAL_GRACE_MS`) of
//! its first byte plus a second per MiB of body, or the connection is closed (BAD_REQUEST says why); an answer that cannot be
//! written for `ANSWER_WRITE_TIMEOUT` closes it too. Idle connections are not timed out: the
//! connection limit bounds them.
//!
//! Who: with users (`--users`), the connection's `login::Session` decides what each request
//! may do before it runs (`access.rs`); AUTH is answered in order, before the frames after it
//! are read, and an anonymous connection is closed at its login deadline.
//!
//! Fairness: the reader checks every `FRAMES_PER_FAIRNESS_CHECK` frames whether the executor
//! wants the core back (its preemption timer, `main.rs`), so one connection's backlog cannot
//! hold the shard. Cancellation: when the client closes the connection, its running requests
//! are aborted and release what they held.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{AbortHandle, Abortable};
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::sync::Semaphore;
use tessera_schema::frame::{FrameEvent, FrameHeader, FrameReader, HEADER_BYTES};
use tessera_schema::limits::*;
use tessera_schema::msg::RequestOptions;
use tessera_schema::msg::{Opcode, Request, Response, Status};
use tessera_schema::verify::oversized_frame_refusal;
use tessera_schema::wire::{decode_request_with_options, encode_response_frame, DecodeError};

use crate::access::{filter_scan, merge_batch, split_batch, Grant};
use crate::budget::{Charge, ConnBudget};
use crate::login::Session;
use crate::metrics::RequestKind;
use crate::route::handle_request;
use crate::shard::Shard;

/// Responses are gathered into one write up to this size.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// An answer that cannot be written for this long means the client stopped reading: close.
const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a reader waiting for its answers to drain looks again.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(1);

/// Encoded answers on their way to the socket, with the bytes they hold.
struct Outgoing {
    frames: Vec<u8>,
    answers: u64,
    _charge: Charge,
}

/// What the reader and the request tasks of one connection share.
struct Conn {
    shard: Rc<Shard>,
    budget: Arc<ConnBudget>,
    out: LocalSender<Outgoing>,
    /// Requests taken whose answers are not yet written.
    outstanding: Rc<Cell<u64>>,
    /// The writer stopped (the socket broke or the client stopped reading).
    writer_gone: Rc<Cell<bool>>,
    permits: Rc<Semaphore>,
    /// Permits for running SCANs (`MAX_SCANS_PER_CONNECTION`).
    scan_permits: Rc<Semaphore>,
    /// Running request tasks, aborted when the connection closes.
    tasks: RefCell<HashMap<u64, AbortHandle>>,
    next_task: Cell<u64>,
    /// Who the client is, and what it may do.
    session: Session,
}

impl Conn {
    /// Queues one answer.
    fn send(&self, opcode: u8, request_id: u64, response: &Response) {
        let mut frame = Vec::new();
        encode_answer(&mut frame, opcode, request_id, response);
        self.send_frames(frame, 1);
    }

    fn send_frames(&self, frames: Vec<u8>, answers: u64) {
        self.shard.metrics.sent(frames.len());
        let charge = Charge::new(&self.budget, frames.capacity() as u64);
        self.outstanding.set(self.outstanding.get() + answers);
        let outgoing = Outgoing {
            frames,
            answers,
            _charge: charge,
        };
        if self.out.try_send(outgoing).is_err() {
            self.outstanding.set(self.outstanding.get() - answers);
        }
    }

    fn refuse(&self, header: &FrameHeader, status: Status, message: String) {
        self.shard.metrics.refusal(header.opcode, status);
        self.send(
            header.opcode,
            header.request_id,
            &Response::error(status, message),
        );
    }

    /// Waits until the connection is under its soft limit or has nothing outstanding.
    async fn wait_for_room(&self) {
        while self.budget.is_over_soft() && self.outstanding.get() > 0 && !self.writer_gone.get() {
            glommio::timer::sleep(BACKPRESSURE_POLL).await;
        }
    }

    fn abort_all(&self) {
        for (_, task) in self.tasks.borrow_mut().drain() {
            task.abort();
        }
    }
}

/// Appends an answer's frame. Every answer is sized to fit the response limit that clients
/// enforce (`MAX_RESPONSE_BODY_BYTES`); one that would not (a bug) becomes INTERNAL, so that a
/// client never gets a frame it cannot read.
fn encode_answer(out: &mut Vec<u8>, opcode: u8, request_id: u64, response: &Response) {
    let start = out.len();
    let opcode = opcode & !Opcode::RESPONSE_BIT;
    encode_response_frame(out, opcode, request_id, response);
    let body_bytes = out.len() - start - HEADER_BYTES;
    if body_bytes > MAX_RESPONSE_BODY_BYTES {
        out.truncate(start);
        let message = format!("an answer of {body_bytes} bytes was not sent: over the limit");
        tracing::error!(request_id, "{message}");
        encode_response_frame(
            out,
            opcode,
            request_id,
            &Response::error(Status::Internal, message),
        );
    }
}

/// Answers gathered while handling the bytes of one read, sent as one write.
struct Inline {
    frames: Vec<u8>,
    answers: u64,
}

impl Inline {
    fn flush(&mut self, conn: &Conn) {
        if self.answers > 0 {
            conn.send_frames(std::mem::take(&mut self.frames), self.answers);
            self.answers = 0;
        }
    }
}

/// Serves one connection until the client closes it, its stream breaks, or it misbehaves.
pub async fn serve<S>(shard: Rc<Shard>, stream: S, budget: Arc<ConnBudget>, session: Session)
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin + 'static,
{
    let (reader, writer) = stream.split();
    let (out, out_rx) = local_channel::new_unbounded::<Outgoing>();
    let outstanding = Rc::new(Cell::new(0));
    let writer_gone = Rc::new(Cell::new(false));
    let writer_task = glommio::spawn_local(write_loop(
        writer,
        out_rx,
        outstanding.clone(),
        writer_gone.clone(),
    ));
    let conn = Rc::new(Conn {
        shard,
        budget,
        out,
        outstanding,
        writer_gone,
        permits: Rc::new(Semaphore::new(MAX_INFLIGHT_PER_CONNECTION)),
        scan_permits: Rc::new(Semaphore::new(MAX_SCANS_PER_CONNECTION)),
        tasks: RefCell::new(HashMap::new()),
        next_task: Cell::new(0),
        session,
    });
    read_loop(&conn, reader).await;
    conn.abort_all();
    // Request tasks hold only weak references: dropping this closes the answer queue, and the
    // writer ends once it has written what is queued.
    debug_assert_eq!(Rc::strong_count(&conn), 1);
    drop(conn);
    let _ = writer_task.await;
}

/// Why the reader stopped.
enum Flow {
    Continue,
    Close,
}

/// A frame in progress: when it began, and whether its body was taken (and reserved).
#[derive(Default)]
struct Partial {
    since: Option<Instant>,
    admitted: bool,
}

async fn read_loop<R: futures::AsyncRead + Unpin>(conn: &Rc<Conn>, mut reader: R) {
    let mut frames = FrameReader::new();
    let mut buffer = vec![0u8; CONNECTION_READ_BYTES];
    let _base = Charge::new(&conn.budget, CONNECTION_BASE_BYTES);
    let frame_charge = Charge::new(&conn.budget, 0);
    let mut partial = Partial::default();
    let mut inline = Inline {
        frames: Vec::new(),
        answers: 0,
    };
    loop {
        conn.wait_for_room().await;
        if conn.writer_gone.get() {
            return;
        }
        let grace_ms = conn.shard.node.frame_grace_ms;
        let frame_deadline = deadline(&frames, &partial, grace_ms);
        let login_deadline = conn.session.deadline();
        let deadline = match (frame_deadline, login_deadline) {
            (Some(frame), Some(login)) => Some(frame.min(login)),
            (frame, login) => frame.or(login),
        };
        let n = match read_some(&mut reader, &mut buffer, deadline).await {
            ReadOutcome::Bytes(n) => n,
            ReadOutcome::Closed => return,
            ReadOutcome::Late if login_deadline.is_some_and(|at| Instant::now() >= at) => {
                let message = "no AUTH in time (--login-timeout-ms); closing the connection";
                conn.shard.metrics.auth_failed("deadline");
                conn.send(0, 0, &Response::error(Status::Unauthenticated, message));
                return;
            }
            ReadOutcome::Late => {
                let id = frames.partial_header().map_or(0, |h| h.request_id);
                let message = "frame not completed in time; closing the connection";
                conn.shard.metrics.refusal(0, Status::BadRequest);
                conn.send(0, id, &Response::error(Status::BadRequest, message));
                return;
            }
        };
        conn.shard.metrics.received(n);
        frames.feed(&buffer[..n]);
        let flow = handle_frames(conn, &mut frames, &mut partial, &mut inline).await;
        inline.flush(conn);
        if let Flow::Close = flow {
            return;
        }
        admit_partial(conn, &mut frames, &mut partial);
        frame_charge.set(partial_bytes(&frames, &partial));
        if !frames.is_partial() {
            frames.shrink_when_empty();
            partial.since = None;
        } else if partial.since.is_none() {
            partial.since = Some(Instant::now());
        }
    }
}

/// Bytes the partial frame holds: its whole body once admitted (reserved), else what arrived.
fn partial_bytes(frames: &FrameReader, partial: &Partial) -> u64 {
    let reserved = match (partial.admitted, frames.partial_header()) {
        (true, Some(header)) => HEADER_BYTES as u64 + u64::from(header.body_len),
        _ => 0,
    };
    reserved.max(frames.buffered_bytes() as u64)
}

/// When the frame in progress must be complete: its first byte's time, plus the grace
/// (`--frame-timeout-ms`), plus a second per MiB of its body.
fn deadline(frames: &FrameReader, partial: &Partial, grace_ms: u64) -> Option<Instant> {
    let since = partial.since?;
    let body_mib = frames
        .partial_header()
        .map_or(0, |h| u64::from(h.body_len) >> 20);
    Some(since + Duration::from_millis(grace_ms + body_mib * 1000))
}

enum ReadOutcome {
    Bytes(usize),
    Closed,
    Late,
}

async fn read_some<R: futures::AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut [u8],
    deadline: Option<Instant>,
) -> ReadOutcome {
    let read = async {
        match reader.read(buffer).await {
            Ok(0) | Err(_) => ReadOutcome::Closed,
            Ok(n) => ReadOutcome::Bytes(n),
        }
    };
    let Some(deadline) = deadline else {
        return read.await;
    };
    let late = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        ReadOutcome::Late
    };
    futures_lite::future::or(read, late).await
}

/// Takes the body of the frame whose header just arrived if the shard has room for it;
/// otherwise skips it unbuffered and answers OVERLOADED.
fn admit_partial(conn: &Conn, frames: &mut FrameReader, partial: &mut Partial) {
    let Some(header) = frames.partial_header() else {
        return;
    };
    if partial.admitted {
        return;
    }
    let body_bytes = u64::from(header.body_len);
    let large = body_bytes > LARGE_FRAME_BYTES;
    if conn.budget.shard().has_room(body_bytes, large) {
        partial.admitted = true;
        return;
    }
    frames.skip_partial();
    conn.refuse(
        &header,
        Status::Overloaded,
        format!(
            "the node has no room for a {body_bytes}-byte frame now (its connection memory \
             budget is in use); retry later"
        ),
    );
}

/// Handles every whole frame buffered so far.
async fn handle_frames(
    conn: &Rc<Conn>,
    frames: &mut FrameReader,
    partial: &mut Partial,
    inline: &mut Inline,
) -> Flow {
    let mut handled = 0u32;
    loop {
        handled += 1;
        if handled.is_multiple_of(FRAMES_PER_FAIRNESS_CHECK) && glommio::executor().need_preempt() {
            inline.flush(conn);
            glommio::executor().yield_if_needed().await;
        }
        if conn.budget.is_over_soft() && conn.outstanding.get() > 0 {
            inline.flush(conn);
            conn.wait_for_room().await;
        }
        let event = match frames.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => return Flow::Continue,
            Err(error) => {
                let id = match error {
                    tessera_schema::frame::FrameError::Checksum { request_id } => request_id,
                    _ => 0,
                };
                conn.shard.metrics.refusal(0, Status::BadRequest);
                conn.send(
                    0,
                    id,
                    &Response::error(Status::BadRequest, error.to_string()),
                );
                return Flow::Close;
            }
        };
        *partial = Partial::default();
        let (header, body) = match event {
            FrameEvent::Oversized { header } => {
                let refusal = oversized_frame_refusal(header.opcode, header.body_len);
                conn.refuse(&header, refusal.status, refusal.message);
                continue;
            }
            FrameEvent::Frame { header, body } => (header, body),
        };
        if conn.budget.shard().is_over() && header.opcode != Opcode::Ping as u8 {
            let message = "the node's connection memory budget is in use; retry later";
            conn.refuse(&header, Status::Overloaded, message.into());
            continue;
        }
        let request = match decode(conn, &header, body) {
            Ok(decoded) => decoded,
            Err(flow) => match flow {
                Flow::Continue => continue,
                Flow::Close => return Flow::Close,
            },
        };
        dispatch(conn, header, request, inline).await;
    }
}

/// Decodes a body; refusals are answered here (`Err(Continue)`), malformed bodies and
/// clients of another cluster close.
fn decode(
    conn: &Conn,
    header: &FrameHeader,
    body: &[u8],
) -> Result<(Request, RequestOptions), Flow> {
    let cluster_id = conn.shard.node.cluster.as_ref().map_or(0, |c| c.id);
    let message = match decode_request_with_options(body) {
        Ok((_, options)) if options.cluster_id != 0 && options.cluster_id != cluster_id => {
            format!(
                "this node belongs to cluster {cluster_id:016x}, not {:016x}",
                options.cluster_id
            )
        }
        Ok((request, options)) if request.opcode() as u8 == header.opcode => {
            return Ok((request, options))
        }
        Ok(_) => "the frame's opcode does not match its body".to_string(),
        Err(DecodeError::Refused(refusal)) => {
            conn.refuse(header, refusal.status, refusal.message);
            return Err(Flow::Continue);
        }
        Err(DecodeError::Malformed(error)) => error.to_string(),
    };
    conn.refuse(header, Status::BadRequest, message);
    Err(Flow::Close)
}

/// Bytes a decoded request holds (its keys and values, and a little per item).
fn request_bytes(request: &Request) -> u64 {
    use tessera_schema::msg::BatchOp;
    let op_bytes = |op: &BatchOp| match op {
        BatchOp::Put(put) => put.key.len() + put.value.len() + DECODED_ITEM_BYTES,
        other => other.key().len() + DECODED_ITEM_BYTES,
    };
    (match request {
        Request::Get { key } => key.len(),
        Request::Put(put) => put.key.len() + put.value.len(),
        Request::Delete(delete) => delete.key.len(),
        Request::Batch(ops) => ops.iter().map(op_bytes).sum(),
        Request::Scan(scan) => scan.cursor.len() + scan.prefix.len(),
        _ => 0,
    } + DECODED_ITEM_BYTES) as u64
}

/// Runs one request: inline when it finishes without waiting (an in-memory read, a write
/// acknowledged on append), otherwise in its own task, aborted if the connection closes.
async fn dispatch(
    conn: &Rc<Conn>,
    header: FrameHeader,
    (request, options): (Request, RequestOptions),
    inline: &mut Inline,
) {
    // Timed from here: waiting for the connection's in-flight permit counts too.
    let started = Instant::now();
    let charge = Arc::new(Charge::new(&conn.budget, request_bytes(&request)));
    let kind = RequestKind::of(&request, options.level);
    let request = match request {
        Request::Auth(auth) => {
            // In order: frames after an AUTH are not read until it is answered.
            inline.flush(conn);
            let result = conn.session.login(auth, &conn.shard.metrics).await;
            let status = result.status;
            conn.send(header.opcode, header.request_id, &Response::Op(result));
            conn.shard.metrics.request(kind, status, started.elapsed());
            return;
        }
        request => request,
    };
    let (grant, user) = match conn.session.authorize(&request, &conn.shard.metrics) {
        Ok(granted) => granted,
        Err(refusal) => {
            let response = Response::error(refusal.status, refusal.message);
            encode_answer(
                &mut inline.frames,
                header.opcode,
                header.request_id,
                &response,
            );
            inline.answers += 1;
            conn.shard
                .metrics
                .request(kind, refusal.status, started.elapsed());
            return;
        }
    };
    let options = crate::cluster_exec::OpOptions {
        level: options.level,
        tokens: options.tokens,
    };
    let Ok(permit) = conn.permits.clone().acquire_static_permit(1).await else {
        return;
    };
    let scan_permit = match &request {
        Request::Scan(_) => match conn.scan_permits.clone().acquire_static_permit(1).await {
            Ok(permit) => Some(permit),
            Err(_) => return,
        },
        _ => None,
    };
    let shard = conn.shard.clone();
    let request_charge = charge.clone();
    let mut task = Box::pin(async move {
        shard.inflight.set(shard.inflight.get() + 1);
        let response = run_granted(&shard, request, options, &request_charge, grant, user).await;
        shard.inflight.set(shard.inflight.get() - 1);
        shard
            .metrics
            .request(kind, response.status(), started.elapsed());
        response
    });
    if let std::task::Poll::Ready(response) = futures::poll!(&mut task) {
        encode_answer(
            &mut inline.frames,
            header.opcode,
            header.request_id,
            &response,
        );
        inline.answers += 1;
        drop((permit, scan_permit));
        if inline.frames.len() >= WRITE_BATCH_BYTES {
            inline.flush(conn);
        }
        return;
    }
    // Pending: the task owns the request's charge until its answer is queued.
    let id = conn.next_task.get();
    conn.next_task.set(id + 1);
    let (abort, registration) = AbortHandle::new_pair();
    conn.tasks.borrow_mut().insert(id, abort);
    let task_conn = Rc::downgrade(conn);
    let running = Abortable::new(
        async move {
            let response = task.await;
            if let Some(conn) = task_conn.upgrade() {
                conn.send(header.opcode, header.request_id, &response);
                conn.tasks.borrow_mut().remove(&id);
            }
            drop(charge);
            drop((permit, scan_permit));
        },
        registration,
    );
    glommio::spawn_local(running.map(|_| ())).detach();
}

/// Runs what the grant allows of a request: the allowed items of a batch (the others answer
/// PERMISSION_DENIED in their places), the readable keys of a scan page.
async fn run_granted(
    shard: &Rc<Shard>,
    request: Request,
    options: crate::cluster_exec::OpOptions,
    charge: &Arc<Charge>,
    grant: Grant,
    user: Option<Arc<crate::users::User>>,
) -> Response {
    let (grant, Some(user)) = (grant, user) else {
        return handle_request(shard, request, options, charge).await;
    };
    match (grant, request) {
        (Grant::FilteredScan, request) => {
            filter_scan(&user, handle_request(shard, request, options, charge).await)
        }
        (Grant::PartBatch(refused), Request::Batch(ops)) => {
            let (kept, refusals) = split_batch(&user, ops, &refused);
            let answer = match kept.is_empty() {
                true => Response::Batch(Vec::new()),
                false => handle_request(shard, Request::Batch(kept), options, charge).await,
            };
            merge_batch(answer, refusals)
        }
        (_, request) => handle_request(shard, request, options, charge).await,
    }
}

async fn write_loop<W: futures::AsyncWrite + Unpin>(
    mut writer: W,
    answers: LocalReceiver<Outgoing>,
    outstanding: Rc<Cell<u64>>,
    writer_gone: Rc<Cell<bool>>,
) {
    while let Some(first) = answers.recv().await {
        let mut batch = vec![first];
        let mut bytes = batch[0].frames.len();
        while bytes < WRITE_BATCH_BYTES {
            match answers.recv().now_or_never() {
                Some(Some(more)) => {
                    bytes += more.frames.len();
                    batch.push(more);
                }
                _ => break,
            }
        }
        let written = write_batch(&mut writer, &batch).await;
        let count: u64 = batch.iter().map(|o| o.answers).sum();
        outstanding.set(outstanding.get() - count);
        drop(batch);
        if !written {
            break;
        }
    }
    writer_gone.set(true);
    let _ = writer.close().await;
    // Answers still queued are dropped with their charges.
    while let Some(Some(outgoing)) = answers.recv().now_or_never() {
        outstanding.set(outstanding.get() - outgoing.answers);
    }
}

/// Writes a batch of answers; false when the socket broke or the client stopped reading.
async fn write_batch<W: futures::AsyncWrite + Unpin>(writer: &mut W, batch: &[Outgoing]) -> bool {
    let write = async {
        // One write for the batch: a syscall per answer costs more than the copy.
        match batch {
            [one] => writer.write_all(&one.frames).await?,
            many => {
                writer
                    .write_all(&many.iter().fold(Vec::new(), |mut all, o| {
                        all.extend_from_slice(&o.frames);
                        all
                    }))
                    .await?
            }
        }
        writer.flush().await
    };
    let timeout = async {
        glommio::timer::sleep(ANSWER_WRITE_TIMEOUT).await;
        Err(std::io::Error::other("timed out"))
    };
    futures_lite::future::or(write, timeout).await.is_ok()
}
