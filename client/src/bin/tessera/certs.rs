//! `tessera admin certs`: a CA and certificates for a dev cluster, made with rcgen.
//!
//! In `--out`: `ca.pem` and `ca-key.pem` (the cluster's CA, ECDSA P-256), and for each member
//! address `member-IP.pem` and `member-IP-key.pem`: a certificate the CA signed, naming the IP
//! address (and `localhost` for loopback ones), good for both ends of a TLS connection (server
//! and client authentication), as a member's peer connections need. For each `--clients` NAME,
//! `client-NAME.pem` and `client-NAME-key.pem`: a client certificate naming NAME as a DNS
//! name, which a user of the users file maps with `certificate = "NAME"`. Files are written with
//! mode 0600 for keys. Certificates are valid from now for `--days` (default 365).
//!
//! For production, use the organisation's own CA and tooling; this is for dev clusters and
//! tests, as CockroachDB's `cert` commands are.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The CA's name, by which `admin revoke` makes it again to sign a CRL.
pub const CA_NAME: &str = "tessera cluster CA";

/// Writes the CA, one certificate per member and one per client name into `out`; the paths
/// written.
pub fn make(
    out: &Path,
    members: &[IpAddr],
    clients: &[String],
    days: u32,
) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let bad = |e: rcgen::Error| format!("certificates: {e}");
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(i64::from(days));
    let ca_key = KeyPair::generate().map_err(bad)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(CA_NAME);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (ca.not_before, ca.not_after) = (now, until);
    let ca_cert = ca.self_signed(&ca_key).map_err(bad)?;
    let mut written = vec![
        write(out, "ca.pem", &ca_cert.pem(), false)?,
        write(out, "ca-key.pem", &ca_key.serialize_pem(), true)?,
    ];
    for ip in members {
        let key = KeyPair::generate().map_err(bad)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("tessera member {ip}"));
        params.subject_alt_names = vec![SanType::IpAddress(*ip)];
        if ip.is_loopback() {
            let localhost = "localhost".try_into().map_err(bad)?;
            params.subject_alt_names.push(SanType::DnsName(localhost));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        (params.not_before, params.not_after) = (now, until);
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(bad)?;
        written.push(write(out, &format!("member-{ip}.pem"), &cert.pem(), false)?);
        written.push(write(
            out,
            &format!("member-{ip}-key.pem"),
            &key.serialize_pem(),
            true,
        )?);
    }
    for client in clients {
        let key = KeyPair::generate().map_err(bad)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(client);
        let dns = client
            .as_str()
            .try_into()
            .map_err(|_| format!("client name {client:?} is not a DNS name"))?;
        params.subject_alt_names = vec![SanType::DnsName(dns)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        (params.not_before, params.not_after) = (now, until);
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(bad)?;
        written.push(write(
            out,
            &format!("client-{client}.pem"),
            &cert.pem(),
            false,
        )?);
        let key_file = format!("client-{client}-key.pem");
        written.push(write(out, &key_file, &key.serialize_pem(), true)?);
    }
    Ok(written)
}

fn name(common: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common);
    name
}

fn write(dir: &Path, file: &str, text: &str, secret: bool) -> Result<String, String> {
    let path = dir.join(file);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut handle = options
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    handle
        .write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path.display().to_string())
}
