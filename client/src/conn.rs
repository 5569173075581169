//! One pipelined connection to a node, and a pool of them per address.
//!
//! Each connection pipelines: many requests share it, each with its own id, and a reader task
//! hands each response to its caller whatever the order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use tessera_schema::msg::{AuthRequest, Request, RequestOptions, Response, Status};

use crate::session::Session;
use crate::{ClientConfig, ClientError, Credentials};

type Waiter = oneshot::Sender<Result<Response, ClientError>>;

#[derive(Default)]
struct ConnState {
    session: Session,
    waiters: HashMap<u64, Waiter>,
    /// Frames encoded and not yet written. Concurrent callers append here and one flusher task
    /// writes them all at once, so a pipelined connection makes one write per batch, not one
    /// per request.
    outgoing: Vec<u8>,
    /// A flusher task is running.
    flushing: bool,
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection's two halves: plain TCP, or TLS over it (the node's certificate must name
/// the address's IP).
async fn open(
    address: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Reader, Writer), ClientError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| ClientError::Io(format!("cannot connect to {address}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        let (reader, writer) = stream.into_split();
        return Ok((Box::new(reader), Box::new(writer)));
    };
    let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .map_err(|e| ClientError::Io(format!("TLS to {address}: {e}")))?;
    let (reader, writer) = tokio::io::split(stream);
    Ok((Box::new(reader), Box::new(writer)))
}

/// One pipelined connection.
pub(crate) struct Conn {
    state: Mutex<ConnState>,
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    broken: Arc<AtomicBool>,
    /// The task reading answers: stopped when the connection is dropped, so that its half of
    /// the stream (all of it, over TLS) is closed then rather than when the node closes it.
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.lock().expect("reader lock").take() {
            reader.abort();
        }
    }
}

impl Conn {
    async fn connect(address: SocketAddr, dial: &Dial) -> Result<Arc<Conn>, ClientError> {
        let conn = Conn::open(address, dial.tls.as_ref()).await?;
        if let Some(credentials) = &dial.credentials {
            conn.login(credentials, dial.timeout).await?;
        }
        Ok(conn)
    }

    /// AUTH, before anything else is sent on the connection.
    async fn login(
        self: &Arc<Self>,
        credentials: &Credentials,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let auth = Request::Auth(AuthRequest {
            user: credentials.user.clone(),
            password: credentials.password.clone(),
        });
        let (status, message) = match self
            .call(&auth, &RequestOptions::default(), timeout)
            .await?
        {
            Response::Op(result) => (result.status, result.message),
            Response::Error { status, message } => (status, message),
            other => return Err(ClientError::Protocol(format!("AUTH answered {other:?}"))),
        };
        match status {
            Status::Ok => Ok(()),
            status => Err(ClientError::Status {
                status,
                message: format!("login as {}: {message}", credentials.user),
                version: 0,
            }),
        }
    }

