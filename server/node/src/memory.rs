//! Giving memory back to the system after a spike.
//!
//! The node frees what a burst of clients made it hold (budget.rs bounds that), but glibc's
//! malloc keeps freed memory in its arenas, and raises its mmap threshold as large blocks are
//! freed, so that later large blocks come from the arenas too: after a spike of 1 MiB values,
//! hundreds of MiB stayed resident with nothing live in them. A watcher thread asks malloc to
//! return its free pages (`malloc_trim`) once the connections' charge has fallen by 64 MiB from
//! its peak since the last trim (and every half second for five seconds after, for what is
//! freed a little later). Trimming walks the arenas under
//! their locks (a few milliseconds for a large heap), so it runs only after such a fall, never
//! on a timer alone, and on its own thread, not a shard's.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::shard::NodeShared;

/// A fall smaller than this is not worth a trim.
const TRIM_AFTER_FREED_BYTES: u64 = 64 << 20;
/// Trims after each fall, one per watch interval (five seconds: on a busy machine, aborted
/// requests and closing connections free their memory for seconds after the fall).
const TRIMS_PER_FALL: u32 = 10;
/// How often the watcher looks at the budgets.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Starts the watcher; it stops with the node.
pub fn spawn_trimmer(node: Arc<NodeShared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(move || {
            let mut peak_bytes = 0u64;
            // Trims left after a fall: memory freed just after a trim (requests aborted with
            // their connection finish a moment later) is caught by the next ones.
            let mut trims_left = 0;
            while !node.stopping.load(Ordering::Relaxed) {
                std::thread::sleep(WATCH_INTERVAL);
                let used_bytes: u64 = node.budgets.iter().map(|b| b.used_bytes()).sum();
                peak_bytes = peak_bytes.max(used_bytes);
                if peak_bytes - used_bytes >= TRIM_AFTER_FREED_BYTES {
                    trims_left = TRIMS_PER_FALL;
                    peak_bytes = used_bytes;
                }
                if trims_left > 0 {
                    trim();
                    trims_left -= 1;
                    tracing::debug!(used_bytes, "gave free memory back");
                }
            }
        })
        .map(|_| ())
}

/// Returns malloc's free pages to the system.
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and is safe to call from any thread at any time;
    // it only returns unused memory of malloc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
