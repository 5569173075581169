//! Users and permissions (`--users`) against a real node: nothing is answered before a login,
//! a user is held to its key prefixes (PERMISSION_DENIED whether or not a key exists, a batch
//! item by item, a scan key by key), operations need admin, repeated failures from one address
//! are refused unchecked, an anonymous connection is closed at its deadline, SIGHUP reloads
//! the users, and a client certificate can name a user.

mod common;
#[path = "common/users.rs"]
mod users;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{cli_binary, client_config, metric_sum, runtime, signal, wait_for_metric, Node, Raw};
use tessera_client::{Client, ClientConfig, Credentials, Level};
use tessera_schema::msg::{
    AuthRequest, BatchOp, Durability, PutRequest, Request, Response, ScanRequest, Status,
};
use users::cheap_hash;

/// `admin` (every key, admin), `app` (reads app: and pub:, writes app:, route) and `reader`
/// (reads app:), with `app`'s hash made by the CLI.
fn users_file(dir: &Path) -> PathBuf {
    let hashed = std::process::Command::new(cli_binary())
        .args(["admin", "hash-password"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"app-secret\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(hashed.status.success(), "{hashed:?}");
    let app_hash = String::from_utf8(hashed.stdout).unwrap().trim().to_string();
    assert!(app_hash.starts_with("$argon2id$"), "{app_hash}");
    let text = format!(
        "[[user]]\nname = \"admin\"\npassword = \"{admin}\"\nread = [\"*\"]\nwrite = [\"*\"]\n\
         admin = true\n\n\
         [[user]]\nname = \"app\"\npassword = \"{app_hash}\"\nread = [\"app:\", \"pub:\"]\n\
         write = [\"app:\"]\nroute = true\n\n\
         [[user]]\nname = \"reader\"\npassword = \"{reader}\"\nread = [\"app:\"]\n",
        admin = cheap_hash("admin-secret"),
        reader = cheap_hash("reader-secret"),
    );
    let path = dir.join("users.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(dir: &Path, users: &Path, extra: &[&str]) -> Node {
    let users = users.display().to_string();
    let mut flags = vec![
        "--shards",
        "2",
        "--users",
        &users,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    flags.extend_from_slice(extra);
    Node::start(&dir.join("data"), &flags)
}

fn auth(user: &str, password: &str) -> Request {
    Request::Auth(AuthRequest {
        user: user.into(),
        password: password.into(),
    })
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ttl_ms: 0,
        if_version: None,
        durability: Durability::Default,
    }
}

fn get(key: &str) -> Request {
    Request::Get { key: key.into() }
}

/// The status and message of a response that is an error or one op's result.
fn outcome(response: &Response) -> (Status, String) {
    match response {
        Response::Error { status, message } => (*status, message.clone()),
        Response::Op(result) => (result.status, result.message.clone()),
        other => (Status::Ok, format!("{other:?}")),
    }
}

fn logged_in(node: &Node, user: &str, password: &str) -> Raw {
    let mut raw = Raw::connect(node.addr);
    let answer = raw.call(1, &auth(user, password));
    assert_eq!(outcome(&answer).0, Status::Ok, "{answer:?}");
    raw
}

#[test]
fn nothing_is_answered_before_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &users_file(dir.path()), &[]);
    let mut raw = Raw::connect(node.addr);
    for (id, request) in [(1, Request::Ping), (2, get("app:1")), (3, Request::Stats)] {
        let (status, message) = outcome(&raw.call(id, &request));
        assert_eq!(status, Status::Unauthenticated, "{request:?}: {message}");
    }
    // A wrong password, an unknown user: the same words.
    let (status, wrong) = outcome(&raw.call(4, &auth("app", "nope")));
    assert_eq!(status, Status::Unauthenticated);
    let (status, unknown) = outcome(&raw.call(5, &auth("mallory", "nope")));
    assert_eq!(status, Status::Unauthenticated);
    assert_eq!(wrong, unknown);
    // Still anonymous; then the right password.
    assert_eq!(
        outcome(&raw.call(6, &get("app:1"))).0,
        Status::Unauthenticated
    );
    assert_eq!(
        outcome(&raw.call(7, &auth("app", "app-secret"))).0,
        Status::Ok
    );
    assert_eq!(outcome(&raw.call(8, &get("app:1"))).0, Status::NotFound);
    let metrics = node.metrics_addr();
    let name = "tessera_auth_failures_total";
    assert!(wait_for_metric(metrics, name, "reason=\"unauthenticated\"", 4.0) >= 4.0);
    assert!(wait_for_metric(metrics, name, "reason=\"bad_password\"", 1.0) >= 1.0);
    assert!(wait_for_metric(metrics, name, "reason=\"unknown_user\"", 1.0) >= 1.0);
    assert!(wait_for_metric(metrics, "tessera_logins_total", "how=\"password\"", 1.0) >= 1.0);
}

#[test]
fn users_are_held_to_their_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &users_file(dir.path()), &[]);
    let mut admin = logged_in(&node, "admin", "admin-secret");
    for key in ["other:1", "pub:1", "app:1"] {
        let answer = admin.call(2, &Request::Put(put(key)));
        assert_eq!(outcome(&answer).0, Status::Ok, "{key}: {answer:?}");
    }
    let mut app = logged_in(&node, "app", "app-secret");
    // Reads: its prefixes answer; outside them, an existing key and a missing one are refused
    // alike.
    assert_eq!(outcome(&app.call(2, &get("app:1"))).0, Status::Ok);
    assert_eq!(outcome(&app.call(3, &get("pub:1"))).0, Status::Ok);
    let there = outcome(&app.call(4, &get("other:1")));
    let missing = outcome(&app.call(5, &get("other:2")));
    assert_eq!(there.0, Status::PermissionDenied);
    assert_eq!(there, missing, "a refusal told whether the key exists");
    // Writes: app: only (pub: is read-only for it).
    assert_eq!(
        outcome(&app.call(6, &Request::Put(put("app:2")))).0,
        Status::Ok
    );
    for key in ["pub:1", "other:1"] {
        let (status, _) = outcome(&app.call(7, &Request::Put(put(key))));
        assert_eq!(status, Status::PermissionDenied, "{key}");
    }
    // A batch, item by item.
    let batch = Request::Batch(vec![
        BatchOp::Put(put("app:3")),
        BatchOp::Put(put("other:3")),
        BatchOp::Get {
            key: b"pub:1".to_vec(),
        },
        BatchOp::Get {
            key: b"other:1".to_vec(),
        },
    ]);
    let Response::Batch(results) = app.call(8, &batch) else {
        panic!("a batch answer")
    };
    let statuses: Vec<Status> = results.iter().map(|r| r.status).collect();
    use Status::{Ok as Good, PermissionDenied as Denied};
    assert_eq!(statuses, [Good, Denied, Good, Denied]);
    // other:3 was not written.
    assert_eq!(outcome(&admin.call(9, &get("other:3"))).0, Status::NotFound);
    // A scan of everything lists only what it may read; one of another prefix is refused.
    let mut keys = Vec::new();
    let mut cursor = Vec::new();
    for id in 10..200 {
        let scan = Request::Scan(ScanRequest {
            cursor: cursor.clone(),
            ..ScanRequest::default()
        });
        let Response::Scan(page) = app.call(id, &scan) else {
            panic!("a scan page")
        };
        keys.extend(page.entries.into_iter().map(|e| e.key));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    keys.sort();
    let want: Vec<Vec<u8>> = ["app:1", "app:2", "app:3", "pub:1"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    assert_eq!(keys, want);
    let scan_other = Request::Scan(ScanRequest {
        prefix: b"other:".to_vec(),
        ..ScanRequest::default()
    });
    assert_eq!(
        outcome(&app.call(300, &scan_other)).0,
        Status::PermissionDenied
    );
    // Operations: STATS and VERIFY need admin; TOPOLOGY needs admin or route.
    let verify = Request::Verify {
        from_vnode: 0,
        count: 1,
        values: false,
    };
    for request in [Request::Stats, verify.clone()] {
        assert_eq!(
            outcome(&app.call(301, &request)).0,
            Status::PermissionDenied
        );
        assert!(matches!(
            admin.call(302, &request),
            Response::Stats(_) | Response::Verify(_)
        ));
    }
    assert!(matches!(
        app.call(303, &Request::Topology),
        Response::Topology(_)
    ));
    let mut reader = logged_in(&node, "reader", "reader-secret");
    let (status, message) = outcome(&reader.call(2, &Request::Topology));
    assert_eq!(status, Status::PermissionDenied, "{message}");
    let denied = metric_sum(
        node.metrics_addr(),
        "tessera_auth_failures_total",
        "reason=\"permission_denied\"",
    );
    assert!(denied >= 8.0, "{denied} refusals counted");
}

/// The client library and the CLI log in on every connection they open (the shard ports
/// too), and the CLI's errors say what was refused.
#[test]
fn clients_log_in_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &users_file(dir.path()), &[]);
    let config = ClientConfig {
        credentials: Some(Credentials {
            user: "app".into(),
            password: "app-secret".into(),
        }),
        ..client_config(Level::Default)
    };
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect_with(&node.addr(), config).await.unwrap();
        for i in 0..40 {
            let key = format!("app:{i}");
            client.put(key.as_bytes(), b"x").await.unwrap();
            assert!(client.get(key.as_bytes()).await.unwrap().is_some());
        }
        let refused = client.put(b"other:1", b"x").await.unwrap_err();
        assert_eq!(refused.status(), Some(Status::PermissionDenied));
        // Without credentials the client cannot even route.
        let anonymous = Client::connect_with(&node.addr(), client_config(Level::Default)).await;
        let error = anonymous.err().expect("an anonymous client connected");
        assert_eq!(error.status(), Some(Status::Unauthenticated), "{error}");
    });
    let cli = |password: &str, args: &[&str]| {
        std::process::Command::new(cli_binary())
            .args(["--addr", &node.addr(), "--user", "app"])
            .env("TESSERA_PASSWORD", password)
            .args(args)
            .output()
            .unwrap()
    };
    let ok = cli("app-secret", &["get", "app:1"]);
    assert_eq!(ok.stdout, b"x", "{ok:?}");
    let wrong = cli("nope", &["get", "app:1"]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    let outside = cli("app-secret", &["put", "other:1", "x"]);
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
}

