//! Mutual TLS on the peer ports (`--peer-tls-*`), against a real three-node cluster on
//! loopback (`--shards 1`): the members link and commit `strong` writes over TLS with
//! certificates `tessera admin certs` made, and an outsider is refused whether it speaks plain
//! TCP, brings a certificate of another CA, an expired one, a revoked one (`--peer-tls-crl`), or
//! one that names no member.

mod common;
#[path = "common/hello.rs"]
mod hello;
#[path = "common/made.rs"]
mod made;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    assert_strong_writes_commit, assert_victim_untouched, cli_binary, cli_verify, cluster_id,
    signal, write_victim, TestCluster,
};
use hello::{hello_frame, impostor_bytes};
use made::{make, revocation_list, Made};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The CA and member certificates for `members`, made by the CLI as the README says.
fn cli_certs(dir: &Path, members: &str) -> PathBuf {
    let out = dir.join("certs");
    let status = std::process::Command::new(cli_binary())
        .args(["admin", "certs", "--members", members, "--out"])
        .arg(&out)
        .status()
        .expect("run tessera admin certs");
    assert!(status.success(), "tessera admin certs failed");
    out
}

/// Each node's own certificate: `{ip}` is its address (`TestCluster`).
fn tls_flags(certs: &Path) -> Vec<String> {
    let file = |name: &str| certs.join(name).display().to_string();
    vec![
        "--peer-tls-cert".into(),
        file("member-{ip}.pem"),
        "--peer-tls-key".into(),
        file("member-{ip}-key.pem"),
        "--peer-tls-ca".into(),
        file("ca.pem"),
    ]
}

