//! `--metrics-listen`: `/metrics` over HTTP, from a thread of its own.
//!
//! Port 0 takes a free port; the ready line names the address served.
//! The listener is bound before anything else starts (a port in use stops startup with one
//! line, exit status 2), and serves from then on: while the node is still `starting`
//! (recovering its logs, joining its cluster) a scrape already shows the node's state. Each
//! request is answered on a thread of its own, at most `MAX_ANSWERING` at once (more get 503
//! at once): a scrape reads the registry (`families.rs`) for a millisecond or so, and a client
//! that does not read its answer holds only its own thread.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::NodeMetrics;

/// Requests answered at once; past it, 503.
const MAX_ANSWERING: usize = 4;

/// The content type of Prometheus' text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Serves `/metrics` on `listener` until the process exits; returns the address served.
pub fn spawn(listener: TcpListener, metrics: Arc<NodeMetrics>) -> Result<SocketAddr, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let answering = Arc::new(AtomicUsize::new(0));
            for request in server.incoming_requests() {
                if answering.fetch_add(1, Ordering::SeqCst) >= MAX_ANSWERING {
                    answering.fetch_sub(1, Ordering::SeqCst);
                    let busy = text_response(503, "text/plain", "busy: scrape again\n".into());
                    let _ = request.respond(busy);
                    continue;
                }
                let (metrics, done) = (metrics.clone(), answering.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-answer".into())
                    .spawn(move || {
                        let response = answer(request.method(), request.url(), &metrics);
                        let _ = request.respond(response);
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    answering.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(addr)
}

fn answer(
    method: &tiny_http::Method,
    url: &str,
    metrics: &NodeMetrics,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let path = url.split('?').next().unwrap_or(url);
    let (status, content_type, body) = match (method, path) {
        (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
            (200, TEXT_FORMAT, metrics.encode())
        }
        (tiny_http::Method::Get | tiny_http::Method::Head, _) => (
            404,
            "text/plain",
            "not found: metrics are at /metrics\n".into(),
        ),
        _ => (405, "text/plain", "only GET /metrics is served\n".into()),
    };
    text_response(status, content_type, body)
}

fn text_response(
    status: u16,
    content_type: &str,
    body: String,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header =
        tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
    tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header)
}