#[test]
fn repeated_failures_from_an_address_are_refused_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &users_file(dir.path()), &[]);
    let mut raw = Raw::connect(node.addr);
    for id in 0..10 {
        let (status, _) = outcome(&raw.call(id, &auth("app", "guess")));
        assert_eq!(status, Status::Unauthenticated);
    }
    // Now even the right password is refused, from any connection of this address.
    let mut again = Raw::connect(node.addr);
    let (status, message) = outcome(&again.call(1, &auth("app", "app-secret")));
    assert_eq!(status, Status::Unauthenticated);
    assert!(message.contains("too many failed logins"), "{message}");
    let limited = wait_for_metric(
        node.metrics_addr(),
        "tessera_auth_failures_total",
        "reason=\"rate_limited\"",
        1.0,
    );
    assert!(limited >= 1.0);
}

#[test]
fn an_anonymous_connection_is_closed_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        dir.path(),
        &users_file(dir.path()),
        &["--login-timeout-ms", "500"],
    );
    let mut idle = Raw::connect(node.addr);
    let started = Instant::now();
    let (_, goodbye) = idle.recv().expect("a word before the close");
    assert_eq!(outcome(&goodbye).0, Status::Unauthenticated, "{goodbye:?}");
    assert!(idle.recv().is_none(), "the connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A connection that logged in stays past it.
    let mut user = logged_in(&node, "app", "app-secret");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(outcome(&user.call(2, &get("app:1"))).0, Status::NotFound);
    let closed = wait_for_metric(
        node.metrics_addr(),
        "tessera_auth_failures_total",
        "reason=\"deadline\"",
        1.0,
    );
    assert!(closed >= 1.0);
}