/// The flags of a TLS cluster, with the CA's revocation list if `certs` has one.
fn cluster_flags(certs: &Path) -> Vec<String> {
    let mut flags: Vec<String> = ["--vnodes", "16", "--fsync", "always"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags.extend(tls_flags(certs));
    let crl = certs.join("crl.pem");
    if crl.exists() {
        flags.extend(["--peer-tls-crl".into(), crl.display().to_string()]);
    }
    flags
}

fn start(certs: &Path) -> TestCluster {
    let flags = cluster_flags(certs);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestCluster::start(3, &flags)
}

/// A certificate chain and its key, as a TLS client presents them.
struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Credentials {
    fn from_files(cert: &Path, key: &Path) -> Credentials {
        Credentials {
            chain: CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            key: PrivateKeyDer::from_pem_file(key).unwrap(),
        }
    }
}

impl From<&Credentials> for Credentials {
    fn from(credentials: &Credentials) -> Credentials {
        Credentials {
            chain: credentials.chain.clone(),
            key: credentials.key.clone_key(),
        }
    }
}

impl From<&Made> for Credentials {
    fn from(made: &Made) -> Credentials {
        Credentials {
            chain: vec![made.cert.der().clone()],
            key: PrivateKeyDer::from_pem_slice(made.key.serialize_pem().as_bytes()).unwrap(),
        }
    }
}

fn tls_client(
    peer: SocketAddr,
    ca: &Path,
    credentials: impl Into<Credentials>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let credentials = credentials.into();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(credentials.chain, credentials.key)
        .unwrap();
    let name = ServerName::IpAddress(peer.ip().into());
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(peer).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

/// Whether the node ends the connection (an alert, a close or a reset) after `bytes`.
fn refused(mut stream: impl Read + Write, bytes: &[u8]) -> bool {
    if stream
        .write_all(bytes)
        .and_then(|_| stream.flush())
        .is_err()
    {
        return true;
    }
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn members_on_mutual_tls_commit_strong_writes_and_refuse_outsiders() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let certs = cli_certs(dir.path(), "127.0.0.1");
    let cluster = start(&certs);
    assert_strong_writes_commit(&cluster, "over-tls");
    let id = cluster_id(&cluster);
    let peer = cluster.peer_addr(0);
    let (vnode, epoch) = write_victim(&cluster, "victim");
    // A Hello as member 1, then forged writes, acks, an empty final State and a PullState.
    let hello = impostor_bytes(id, 1, vnode, epoch, b"victim");

    // Plain TCP with a valid Hello: before TLS, this was a member's link.
    let plain = TcpStream::connect(peer).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    assert!(refused(plain, &hello), "a plain-TCP Hello was let in");

    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let ca_pem = certs.join("ca.pem");
    let other_ca = make(loopback, None, true, (-1, 365));
    let attempts = [
        (
            "a certificate of another CA",
            make(loopback, Some(&other_ca), false, (-1, 365)),
        ),
        (
            "a self-signed certificate",
            make(loopback, None, false, (-1, 365)),
        ),
    ];
    for (what, cert) in attempts {
        let stream = tls_client(peer, &ca_pem, &cert);
        assert!(refused(stream, &hello), "{what} was let in");
    }
    assert_strong_writes_commit(&cluster, "after-outsiders");
    assert_victim_untouched(&cluster, "victim");
    let (agree, text) = cli_verify(&cluster);
    assert!(agree, "replicas differ:\n{text}");
}

#[test]
fn expired_revoked_and_misnamed_certificates_of_the_cluster_ca_are_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // The test's own CA, so that it can sign odd certificates the cluster must refuse.
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let ca = make(loopback, None, true, (-10, 365));
    let member = make(loopback, Some(&ca), false, (-1, 365));
    let revoked = make(loopback, Some(&ca), false, (-1, 365));
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(certs.join("crl.pem"), revocation_list(&ca, &[&revoked])).unwrap();
    std::fs::write(certs.join("member-127.0.0.1.pem"), member.cert.pem()).unwrap();
    std::fs::write(
        certs.join("member-127.0.0.1-key.pem"),
        member.key.serialize_pem(),
    )
    .unwrap();
    let mut cluster = start(&certs);
    assert_strong_writes_commit(&cluster, "own-ca");
    let id = cluster_id(&cluster);
    let peer = cluster.peer_addr(0);
    let ca_pem = certs.join("ca.pem");
    let attempts = [
        (
            "an expired certificate",
            Credentials::from(&make(loopback, Some(&ca), false, (-30, -1))),
        ),
        (
            "a certificate that is not valid yet",
            Credentials::from(&make(loopback, Some(&ca), false, (2, 30))),
        ),
        ("a revoked certificate", Credentials::from(&revoked)),
        (
            "a certificate naming no member (127.0.0.2)",
            Credentials::from(&make(
                "127.0.0.2".parse().unwrap(),
                Some(&ca),
                false,
                (-1, 365),
            )),
        ),
    ];
    for (what, cert) in attempts {
        let stream = tls_client(peer, &ca_pem, cert);
        assert!(refused(stream, &hello_frame(id, 1)), "{what} was let in");
    }
    // The member's own certificate and a valid Hello are let in: the refusals above are the
    // certificates', not the test's.
    let stream = tls_client(peer, &ca_pem, &member);
    assert!(
        !refused(stream, &hello_frame(id, 1)),
        "a member's own certificate was refused"
    );
    assert_strong_writes_commit(&cluster, "after-odd-certificates");
    // A certificate revoked after the start is refused once SIGHUP reloads the list.
    let late = make(loopback, Some(&ca), false, (-1, 365));
    let stream = tls_client(peer, &ca_pem, &late);
    assert!(!refused(stream, &hello_frame(id, 1)), "a valid one refused");
    let list = revocation_list(&ca, &[&revoked, &late]);
    std::fs::write(certs.join("crl.pem"), list).unwrap();
    signal(cluster.node(0).pid(), "-HUP");
    let reloaded = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        refused(tls_client(peer, &ca_pem, &late), &hello_frame(id, 1))
    });
    assert!(reloaded, "SIGHUP never took the new revocation list");
    assert_strong_writes_commit(&cluster, "after-reload");
}

