//! Mutual TLS between members (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`).
//!
//! Every peer connection, the forming exchange included, is TLS 1.3 with a certificate on both
//! sides, and both must chain to the cluster's CA. A member's certificate must also name the
//! member: its IP address as a subject alternative name, checked against the address in
//! `--peers` of the member it dials, and of the member its Hello claims to be when it is
//! accepted. So an outsider without a certificate from the CA gets no connection, and a
//! certificate made for one member's address cannot speak for another's.
//!
//! With `--peer-tls-crl`, a member whose certificate the CA's revocation list names is refused
//! both ways; the certificates, key, CA and list are read again on SIGHUP (connections already
//! open keep theirs).
//!
//! Members that share an IP address (several on one host, as in tests on loopback) cannot be
//! told apart by their certificates: there a certificate proves "a member of this cluster",
//! not which one. `tessera admin certs` makes a CA and member certificates for a dev cluster.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};

/// Where the peer certificates are.
#[derive(Clone, Debug)]
pub struct PeerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The CA's revocation list: members it names are refused.
    pub crl: Option<PathBuf>,
}

impl PeerTlsFiles {
    /// All three paths (and maybe a CRL), none, or an error naming what is missing.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
        crl: Option<PathBuf>,
    ) -> Result<Option<PeerTlsFiles>, String> {
        match (cert, key, ca) {
            (None, None, None) if crl.is_none() => Ok(None),
            (None, None, None) => Err("--peer-tls-crl needs --peer-tls-*".into()),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(PeerTlsFiles { cert, key, ca, crl })),
            _ => Err(
                "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together: give all three"
                    .into(),
            ),
        }
    }
}

/// The TLS settings of a node's peer connections, both ways, replaced whole on SIGHUP: a
/// handshake takes the settings current when it starts.
pub struct PeerTls {
    files: PeerTlsFiles,
    configs: std::sync::RwLock<PeerConfigs>,
}

#[derive(Clone)]
struct PeerConfigs {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// rustls on ring, with X25519 as the first key exchange. ring builds with cc alone (aws-lc-rs
/// needs cmake and doubles the build here); rustls 0.23.48 deprecates it for lacking
/// post-quantum key exchange, which stays open until the build takes aws-lc-rs. Its default
/// order puts P-384 first, which ring computes without assembly: a handshake cost the node
/// 620 us of CPU, against 165 us with X25519 (BENCHMARKS.md, "Handshakes"). P-384 and P-256
/// stay offered for peers that want them.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::kx_group;
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(provider)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let read = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    let certs = read
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The certificate revocation lists (PEM) in `path`, which may hold several.
fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let read = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read a revocation list from {}: {e}", path.display()))?;
    let lists = read
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad revocation list in {}: {e}", path.display()))?;
    if lists.is_empty() {
        return Err(format!("no revocation list in {}", path.display()));
    }
    Ok(lists)
}

/// The CA certificates in `path` as trust roots.
fn roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(path)? {
        roots
            .add(ca)
            .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A verifier of client certificates against `ca`, and against the revocation list in `crl`
/// if there is one. Only the end certificate's status is checked (the CA's list names what it
/// issued), and a certificate whose status the list cannot tell is refused: a list from
/// another CA refuses every client, which an operator sees at once, where passing them would
/// hide that nothing is checked.
fn client_verifier(
    ca: &Path,
    crl: Option<&Path>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider);
    let builder = match crl {
        None => builder,
        Some(crl) => builder
            .with_crls(revocation_lists(crl)?)
            .only_check_end_entity_revocation(),
    };
    builder.build().map_err(|e| format!("TLS: {e}"))
}

impl PeerTls {
    pub fn load(files: PeerTlsFiles) -> Result<PeerTls, String> {
        let configs = PeerConfigs::load(&files)?;
        Ok(PeerTls {
            files,
            configs: std::sync::RwLock::new(configs),
        })
    }

    /// The settings for accepting a member's connection.
    pub fn server(&self) -> Arc<rustls::ServerConfig> {
        self.configs.read().expect("peer TLS lock").server.clone()
    }

    /// The settings for dialing a member.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        self.configs.read().expect("peer TLS lock").client.clone()
    }

    /// Reads the files again; on an error the settings in use stay.
    pub fn reload(&self) -> Result<(), String> {
        let configs = PeerConfigs::load(&self.files)?;
        *self.configs.write().expect("peer TLS lock") = configs;
        Ok(())
    }

    /// The name a dialed member's certificate must carry.
    pub fn member_name(ip: IpAddr) -> ServerName<'static> {
        ServerName::IpAddress(ip.into())
    }
}

