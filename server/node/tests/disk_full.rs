//! A real filesystem that fills up: a small ext4 image, loop-mounted. Writes get DISK_FULL,
//! reads go on, the node stays up, and writes work again once space returns.
//!
//! Needs root and loop devices (CI has both); where they are missing the test fails, unless
//! `TESSERA_TEST_WITHOUT=loop` says to skip it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{runtime, Node};
use tessera_client::*;

struct LoopMount {
    mount_point: PathBuf,
}

impl LoopMount {
    fn new(dir: &Path, size_mib: u64) -> Result<LoopMount, String> {
        let image = dir.join("fs.img");
        let mount_point = dir.join("mnt");
        std::fs::create_dir_all(&mount_point).map_err(|e| e.to_string())?;
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(size_mib * 1024 * 1024)
            .map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()])?;
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount_point.to_str().unwrap(),
            ],
        )?;
        Ok(LoopMount { mount_point })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[test]
fn a_full_filesystem_gets_disk_full_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mount = match LoopMount::new(dir.path(), 48) {
        Ok(mount) => mount,
        Err(reason) => {
            common::skip_without("loop", &format!("cannot loop-mount ({reason})"));
            return;
        }
    };
    // Ballast that an operator can delete to give the node room again.
    let ballast = mount.mount_point.join("ballast");
    std::fs::write(&ballast, vec![1u8; 12 * 1024 * 1024]).unwrap();
    let data = mount.mount_point.join("data");
    let node = Node::start(&data, &["--shards", "1"]);
    let value = vec![3u8; 256 * 1024];
    let mut stored = Vec::new();
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        let mut refused = None;
        for i in 0..400 {
            let key = format!("key{i}");
            match client.put(key.as_bytes(), &value).await {
                Ok(_) => stored.push(key),
                Err(error) if error.status() == Some(Status::DiskFull) => {
                    refused = Some(error.to_string());
                    break;
                }
                Err(error) => panic!("unexpected {error}"),
            }
            if i % 8 == 7 {
                tokio::time::sleep(Duration::from_millis(20)).await; // let the flusher find out
            }
        }
        let message = refused.expect("the filesystem filled up within 100 MiB of writes");
        assert!(
            message.contains("DISK_FULL") && message.contains("disk full"),
            "{message}"
        );
        // Reads go on, and so do further refusals, cleanly.
        assert_eq!(
            client.get(stored[0].as_bytes()).await.unwrap().unwrap().0,
            value
        );
        let again = client.put(b"one-more", b"v").await.unwrap_err();
        assert_eq!(again.status(), Some(Status::DiskFull));
        // Space returns: within a few retries writes are accepted again.
        std::fs::remove_file(&ballast).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client.put(b"one-more", b"v").await {
                Ok(_) => break,
                Err(error)
                    if error.status() == Some(Status::DiskFull) && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("writes did not come back: {error}"),
            }
        }
    });
    // Everything acknowledged is there after a clean restart.
    assert!(node.terminate().success());
    let node = Node::start(&data, &[]);
    runtime().block_on(async {
        let client = Client::connect(&node.addr()).await.unwrap();
        for key in &stored {
            assert_eq!(
                client.get(key.as_bytes()).await.unwrap().unwrap().0,
                value,
                "{key}"
            );
        }
        assert_eq!(client.get(b"one-more").await.unwrap().unwrap().0, b"v");
    });
    drop(node);
}
