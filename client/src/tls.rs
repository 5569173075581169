//! TLS to the client and shard ports (`ClientConfig::tls`): the node's certificate must chain
//! to the CA given and name the address dialed (its IP address, as `tessera admin certs`
//! makes them); optionally with a client certificate for nodes that ask for one
//! (`--tls-client-ca` on the server).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ClientError;

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let bad = |e: String| ClientError::Io(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate".into()));
    }
    Ok(certs)
}

/// TLS settings trusting the CA in `ca` (PEM), presenting `identity` (certificate chain and
/// key, PEM) when given. TLS 1.3 and 1.2.
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| ClientError::Io(format!("{}: {e}", ca.display())))?;
    }
    // ring: it builds with cc alone; rustls 0.23.48 deprecates it for lacking post-quantum
    // key exchange. X25519 first: ring's default order offers P-384 first, which it computes
    // without assembly (several times X25519's cost per handshake).
    use rustls::crypto::ring::kx_group;
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    let provider = Arc::new(provider);
    let bad = |e: rustls::Error| ClientError::Io(format!("TLS: {e}"));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(bad)?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ClientError::Io(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certificates(cert)?, key)
                .map_err(bad)?
        }
    };
    Ok(Arc::new(config))
}