    async fn open(
        address: SocketAddr,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Arc<Conn>, ClientError> {
        let (mut reader, writer) = open(address, tls).await?;
        let conn = Arc::new(Conn {
            state: Mutex::new(ConnState {
                session: Session::new(),
                ..ConnState::default()
            }),
            writer: tokio::sync::Mutex::new(writer),
            broken: Arc::new(AtomicBool::new(false)),
            reader: Mutex::new(None),
        });
        let weak = Arc::downgrade(&conn);
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = reader.read(&mut buffer).await;
                let Some(conn) = weak.upgrade() else { return };
                match read {
                    Ok(n) if n > 0 => {
                        if let Err(error) = conn.dispatch(&buffer[..n]) {
                            conn.fail_all(error);
                            return;
                        }
                    }
                    Ok(_) => {
                        return conn
                            .fail_all(ClientError::Io("connection closed by the node".into()))
                    }
                    Err(e) => return conn.fail_all(ClientError::Io(e.to_string())),
                }
            }
        });
        *conn.reader.lock().expect("reader lock") = Some(task.abort_handle());
        Ok(conn)
    }

    fn dispatch(&self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut state = self.state.lock().expect("connection state lock");
        state.session.handle_bytes(bytes);
        loop {
            match state.session.poll_response() {
                Ok(Some((0, response))) => {
                    let message = match response {
                        Response::Error { status, message } => format!("{status}: {message}"),
                        other => format!("{other:?}"),
                    };
                    return Err(ClientError::Protocol(format!(
                        "the node closed the connection: {message}"
                    )));
                }
                Ok(Some((id, response))) => {
                    if let Some(waiter) = state.waiters.remove(&id) {
                        let _ = waiter.send(Ok(response));
                    }
                }
                Ok(None) => return Ok(()),
                Err(error) => return Err(ClientError::Protocol(error.to_string())),
            }
        }
    }

    fn fail_all(&self, error: ClientError) {
        self.broken.store(true, Ordering::SeqCst);
        let mut state = self.state.lock().expect("connection state lock");
        for (_, waiter) in state.waiters.drain() {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// Writes everything queued, until the queue is empty. Runs in its own task, so that a
    /// caller's timeout can never cancel a write halfway through a frame.
    async fn flush(self: Arc<Self>) {
        loop {
            // Let the tasks that are ready now queue their requests first. Without this the
            // runtime ran the freshly spawned flusher before the other lanes woken by the same
            // read (tokio's LIFO slot), and every request went out in its own write: one
            // `sendto` per request at pipeline 16, which made the client the bottleneck.
            tokio::task::yield_now().await;
            let batch = {
                let mut state = self.state.lock().expect("connection state lock");
                if state.outgoing.is_empty() {
                    state.flushing = false;
                    return;
                }
                std::mem::take(&mut state.outgoing)
            };
            let mut writer = self.writer.lock().await;
            if let Err(e) = writer.write_all(&batch).await {
                drop(writer);
                self.fail_all(ClientError::Io(e.to_string()));
                self.state.lock().expect("connection state lock").flushing = false;
                return;
            }
        }
    }

    pub(crate) async fn call(
        self: &Arc<Self>,
        request: &Request,
        options: &RequestOptions,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(ClientError::Io("connection is closed".into()));
        }
        let (id, receiver) = {
            let mut guard = self.state.lock().expect("connection state lock");
            let state = &mut *guard;
            let id = state
                .session
                .encode_with(request, options, &mut state.outgoing);
            let (sender, receiver) = oneshot::channel();
            state.waiters.insert(id, sender);
            if !state.flushing {
                state.flushing = true;
                tokio::spawn(self.clone().flush());
            }
            (id, receiver)
        };
        let attempt = async {
            receiver
                .await
                .unwrap_or_else(|_| Err(ClientError::Io("connection dropped".into())))
        };
        let outcome = tokio::time::timeout(timeout, attempt).await;
        let result = outcome.unwrap_or(Err(ClientError::Timeout(timeout)));
        if result.is_err() {
            let mut state = self.state.lock().expect("connection state lock");
            state.session.abandon(id);
            state.waiters.remove(&id);
        }
        result
    }
}

/// What opening a connection takes: TLS, and the user to log in as.
struct Dial {
    tls: Option<Arc<rustls::ClientConfig>>,
    credentials: Option<Credentials>,
    timeout: Duration,
}

/// `pool_size` connections to one address, used round-robin, replaced when broken.
pub(crate) struct Pool {
    address: SocketAddr,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    dial: Dial,
}

impl Pool {
    pub(crate) fn new(address: SocketAddr, config: &ClientConfig) -> Pool {
        Pool {
            address,
            dial: Dial {
                tls: config.tls.clone(),
                credentials: config.credentials.clone(),
                timeout: config.timeout,
            },
            slots: (0..config.pool_size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(crate) async fn conn(&self) -> Result<Arc<Conn>, ClientError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.broken.load(Ordering::SeqCst)) {
            return Ok(conn.clone());
        }
        let conn = Conn::connect(self.address, &self.dial).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}