impl PeerConfigs {
    fn load(files: &PeerTlsFiles) -> Result<PeerConfigs, String> {
        let provider = provider();
        let chain = certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
            format!(
                "cannot read a private key from {}: {e}",
                files.key.display()
            )
        })?;
        let bad = |e: rustls::Error| format!("peer TLS: {e}");
        let crl = files.crl.as_deref();
        let verifier =
            client_verifier(&files.ca, crl, provider.clone()).map_err(|e| format!("peer {e}"))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                format!(
                    "peer TLS: {} and {}: {e}",
                    files.cert.display(),
                    files.key.display()
                )
            })?;
        let dialed = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots(&files.ca)?,
            provider.clone(),
        );
        let dialed = match crl {
            None => dialed,
            Some(crl) => dialed
                .with_crls(revocation_lists(crl)?)
                .only_check_end_entity_revocation(),
        };
        let dialed = dialed.build().map_err(|e| format!("peer TLS: {e}"))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad)?
            .with_webpki_verifier(dialed)
            .with_client_auth_cert(chain, key)
            .map_err(bad)?;
        Ok(PeerConfigs {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Why a TLS handshake failed, for logs and metrics: `certificate` (the other side's
/// certificate was refused, or it refused this one or had none), `protocol` (it does not speak
/// TLS, or not a version or suite this node takes), or `closed` (the connection went away).
pub fn failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::AlertDescription as Alert;
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            "certificate"
        }
        Some(rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::CertificateRequired
            | Alert::UnknownCA
            | Alert::AccessDenied,
        )) => "certificate",
        Some(_) => "protocol",
        None => "closed",
    }
}

/// Whether a TLS connection failed over a certificate or a peer that does not speak TLS: an
/// operator must hear of that, while a connection that went away mid-handshake (a member
/// restarting, the forming race) is routine.
pub fn refused_peer(error: &std::io::Error) -> bool {
    failure_reason(error) != "closed"
}

/// Checks that `cert` (a peer's end-entity certificate, already verified to chain to the CA)
/// names `ip`, the address of the member the peer claims to be.
pub fn names_member(cert: &CertificateDer<'_>, ip: IpAddr) -> Result<(), String> {
    let cert = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("unreadable peer certificate: {e}"))?;
    cert.verify_is_valid_for_subject_name(&PeerTls::member_name(ip))
        .map_err(|_| format!("its certificate does not name {ip}"))
}

/// Where the client ports' certificates are (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
#[derive(Clone, Debug)]
pub struct ClientTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
    /// The client CA's revocation list: certificates it names are refused.
    pub client_crl: Option<PathBuf>,
    pub allow_tls12: bool,
}

impl ClientTlsFiles {
    /// Both of cert and key, or neither (and then no client CA), or an error saying why.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
        client_crl: Option<PathBuf>,
        allow_tls12: bool,
    ) -> Result<Option<ClientTlsFiles>, String> {
        if client_crl.is_some() && client_ca.is_none() {
            return Err("--tls-client-crl needs --tls-client-ca".into());
        }
        match (cert, key) {
            (None, None) if client_ca.is_none() => Ok(None),
            (None, None) => Err("--tls-client-ca needs --tls-cert and --tls-key".into()),
            (Some(cert), Some(key)) => Ok(Some(ClientTlsFiles {
                cert,
                key,
                client_ca,
                client_crl,
                allow_tls12,
            })),
            _ => Err("--tls-cert and --tls-key go together: give both".into()),
        }
    }

    fn load(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = provider();
        let chain = certificates(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("cannot read a private key from {}: {e}", self.key.display()))?;
        let versions: &[&rustls::SupportedProtocolVersion] = match self.allow_tls12 {
            true => &[&rustls::version::TLS13, &rustls::version::TLS12],
            false => &[&rustls::version::TLS13],
        };
        let bad = |e: rustls::Error| format!("client TLS: {e}");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(bad)?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = client_verifier(ca, self.client_crl.as_deref(), provider)
                    .map_err(|e| format!("client {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "client TLS: {} and {}: {e}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        Ok(Arc::new(config))
    }
}

/// The client ports' TLS settings, replaced whole on SIGHUP: a handshake takes the settings
/// current when it starts, so connections already open are untouched.
pub struct ClientTls {
    files: ClientTlsFiles,
    config: std::sync::RwLock<Arc<rustls::ServerConfig>>,
}

impl ClientTls {
    pub fn load(files: ClientTlsFiles) -> Result<ClientTls, String> {
        let config = files.load()?;
        Ok(ClientTls {
            files,
            config: std::sync::RwLock::new(config),
        })
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.read().expect("TLS settings lock").clone()
    }

    /// Reads the files again; on an error the settings in use stay.
    pub fn reload(&self) -> Result<(), String> {
        let config = self.files.load()?;
        *self.config.write().expect("TLS settings lock") = config;
        Ok(())
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.files)
            .finish()
    }
}
