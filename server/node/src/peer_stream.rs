//! A peer connection as `replica.rs` uses it: plain TCP, or TLS over it (`tls.rs`), with the
//! TCP socket underneath for its timeouts and the peer's certificate, if any, for the member
//! check.

use std::net::IpAddr;
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::net::TcpStream;
use rustls::pki_types::CertificateDer;

use crate::tls::PeerTls;

pub trait PeerStream: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
    /// The peer's end-entity certificate (TLS only).
    fn peer_certificate(&self) -> Option<&CertificateDer<'static>>;
}

impl PeerStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        None
    }
}

impl PeerStream for futures_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.get_ref().1.peer_certificates()?.first()
    }
}

impl PeerStream for futures_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.get_ref().1.peer_certificates()?.first()
    }
}

/// A failed TLS handshake: why, and whether the peer was refused (`tls::refused_peer`).
pub struct Failed {
    pub why: String,
    pub certificate: bool,
}

impl From<std::io::Error> for Failed {
    fn from(error: std::io::Error) -> Failed {
        Failed {
            certificate: crate::tls::refused_peer(&error),
            why: format!("TLS: {error}"),
        }
    }
}

fn timed_out(limit: Duration) -> Failed {
    Failed {
        why: format!("no TLS handshake within {limit:?}"),
        certificate: false,
    }
}

/// The TLS handshake of a dialed connection to the member at `ip`, within `limit`: its
/// certificate must chain to the CA and name `ip`.
pub async fn dial(
    tls: &PeerTls,
    ip: IpAddr,
    stream: TcpStream,
    limit: Duration,
) -> Result<futures_rustls::client::TlsStream<TcpStream>, Failed> {
    let connector = TlsConnector::from(tls.client());
    let handshake = async { Ok(connector.connect(PeerTls::member_name(ip), stream).await?) };
    let timeout = async {
        glommio::timer::sleep(limit).await;
        Err(timed_out(limit))
    };
    futures_lite::future::or(handshake, timeout).await
}

/// The TLS handshake of an accepted connection, within `limit`: the peer must present a
/// certificate that chains to the CA.
pub async fn accept(
    tls: &PeerTls,
    stream: TcpStream,
    limit: Duration,
) -> Result<futures_rustls::server::TlsStream<TcpStream>, Failed> {
    let acceptor = TlsAcceptor::from(tls.server());
    let handshake = async { Ok(acceptor.accept(stream).await?) };
    let timeout = async {
        glommio::timer::sleep(limit).await;
        Err(timed_out(limit))
    };
    futures_lite::future::or(handshake, timeout).await
}
