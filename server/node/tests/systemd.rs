//! Running under systemd (issue 11): the notify protocol, the unit file, the config file.
//!
//! The notify test owns a datagram socket, starts the real server with `NOTIFY_SOCKET` pointing
//! at it and a watchdog asked for, and checks what arrives: STATUS lines while it recovers,
//! READY=1 once it answers PING, WATCHDOG=1 while it runs, STOPPING=1 on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{server_binary, Raw};
use tessera_schema::msg::{Request, Response, Status};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The server with no `TESSERA_*` variables from the caller's environment.
fn server() -> Command {
    let mut command = Command::new(server_binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    command
}

/// Messages on the socket until `until` matches one, or `timeout`.
fn receive_until(socket: &UnixDatagram, timeout: Duration, until: &str) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let done = message.lines().any(|l| l == until);
            messages.push(message);
            if done {
                break;
            }
        }
    }
    messages
}

/// Kills the process when the test ends early (a failed assertion).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ping(addr: std::net::SocketAddr) -> bool {
    let mut raw = Raw::connect(addr);
    raw.send(1, &Request::Ping);
    matches!(raw.recv(), Some((1, Response::Op(result))) if result.status == Status::Ok)
}

#[test]
fn systemd_hears_status_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let port = common::free_port_range(2);
    let listen = format!("127.0.0.1:{port}");
    // systemd names the process it watches (WATCHDOG_PID): a shell that execs the server
    // keeps its pid.
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
        .arg(server_binary())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &listen, "--shards", "1"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "600000")
        .stdout(Stdio::null());
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("TESSERA_")) {
        shell.env_remove(name);
    }
    let mut child = KillOnDrop(shell.spawn().unwrap());
    let started = receive_until(&socket, Duration::from_secs(30), "READY=1");
    assert!(
        started
            .iter()
            .any(|m| m.contains("STATUS=shard 0: recovering its log")),
        "{started:?}"
    );
    assert!(
        started.last().is_some_and(|m| m.contains("READY=1")),
        "no READY=1: {started:?}"
    );
    assert!(
        ping(listen.parse().unwrap()),
        "READY=1 came before the node answered"
    );
    // The watchdog is fed at a third of WATCHDOG_USEC while the shard runs.
    let fed = receive_until(&socket, Duration::from_secs(5), "WATCHDOG=1");
    assert!(
        fed.iter().any(|m| m.lines().any(|l| l == "WATCHDOG=1")),
        "{fed:?}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopping = receive_until(&socket, Duration::from_secs(10), "STOPPING=1");
    assert!(
        stopping
            .iter()
            .any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{stopping:?}"
    );
    let exit = child.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    let unit = std::fs::read_to_string(repo_file("ops/systemd/tessera-server.service")).unwrap();
    // verify checks that ExecStart's binary exists: point it at the one this run built.
    let unit = unit.replace(
        "/usr/local/bin/tessera-server",
        server_binary().to_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera-server.service");
    std::fs::write(&path, unit).unwrap();
    let output = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            panic!("systemd-analyze is missing ({error}): install systemd (CI does, see .ci/run)")
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // verify only warns about unknown keys and bad values: any line is a defect here.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify complained:\n{stderr}"
    );
}

fn print_config(extra: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = server();
    command.args(extra).arg("--print-config");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_example_config_holds_every_setting_at_its_default() {
    let example_path = repo_file("ops/tessera.toml");
    let example = std::fs::read_to_string(&example_path).unwrap();
    let (ok, defaults, stderr) = print_config(&[], &[]);
    assert!(ok, "{stderr}");
    let (ok, from_example, stderr) =
        print_config(&["--config", example_path.to_str().unwrap()], &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        from_example, defaults,
        "ops/tessera.toml sets something to a non-default value"
    );
    for line in defaults.lines() {
        let key = line.trim_start_matches("# ").split(" =").next().unwrap();
        let listed = example.lines().any(|l| {
            let l = l.trim_start_matches("# ");
            l.starts_with(&format!("{key} ="))
        });
        assert!(listed, "ops/tessera.toml does not list `{key}`");
    }
}

#[test]
fn flags_override_the_environment_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.toml");
    std::fs::write(
        &file,
        "fsync = \"always\"\nsegment-mib = 16\npeers = [\"127.0.0.1:7000\", \"127.0.0.1:7100\"]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (ok, text, stderr) = print_config(&["--config", file], &[]);
    assert!(ok, "{stderr}");
    assert!(text.contains("fsync = \"always\"\n"), "{text}");
    assert!(text.contains("segment-mib = 16\n"), "{text}");
    assert!(
        text.contains("peers = [\"127.0.0.1:7000\", \"127.0.0.1:7100\"]\n"),
        "{text}"
    );
    let env = [("TESSERA_SEGMENT_MIB", "32"), ("TESSERA_FSYNC", "interval")];
    let (ok, text, _) = print_config(&["--config", file], &env);
    assert!(ok);
    assert!(
        text.contains("segment-mib = 32\n") && text.contains("fsync = \"interval\"\n"),
        "{text}"
    );
    let (ok, text, _) = print_config(&["--config", file, "--segment-mib", "8"], &env);
    assert!(ok);
    assert!(text.contains("segment-mib = 8\n"), "{text}");
}

#[test]
fn a_bad_config_file_stops_startup_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "fsync = \"always\"\ncahce-bytes = \"1GiB\"\n",
            "line 2: unknown setting `cahce-bytes`",
        ),
        (
            "fsync = \"sometimes\"\n",
            "line 1: `fsync`: invalid value 'sometimes'",
        ),
        ("[server]\nfsync = \"always\"\n", "unknown setting `server`"),
        ("fsync = \n", "line 1, column"),
        ("repair = 3\n", "`repair` is true or false"),
    ];
    for (text, expected) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let output = server()
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{text}: expected {expected:?} in {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!dir.path().join("data").exists(), "nothing written");
    }
    let output = server()
        .args(["--config", "/nonexistent/tessera.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the config file"));
}

