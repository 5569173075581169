//! Certificates the tests make with rcgen: a CA of their own, and certificates it signs with
//! any validity window (expired, not yet valid), any address, and revocation lists.

#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, ExtendedKeyUsagePurpose,
    IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};

/// A certificate and its key.
pub struct Made {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A certificate for `ip` that `issuer` signed (self-signed when `None`), valid between
/// `days` (from now; negative for the past).
pub fn make(ip: IpAddr, issuer: Option<&Made>, ca: bool, days: (i64, i64)) -> Made {
    static SERIALS: AtomicU64 = AtomicU64::new(1);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let serial = SERIALS.fetch_add(1, Ordering::Relaxed);
    params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
    params.subject_alt_names = vec![SanType::IpAddress(ip)];
    if ca {
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    } else {
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days.0);
    params.not_after = now + time::Duration::days(days.1);
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, &issuer.cert, &issuer.key).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    Made { cert, key }
}

/// A revocation list (PEM) of `ca` naming `revoked`.
pub fn revocation_list(ca: &Made, revoked: &[&Made]) -> String {
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(30),
        crl_number: SerialNumber::from(vec![1]),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|made| RevokedCertParams {
                serial_number: made.cert.params().serial_number.clone().unwrap(),
                revocation_time: now - time::Duration::hours(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&ca.cert, &ca.key).unwrap().pem().unwrap()
}
