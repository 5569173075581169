//! Starting real `tessera-server` processes on loopback with a temp data dir, and talking to
//! them with raw frames. Every process is killed by its own pid when its `Node` is dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tessera_schema::frame::{FrameEvent, FrameReader};
use tessera_schema::msg::{Request, Response};
use tessera_schema::wire::{decode_response, encode_request_frame};

/// The `tessera-server` binary: cargo's path when this test belongs to the server package,
/// otherwise the one `cargo test --workspace` built beside the test executable's folder.
pub fn server_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_tessera-server") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("tessera-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` or `cargo build -p tessera-server`",
        path.display()
    );
    path
}

pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl Node {
    /// Starts a node on a free loopback port and waits for its ready line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let mut child = Command::new(server_binary())
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--segment-mib", "4"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tessera-server");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = sender.send(line);
            }
            for _ in lines {}
        });
        let line = match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("tessera-server printed no ready line");
            }
        };
        let addr = line
            .split_whitespace()
            .find_map(|word| word.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in ready line: {line}"));
        Node {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tessera-server did not exit within 15 s of SIGTERM");
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking connection speaking raw frames, for tests of the wire itself.
pub struct Raw {
    pub stream: TcpStream,
    reader: FrameReader,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            reader: FrameReader::new(),
        }
    }

    pub fn send(&mut self, id: u64, request: &Request) {
        let mut frame = Vec::new();
        encode_request_frame(&mut frame, id, request);
        self.stream.write_all(&frame).expect("send");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next response, or None when the node closed the connection.
    pub fn recv(&mut self) -> Option<(u64, Response)> {
        let mut buffer = [0u8; 65536];
        loop {
            if let Some(event) = self
                .reader
                .next_event()
                .expect("valid frames from the node")
            {
                let FrameEvent::Frame { header, body } = event else {
                    panic!("oversized response")
                };
                return Some((
                    header.request_id,
                    decode_response(body).expect("valid body"),
                ));
            }
            match self.stream.read(&mut buffer) {
                Ok(0) => return None,
                Ok(n) => self.reader.feed(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    pub fn call(&mut self, id: u64, request: &Request) -> Response {
        self.send(id, request);
        let (got, response) = self.recv().expect("a response");
        assert_eq!(got, id);
        response
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