#[test]
fn the_example_config_starts_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let example = repo_file("ops/tessera.toml");
    let node = common::Node::start(
        dir.path(),
        &[
            "--config",
            example.to_str().unwrap(),
            "--cache-bytes",
            "16MiB",
        ],
    );
    assert!(ping(node.addr));
}

#[test]
fn json_logs_are_one_object_per_line_for_each_notable_event() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        server()
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--shards",
                "1",
                "--log-format",
                "json",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The ready line on stdout, then SIGTERM; stderr ends when the node exits.
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert!(ready.starts_with("tessera-server ready"), "{ready}");
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "{line}"
        );
        messages.push(
            event["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(child.0.wait().unwrap().success());
    for expected in [
        "recovered",
        "ready",
        "stopping: draining in-flight requests",
        "stopped cleanly",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} in {messages:?}"
        );
    }
}

/// The server as an unprivileged user (`nobody`, by util-linux's setpriv) when the tests run
/// as root, who is never refused; from a copy of the binary in a folder anyone may read.
/// The copy is made by `cp`, a process of its own: a write descriptor opened in this test
/// process would be inherited by any child another test thread forks meanwhile, and exec of the
/// copy would then fail with ETXTBSY ("Text file busy", seen in CI).
fn unprivileged_server(bin_dir: &Path) -> Command {
    use std::os::unix::fs::PermissionsExt;
    let binary = bin_dir.join("tessera-server");
    if !binary.exists() {
        let copied = Command::new("cp")
            .arg(server_binary())
            .arg(&binary)
            .status()
            .unwrap();
        assert!(copied.success(), "cp of the server binary: {copied}");
    }
    std::fs::set_permissions(bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let uid = Command::new("id").arg("-u").output().unwrap().stdout;
    if String::from_utf8_lossy(&uid).trim() != "0" {
        return Command::new(binary);
    }
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary);
    command
}

#[test]
fn a_data_directory_without_permission_stops_startup_with_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let bin_dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // One the user may not enter, and one it may read but not write.
    let closed = root.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let read_only = root.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    for data_dir in [closed.join("data"), read_only.clone()] {
        let output = unprivileged_server(bin_dir.path())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--shards", "1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{}: {stderr}",
            data_dir.display()
        );
        assert!(stderr.contains("Permission denied"), "{stderr}");
        assert!(
            stderr.contains(&*data_dir.to_string_lossy()),
            "names it: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

/// The CPUs each thread of `pid` whose name starts with `prefix` may run on
/// (`Cpus_allowed_list`). glommio names an executor's threads after it, and its blocking-pool
/// thread too (that one is left unpinned on purpose: `main.rs`).
fn thread_cpus(pid: u32, prefix: &str) -> Vec<String> {
    let mut lists = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue;
        };
        let named = status.lines().any(|l| {
            l.strip_prefix("Name:\t")
                .is_some_and(|n| n.starts_with(prefix))
        });
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .filter(|_| named)
        {
            lists.push(list.trim().to_string());
        }
    }
    lists
}

/// `--cpuset`: one shard per CPU of the set on a new data directory, each pinned to its CPU;
/// a CPU this process may not run on stops startup, naming it.
#[test]
fn cpuset_pins_one_shard_per_cpu_and_refuses_cpus_outside_the_mask() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    // The last allowed CPU: a set that is not CPU 0, so pinning by index would be wrong.
    let last = allowed.rsplit([',', '-']).next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let node = common::Node::start(dir.path(), &["--cpuset", &last]);
    let meta = std::fs::read_to_string(dir.path().join("node.meta")).unwrap();
    assert!(meta.lines().any(|l| l == "shards 1"), "{meta}");
    let lists = thread_cpus(node.pid(), "shard-0-");
    assert!(
        lists.contains(&last),
        "shard 0 runs on CPU {last}: {lists:?}"
    );
    assert!(thread_cpus(node.pid(), "shard-1-").is_empty(), "one shard");
    node.terminate();
    let dir = tempfile::tempdir().unwrap();
    let output = server()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--cpuset", "8191"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CPU 8191 is not one"), "{stderr}");
    assert!(
        !dir.path().join("node.meta").exists(),
        "nothing written before the flags are checked"
    );
}
