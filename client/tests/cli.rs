//! The `tessera` CLI against a real node: every subcommand and its exit codes.

// The node helpers live with the server's tests; this test runs the server binary that
// `cargo test --workspace` builds (see `server_binary`).
#[path = "../../server/node/tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::Node;

fn cli(node: &Node, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.arg("--addr").arg(node.addr()).args(args);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_cli_does_every_operation_with_its_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "2"]);
    assert_eq!(cli(&node, &["ping"], None).0, 0);
    let (code, version, _) = cli(&node, &["put", "user:1", "alice"], None);
    assert_eq!(code, 0);
    let version: u64 = version.trim().parse().unwrap();
    assert_eq!(
        cli(&node, &["get", "user:1"], None),
        (0, "alice".into(), String::new())
    );
    assert_eq!(
        cli(&node, &["put", "user:2", "-"], Some(b"from stdin")).0,
        0
    );
    assert_eq!(cli(&node, &["get", "user:2"], None).1, "from stdin");
    let (code, _, stderr) = cli(
        &node,
        &[
            "put",
            "user:1",
            "bob",
            "--if-version",
            &(version + 1).to_string(),
        ],
        None,
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("VERSION_MISMATCH"), "{stderr}");
    assert_eq!(
        cli(
            &node,
            &["put", "user:1", "bob", "--if-version", &version.to_string()],
            None
        )
        .0,
        0
    );
    assert_eq!(
        cli(&node, &["put", "tmp", "x", "--ttl", "200ms"], None).0,
        0
    );
    let (code, stdout, _) = cli(&node, &["scan", "--prefix", "user:"], None);
    assert_eq!(code, 0);
    let mut keys: Vec<&str> = stdout.lines().collect();
    keys.sort();
    assert_eq!(keys, vec!["user:1", "user:2"]);
    assert_eq!(
        cli(&node, &["scan", "--limit", "1"], None)
            .1
            .lines()
            .count(),
        1
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(cli(&node, &["get", "tmp"], None).0, 1, "expired");
    assert_eq!(cli(&node, &["del", "user:2"], None).0, 0);
    let (code, _, stderr) = cli(&node, &["get", "user:2"], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("NOT_FOUND"));
    assert_eq!(cli(&node, &["del", "user:2"], None).0, 1);
    let (code, stdout, _) = cli(&node, &["stats", "--json"], None);
    assert_eq!(code, 0);
    let stats: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // user:1, and tmp until the TTL sweep drops it from the index (then it counts as expired).
    let total = &stats["total"];
    assert_eq!(
        total["keys"].as_u64().unwrap() + total["expired_keys"].as_u64().unwrap(),
        2,
        "{total}"
    );
    for field in [
        "garbage_ratio",
        "cache_hit_rate",
        "avg_group_commit",
        "index_bytes",
        "compactions",
    ] {
        assert!(!total[field].is_null(), "stats --json has {field}");
    }
    assert_eq!(stats["shards"].as_array().unwrap().len(), 2);
    let (code, _, stderr) = cli(&node, &["put", &"k".repeat(1025), "v"], None);
    assert_eq!(code, 2);
    assert!(stderr.contains("KEY_TOO_LARGE"), "{stderr}");
}

#[test]
fn a_reader_that_goes_away_ends_the_cli_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--shards", "1"]);
    // The pipe's reader is gone before the CLI writes (it first asks the node), as with
    // `tessera topology | head -1` once head has its line.
    let mut child = Command::new(common::cli_binary())
        .args(["--addr", &node.addr(), "topology"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