#[test]
fn sighup_reloads_the_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = users_file(dir.path());
    let node = start(dir.path(), &path, &[]);
    let mut app = logged_in(&node, "app", "app-secret");
    let mut reader = logged_in(&node, "reader", "reader-secret");
    assert_eq!(
        outcome(&app.call(2, &Request::Put(put("app:1")))).0,
        Status::Ok
    );
    // A broken file: the users in use stay.
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, "[[user]]\nname = \"x\"\npassword = \"plain\"\n").unwrap();
    signal(node.pid(), "-HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        outcome(&app.call(3, &Request::Put(put("app:1")))).0,
        Status::Ok
    );
    // app may no longer write; reader is gone. Both connections are held to it.
    let reduced = good
        .replace("write = [\"app:\"]\n", "")
        .split("[[user]]\nname = \"reader\"")
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&path, reduced).unwrap();
    signal(node.pid(), "-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = outcome(&app.call(4, &Request::Put(put("app:1"))));
        if status == Status::PermissionDenied {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not take app's write");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(outcome(&app.call(5, &get("app:1"))).0, Status::Ok);
    let (status, message) = outcome(&reader.call(3, &get("app:1")));
    assert_eq!(status, Status::Unauthenticated, "{message}");
    let mut fresh = Raw::connect(node.addr);
    let (status, _) = outcome(&fresh.call(1, &auth("reader", "reader-secret")));
    assert_eq!(status, Status::Unauthenticated);
}

/// A client certificate naming a user logs in as it; one that names no user must AUTH; an
/// expired one gets no connection at all.
#[test]
fn client_certificates_map_to_users() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = std::process::Command::new(cli_binary())
        .args(["admin", "certs", "--members", "127.0.0.1"])
        .args(["--clients", "app.clients,stranger.clients", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        "[[user]]\nname = \"app\"\ncertificate = \"app.clients\"\nread = [\"app:\"]\n\
         write = [\"app:\"]\nroute = true\n",
    )
    .unwrap();
    let file = |name: &str| certs.join(name).display().to_string();
    let (cert, key, ca) = (
        file("member-127.0.0.1.pem"),
        file("member-127.0.0.1-key.pem"),
        file("ca.pem"),
    );
    let tls_flags = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
    ];
    let node = start(dir.path(), &users, &tls_flags);
    let client_with = |name: &str| {
        let identity = (
            certs.join(format!("client-{name}.pem")),
            certs.join(format!("client-{name}-key.pem")),
        );
        let tls = tessera_client::tls::client_tls(
            &certs.join("ca.pem"),
            Some((identity.0.as_path(), identity.1.as_path())),
        )
        .unwrap();
        ClientConfig {
            tls: Some(tls),
            ..client_config(Level::Default)
        }
    };
    let rt = runtime();
    rt.block_on(async {
        let app = Client::connect_with(&node.addr(), client_with("app.clients"))
            .await
            .unwrap();
        app.put(b"app:1", b"x").await.unwrap();
        let refused = app.put(b"other:1", b"x").await.unwrap_err();
        assert_eq!(refused.status(), Some(Status::PermissionDenied));
        let stranger = Client::connect_with(&node.addr(), client_with("stranger.clients")).await;
        let error = stranger.err().expect("an unmapped certificate was let in");
        assert_eq!(error.status(), Some(Status::Unauthenticated), "{error}");
    });
    let how = wait_for_metric(
        node.metrics_addr(),
        "tessera_logins_total",
        "how=\"certificate\"",
        1.0,
    );
    assert!(how >= 1.0);
    // An expired certificate of the same CA, naming app: no connection.
    expired_client_cert(&certs, "app.clients", "expired");
    let expired = rt.block_on(Client::connect_with(&node.addr(), client_with("expired")));
    assert!(expired.is_err(), "an expired certificate was let in");
    let refused = wait_for_metric(
        node.metrics_addr(),
        "tessera_client_tls_failures_total",
        "reason=\"certificate\"",
        1.0,
    );
    assert!(refused >= 1.0);
}

/// `client-FILE.pem` and its key in `certs`: a certificate naming `name` that the CLI's CA
/// signed, which expired yesterday. (The CA is made again from its key and name: a
/// certificate it signs verifies against `ca.pem`.)
fn expired_client_cert(certs: &Path, name: &str, file: &str) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca-key.pem")).unwrap()).unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "tessera cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(name.try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(10);
    params.not_after = now - time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer, &ca_key).unwrap();
    std::fs::write(certs.join(format!("client-{file}.pem")), cert.pem()).unwrap();
    std::fs::write(
        certs.join(format!("client-{file}-key.pem")),
        key.serialize_pem(),
    )
    .unwrap();
}
