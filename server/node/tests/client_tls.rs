//! TLS on the client and shard ports (`--tls-cert`, `--tls-key`, `--tls-client-ca`), against
//! a real node with certificates `tessera admin certs` made: the CLI and the client library
//! (shard-aware, so the shard ports too) work over TLS, plain TCP is refused, a node that asks
//! for client certificates refuses clients without one of its CA, and SIGHUP reloads the
//! certificates while connections already open go on; a revoked, an expired and a not yet
//! valid client certificate are refused; stalled handshakes count against the connection
//! budget.

mod common;
#[path = "common/made.rs"]
mod made;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use common::{cli_binary, client_config, runtime, signal, wait_for_metric, Node};
use tessera_client::{Client, ClientConfig, Level};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A CA and a certificate for 127.0.0.1 in `dir`, made by the CLI.
fn make_certs(dir: &Path) -> PathBuf {
    let status = std::process::Command::new(cli_binary())
        .args(["admin", "certs", "--members", "127.0.0.1", "--out"])
        .arg(dir)
        .output()
        .expect("run tessera admin certs");
    assert!(status.status.success(), "tessera admin certs failed");
    dir.to_path_buf()
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn start(data: &Path, certs: &Path, extra: &[&str]) -> Node {
    let (cert, key) = (
        file(certs, "member-127.0.0.1.pem"),
        file(certs, "member-127.0.0.1-key.pem"),
    );
    let mut flags = vec![
        "--shards",
        "2",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    flags.extend_from_slice(extra);
    Node::start(data, &flags)
}

/// The CLI against `node`, with `tls` flags, doing `args`.
fn cli(node: &Node, tls: &[String], args: &[&str]) -> Output {
    std::process::Command::new(cli_binary())
        .args(["--addr", &node.addr(), "--timeout", "3s"])
        .args(tls)
        .args(args)
        .output()
        .expect("run tessera")
}

fn trusting(certs: &Path) -> Vec<String> {
    vec!["--tls-ca".into(), file(certs, "ca.pem")]
}

/// A client over TLS trusting `ca`; `shard_aware` also opens the shard ports (lazily, on
/// first use), otherwise one connection to the client port carries everything.
fn tls_client(node: &Node, ca: &Path, shard_aware: bool) -> Client {
    let config = ClientConfig {
        tls: Some(tessera_client::tls::client_tls(ca, None).unwrap()),
        shard_aware,
        ..client_config(Level::Default)
    };
    runtime()
        .block_on(Client::connect_with(&node.addr(), config))
        .unwrap()
}

#[test]
fn clients_speak_tls_and_plain_tcp_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(&dir.path().join("certs"));
    let node = start(&dir.path().join("data"), &certs, &[]);
    let put = cli(&node, &trusting(&certs), &["put", "k", "v"]);
    assert!(put.status.success(), "{put:?}");
    let get = cli(&node, &trusting(&certs), &["get", "k"]);
    assert_eq!(get.stdout, b"v", "{get:?}");
    // The library, shard-aware: requests go to the shard ports, over TLS too.
    let rt = runtime();
    let client = tls_client(&node, &certs.join("ca.pem"), true);
    rt.block_on(async {
        for i in 0..50 {
            let key = format!("lib:{i}");
            client.put(key.as_bytes(), b"x").await.unwrap();
            assert!(client.get(key.as_bytes()).await.unwrap().is_some());
        }
    });
    // Plain TCP: the CLI fails, and a raw frame gets no answer.
    let plain = cli(&node, &[], &["get", "k"]);
    assert!(!plain.status.success(), "a plain-TCP client was answered");
    let mut raw = TcpStream::connect(node.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut frame = Vec::new();
    tessera_schema::wire::encode_request_frame(&mut frame, 1, &tessera_schema::msg::Request::Ping);
    raw.write_all(&frame).unwrap();
    let mut answer = [0u8; 64];
    // A TLS alert (record type 21) or the connection's end: never an answer frame.
    match raw.read(&mut answer) {
        Ok(n) if n > 0 => assert_eq!(answer[0], 21, "a plain frame got {:?}", &answer[..n]),
        _ => {}
    }
    // Counted by reason (the CLI's attempt and the raw frame: not TLS).
    let failures = wait_for_metric(
        node.metrics_addr(),
        "tessera_client_tls_failures_total",
        "reason=\"protocol\"",
        1.0,
    );
    assert!(failures >= 1.0, "{failures} protocol failures counted");
    // Another CA's client does not trust this node.
    let other = make_certs(&dir.path().join("other"));
    let distrust = cli(&node, &trusting(&other), &["get", "k"]);
    assert!(
        !distrust.status.success(),
        "a client trusted another CA's node"
    );
}

#[test]
fn a_node_that_asks_for_client_certificates_refuses_clients_without_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(&dir.path().join("certs"));
    let ca = file(&certs, "ca.pem");
    let node = start(&dir.path().join("data"), &certs, &["--tls-client-ca", &ca]);
    let anonymous = cli(&node, &trusting(&certs), &["put", "k", "v"]);
    assert!(
        !anonymous.status.success(),
        "a client without a certificate was let in"
    );
    let mut identified = trusting(&certs);
    identified.extend([
        "--tls-cert".into(),
        file(&certs, "member-127.0.0.1.pem"),
        "--tls-key".into(),
        file(&certs, "member-127.0.0.1-key.pem"),
    ]);
    let put = cli(&node, &identified, &["put", "k", "v"]);
    assert!(put.status.success(), "{put:?}");
    // A certificate of another CA is refused.
    let other = make_certs(&dir.path().join("other"));
    let mut stranger = trusting(&certs);
    stranger.extend([
        "--tls-cert".into(),
        file(&other, "member-127.0.0.1.pem"),
        "--tls-key".into(),
        file(&other, "member-127.0.0.1-key.pem"),
    ]);
    let refused = cli(&node, &stranger, &["get", "k"]);
    assert!(
        !refused.status.success(),
        "another CA's client certificate was let in"
    );
    let failures = wait_for_metric(
        node.metrics_addr(),
        "tessera_client_tls_failures_total",
        "reason=\"certificate\"",
        2.0,
    );
    assert!(failures >= 2.0, "{failures} certificate failures counted");
}

#[test]
fn sighup_reloads_the_certificate_and_open_connections_go_on() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let live = make_certs(&dir.path().join("live"));
    let old = dir.path().join("old-ca.pem");
    std::fs::copy(live.join("ca.pem"), &old).unwrap();
    let node = start(&dir.path().join("data"), &live, &[]);
    let rt = runtime();
    let client = tls_client(&node, &old, false);
    rt.block_on(async { client.put(b"before", b"v").await.unwrap() });
    // New certificates of a new CA, in place of the old ones, then SIGHUP.
    let fresh = make_certs(&dir.path().join("fresh"));
    for name in ["member-127.0.0.1.pem", "member-127.0.0.1-key.pem", "ca.pem"] {
        std::fs::copy(fresh.join(name), live.join(name)).unwrap();
    }
    signal(node.pid(), "-HUP");
    let mut reloaded = false;
    for _ in 0..50 {
        let new_ca = cli(&node, &trusting(&fresh), &["get", "before"]);
        if new_ca.status.success() {
            reloaded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reloaded, "the node never served the new certificate");
    let old_ca = cli(
        &node,
        &["--tls-ca".into(), old.display().to_string()],
        &["get", "before"],
    );
    assert!(
        !old_ca.status.success(),
        "a new connection got the old certificate"
    );
    // The connections opened before the reload go on.
    rt.block_on(async {
        for i in 0..20 {
            let key = format!("after:{i}");
            client.put(key.as_bytes(), b"v").await.unwrap();
        }
    });
}

/// The CLI's `admin revoke` of `certificates` (none: an empty list) with the CA in `certs`.
fn revoke(certs: &Path, certificates: &[String]) {
    let made = std::process::Command::new(cli_binary())
        .args(["admin", "revoke", "--ca-dir"])
        .arg(certs)
        .args(certificates)
        .output()
        .expect("run tessera admin revoke");
    assert!(made.status.success(), "{made:?}");
}

/// With --tls-client-crl, a client certificate the CA revoked is refused at the handshake;
/// one revoked after the node started is refused once SIGHUP reloads the list, while its
/// connections already open go on and other clients are untouched.
#[test]
fn a_revoked_client_certificate_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = std::process::Command::new(cli_binary())
        .args(["admin", "certs", "--members", "127.0.0.1"])
        .args(["--clients", "early,late,kept", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    revoke(&certs, &[file(&certs, "client-early.pem")]);
    let (ca, crl) = (file(&certs, "ca.pem"), file(&certs, "crl.pem"));
    let node = start(
        &dir.path().join("data"),
        &certs,
        &["--tls-client-ca", &ca, "--tls-client-crl", &crl],
    );
    let as_client = |name: &str| {
        let mut flags = trusting(&certs);
        flags.extend([
            "--tls-cert".into(),
            file(&certs, &format!("client-{name}.pem")),
            "--tls-key".into(),
            file(&certs, &format!("client-{name}-key.pem")),
        ]);
        flags
    };
    let early = cli(&node, &as_client("early"), &["put", "k", "v"]);
    assert!(!early.status.success(), "a revoked certificate was let in");
    let late = cli(&node, &as_client("late"), &["put", "k", "v"]);
    assert!(late.status.success(), "{late:?}");
    let rt = runtime();
    let open = rt.block_on(async {
        let tls = tessera_client::tls::client_tls(
            &certs.join("ca.pem"),
            Some((
                certs.join("client-late.pem").as_path(),
                certs.join("client-late-key.pem").as_path(),
            )),
        )
        .unwrap();
        let config = ClientConfig {
            tls: Some(tls),
            ..client_config(Level::Default)
        };
        let client = Client::connect_with(&node.addr(), config).await.unwrap();
        client.put(b"open", b"v").await.unwrap();
        client
    });
    revoke(&certs, &[file(&certs, "client-late.pem")]);
    signal(node.pid(), "-HUP");
    let mut refused = false;
    for _ in 0..50 {
        if !cli(&node, &as_client("late"), &["get", "k"])
            .status
            .success()
        {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused, "SIGHUP never took the new revocation list");
    let still = cli(&node, &as_client("early"), &["get", "k"]);
    assert!(
        !still.status.success(),
        "the first revocation was forgotten"
    );
    let kept = cli(&node, &as_client("kept"), &["get", "k"]);
    assert!(kept.status.success(), "{kept:?}");
    rt.block_on(async { open.put(b"open", b"w").await.unwrap() });
    let failures = wait_for_metric(
        node.metrics_addr(),
        "tessera_client_tls_failures_total",
        "reason=\"certificate\"",
        3.0,
    );
    assert!(failures >= 3.0, "{failures} certificate failures counted");
}

/// A client certificate of the CA `--tls-client-ca` names, outside its validity window, is
/// refused at the handshake; one inside it from the same CA is let in.
#[test]
fn expired_and_not_yet_valid_client_certificates_are_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(&dir.path().join("certs"));
    let loopback = "127.0.0.1".parse().unwrap();
    let client_ca = made::make(loopback, None, true, (-10, 365));
    std::fs::write(certs.join("client-ca.pem"), client_ca.cert.pem()).unwrap();
    let client_ca_file = file(&certs, "client-ca.pem");
    let node = start(
        &dir.path().join("data"),
        &certs,
        &["--tls-client-ca", &client_ca_file],
    );
    let as_client = |name: &str, days: (i64, i64)| {
        let made = made::make(loopback, Some(&client_ca), false, days);
        std::fs::write(certs.join(format!("{name}.pem")), made.cert.pem()).unwrap();
        std::fs::write(
            certs.join(format!("{name}-key.pem")),
            made.key.serialize_pem(),
        )
        .unwrap();
        let mut flags = trusting(&certs);
        flags.extend([
            "--tls-cert".into(),
            file(&certs, &format!("{name}.pem")),
            "--tls-key".into(),
            file(&certs, &format!("{name}-key.pem")),
        ]);
        flags
    };
    let expired = cli(&node, &as_client("expired", (-30, -1)), &["put", "k", "v"]);
    assert!(
        !expired.status.success(),
        "an expired certificate was let in"
    );
    let early = cli(&node, &as_client("early", (2, 30)), &["put", "k", "v"]);
    assert!(
        !early.status.success(),
        "a certificate not valid yet was let in"
    );
    let valid = cli(&node, &as_client("valid", (-1, 30)), &["put", "k", "v"]);
    assert!(valid.status.success(), "{valid:?}");
    let failures = wait_for_metric(
        node.metrics_addr(),
        "tessera_client_tls_failures_total",
        "reason=\"certificate\"",
        2.0,
    );
    assert!(failures >= 2.0, "{failures} certificate failures counted");
}

/// Handshakes in progress count against `--connection-memory`: connections that open TCP and
/// never send a ClientHello fill it, a new client is then refused OVERLOADED (and counted),
/// and once they go away clients are let in again.
#[test]
fn stalled_handshakes_count_against_the_connection_budget() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(&dir.path().join("certs"));
    // 1 MiB per shard: about 24 handshakes of 40 KiB each, beside a connection's base cost.
    let node = start(
        &dir.path().join("data"),
        &certs,
        &["--connection-memory", "2MiB"],
    );
    let stalled: Vec<TcpStream> = (0..120)
        .map(|_| TcpStream::connect(node.addr).unwrap())
        .collect();
    let refused = wait_for_metric(
        node.metrics_addr(),
        "tessera_client_connections_refused_total",
        "status=\"OVERLOADED\"",
        1.0,
    );
    assert!(refused >= 1.0, "stalled handshakes were not charged");
    let newcomer = cli(&node, &trusting(&certs), &["put", "k", "v"]);
    assert!(!newcomer.status.success(), "a full budget let a client in");
    drop(stalled);
    let mut let_in = false;
    for _ in 0..50 {
        if cli(&node, &trusting(&certs), &["put", "k", "v"])
            .status
            .success()
        {
            let_in = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        let_in,
        "the budget was not given back when the handshakes went away"
    );
}
