//! systemd's notify protocol (`Type=notify`, through the sd-notify crate): `STATUS=` lines
//! while the node starts, `READY=1` once every shard serves, `WATCHDOG=1` while every shard's
//! executor runs, `STOPPING=1` when a signal asks the node to stop. Without `NOTIFY_SOCKET`
//! (not started by systemd) every call does nothing.
//!
//! The watchdog is fed by a thread, but only with proof from the shards: each shard's executor
//! bumps its counter from its own control loop (`shard_main`), and the thread sends
//! `WATCHDOG=1` only when every counter moved since its last look. A shard that is stuck (a
//! busy loop, a blocked executor) stops the beats, and systemd restarts the node.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::shard::NodeShared;

fn send(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, state) {
        tracing::warn!("cannot notify systemd: {error}");
    }
}

/// A line for `systemctl status` while the node starts or runs.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// The node serves.
pub fn ready(text: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(text)]);
}

/// The node is stopping (draining its requests).
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining requests"),
    ]);
}

/// When systemd asks for a watchdog (`WatchdogSec=`), feeds it at a third of its interval
/// while every shard beats.
pub fn spawn_watchdog(node: Arc<NodeShared>) -> std::io::Result<()> {
    let mut interval_us = 0;
    if !sd_notify::watchdog_enabled(false, &mut interval_us) || interval_us == 0 {
        return Ok(());
    }
    let period = Duration::from_micros(interval_us / 3);
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut last: Vec<u64> = beats(&node);
            while !node.stopping.load(Ordering::Relaxed) {
                std::thread::sleep(period);
                let now = beats(&node);
                let stuck: Vec<usize> = (0..now.len()).filter(|&i| now[i] == last[i]).collect();
                if stuck.is_empty() {
                    send(&[NotifyState::Watchdog]);
                } else {
                    tracing::warn!(
                        ?stuck,
                        "shards did not run for {period:?}: not feeding the watchdog"
                    );
                }
                last = now;
            }
        })
        .map(|_| ())
}

fn beats(node: &NodeShared) -> Vec<u64> {
    node.beats
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect()
}
