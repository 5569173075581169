//! `tessera admin revoke`: revokes certificates that `tessera admin certs` made, by writing a
//! certificate revocation list (CRL) that the CA in `--ca-dir` signs.
//!
//! The CA keeps its record of revoked serial numbers in `revoked.txt` beside `ca-key.pem`
//! (one line per certificate: its serial number in hex and when it was revoked, RFC 3339), so
//! each run adds to what earlier runs revoked; `crl.pem` is made again from the whole record.
//! A node reads it with `--tls-client-crl` (client certificates) or `--peer-tls-crl`
//! (members) and takes a new one on SIGHUP. The CRL is valid for `--days`: a node keeps
//! using one past its next update (it never refuses every peer over a stale list), so
//! publish it again before then.
//!
//! The CA is made again from its key and its name ("tessera cluster CA"), as `admin certs`
//! made it: a CRL it signs verifies against `ca.pem`. For a production CA, use its own tooling
//! (`openssl ca -gencrl`, or the PKI's CRL publication); the nodes take any PEM CRL.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One revoked certificate of the record.
#[derive(Debug)]
struct Revoked {
    serial: Vec<u8>,
    at: OffsetDateTime,
}

/// Adds `certificates` to the CA's record in `ca_dir` and writes `crl.pem` from it, valid for
/// `days`; the path written.
pub fn revoke(
    ca_dir: &Path,
    certificates: &[std::path::PathBuf],
    days: u32,
) -> Result<String, String> {
    let now = OffsetDateTime::now_utc();
    let record_path = ca_dir.join("revoked.txt");
    let mut record = read_record(&record_path)?;
    for path in certificates {
        let serial = serial_of(path)?;
        if !record.iter().any(|r| r.serial == serial) {
            record.push(Revoked { serial, at: now });
        }
    }
    let (ca, ca_key) = ca(ca_dir)?;
    let bad = |e: rcgen::Error| format!("CRL: {e}");
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(i64::from(days)),
        // Later lists carry higher numbers (RFC 5280 5.2.3): seconds since 1970 are.
        crl_number: SerialNumber::from(now.unix_timestamp().to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs: record
            .iter()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from(r.serial.clone()),
                revocation_time: r.at,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca, &ca_key).map_err(bad)?;
    write_record(&record_path, &record)?;
    let crl_path = ca_dir.join("crl.pem");
    let pem = crl.pem().map_err(bad)?;
    std::fs::write(&crl_path, pem)
        .map_err(|e| format!("cannot write {}: {e}", crl_path.display()))?;
    Ok(crl_path.display().to_string())
}

/// The CA of `admin certs`, made again from `ca-key.pem` and its name.
fn ca(ca_dir: &Path) -> Result<(rcgen::Certificate, KeyPair), String> {
    let key_path = ca_dir.join("ca-key.pem");
    let pem = std::fs::read_to_string(&key_path)
        .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let key = KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, crate::certs::CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(|e| format!("CA: {e}"))?;
    Ok((cert, key))
}

/// The serial number of the first certificate in the PEM file at `path`, as DER holds it
/// (big-endian, no sign byte).
fn serial_of(path: &Path) -> Result<Vec<u8>, String> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a certificate from {}: {e}", path.display()))?;
    certificate_serial(&der).map_err(|e| format!("{}: not a certificate: {e}", path.display()))
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }, and
/// TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, ... } (RFC 5280
/// 4.1): the serial is the first INTEGER of the first SEQUENCE, after an optional version.
fn certificate_serial(der: &[u8]) -> Result<Vec<u8>, yasna::ASN1Error> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|certificate| {
            let serial = certificate.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_u8()))?;
                let (magnitude, _negative) = tbs.next().read_bigint_bytes()?;
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(magnitude)
            })?;
            certificate.next().read_der()?;
            certificate.next().read_der()?;
            Ok(serial)
        })
    })
}

fn read_record(path: &Path) -> Result<Vec<Revoked>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let bad = |line: usize| {
        format!(
            "{}:{line}: expected `HEX-SERIAL RFC3339-TIME`",
            path.display()
        )
    };
    let mut record = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (serial, at) = line.split_once(' ').ok_or_else(|| bad(index + 1))?;
        record.push(Revoked {
            serial: from_hex(serial).ok_or_else(|| bad(index + 1))?,
            at: OffsetDateTime::parse(at.trim(), &Rfc3339).map_err(|_| bad(index + 1))?,
        });
    }
    Ok(record)
}

fn write_record(path: &Path, record: &[Revoked]) -> Result<(), String> {
    let mut text = String::new();
    for revoked in record {
        let at = revoked.at.format(&Rfc3339).map_err(|e| e.to_string())?;
        let hex: String = revoked.serial.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!("{hex} {at}\n"));
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_serial_rcgen_wrote() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from(vec![0x01, 0x02, 0xfe]));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_serial(cert.der()).unwrap(),
            vec![0x01, 0x02, 0xfe]
        );
        assert!(certificate_serial(b"\x30\x03\x02\x01\x01").is_err());
    }

    #[test]
    fn the_record_reads_back_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.txt");
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let record = vec![Revoked {
            serial: vec![0x7f, 0x00, 0x10],
            at,
        }];
        write_record(&path, &record).unwrap();
        let read = read_record(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(
            (read[0].serial.clone(), read[0].at),
            (vec![0x7f, 0x00, 0x10], at)
        );
        std::fs::write(&path, "zz 2026-01-01T00:00:00Z\n").unwrap();
        assert!(read_record(&path).unwrap_err().contains("revoked.txt:1"));
    }
}