/// Members on addresses of their own (network namespaces, `common/netns.rs`), each with a
/// certificate for its address: they link over TLS, each dial checking the dialed member's
/// name, and member 1's certificate is let in as member 1 and refused as member 2.
#[test]
fn a_member_certificate_speaks_only_for_its_own_member() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let ips: Vec<String> = (0..3).map(common::netns::Netns::planned_ip).collect();
    let certs = cli_certs(dir.path(), &ips.join(","));
    // The client ports stay plain here (the test's clients speak plain TCP): --insecure.
    let mut flags = cluster_flags(&certs);
    flags.push("--insecure".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = TestCluster::start_in_namespaces(3, &flags);
    assert_strong_writes_commit(&cluster, "across-hosts");
    let id = cluster_id(&cluster);
    let peer = cluster.peer_addr(0);
    let ca_pem = certs.join("ca.pem");
    let member_1 = Credentials::from_files(
        &certs.join(format!("member-{}.pem", ips[1])),
        &certs.join(format!("member-{}-key.pem", ips[1])),
    );
    let (vnode, epoch) = write_victim(&cluster, "victim");
    let stream = tls_client(peer, &ca_pem, &member_1);
    assert!(
        refused(stream, &impostor_bytes(id, 2, vnode, epoch, b"victim")),
        "member 1's certificate was let in as member 2"
    );
    let stream = tls_client(peer, &ca_pem, &member_1);
    assert!(
        !refused(stream, &hello_frame(id, 1)),
        "member 1's own certificate was refused as member 1"
    );
    assert_strong_writes_commit(&cluster, "after-impersonation");
    assert_victim_untouched(&cluster, "victim");
}

/// Secure by default: open ports on an address other than loopback refuse to start, before
/// anything is written, unless `--insecure` says so: a single node's plain client port, one on
/// TLS without users, and a cluster's plain peer ports (with the client port on TLS and users).
#[test]
fn plain_ports_off_loopback_need_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let certs = cli_certs(dir.path(), "192.0.2.10");
    let data = dir.path().join("data");
    let run = |extra: &[&str]| {
        let output = std::process::Command::new(common::server_binary())
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "192.0.2.10:7000", "--shards", "1"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success(), "a node on 192.0.2.10 started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let cert = certs.join("member-192.0.2.10.pem").display().to_string();
    let key = certs
        .join("member-192.0.2.10-key.pem")
        .display()
        .to_string();
    let client_tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let users = dir.path().join("users.toml");
    std::fs::write(&users, "[[user]]\nname = \"a\"\ncertificate = \"a\"\n").unwrap();
    let users = users.display().to_string();
    let client_secure = [&client_tls[..], &["--users", users.as_str()]].concat();
    let peers = ["--peers", "192.0.2.10:7000,192.0.2.11:7000,192.0.2.12:7000"];
    let cases: [(&str, Vec<&str>, &str); 3] = [
        ("a plain client port", vec![], "client and shard ports"),
        (
            "a client port without users",
            client_tls.to_vec(),
            "without a login",
        ),
        (
            "plain peer ports",
            [&client_secure[..], &peers[..]].concat(),
            "peer ports",
        ),
    ];
    for (what, flags, says) in cases {
        let refused = run(&flags);
        assert!(refused.contains("refusing to start"), "{what}: {refused}");
        assert!(refused.contains(says), "{what}: {refused}");
        assert!(
            !data.exists(),
            "{what}: the refused node wrote {}",
            data.display()
        );
        // With --insecure the check passes (and the node then fails only to bind an address
        // this machine does not have).
        let insecure = run(&[&flags[..], &["--insecure"]].concat());
        assert!(
            !insecure.contains("refusing to start"),
            "{what}: {insecure}"
        );
        let _ = std::fs::remove_dir_all(&data);
    }
}
