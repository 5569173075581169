//! The load generator's TLS flags, shared by `run` and `connect`: the CA that vouches for the
//! nodes, and a client certificate for nodes that ask for one (`--tls-client-ca`).

use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Tessera: connect with TLS, trusting this CA (PEM) for the nodes' certificates.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Tessera: a client certificate (PEM) for nodes that ask for one; with --tls-key.
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The client's TLS settings; `None`: plain TCP.
    pub fn client_tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        tessera_client::tls::client_tls(ca, identity)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}
