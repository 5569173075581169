//! A token bucket for background I/O: compaction reads and relocates at most `bytes_per_s`,
//! with bursts of up to `burst_bytes`, so that it cannot take the device from the foreground.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Pacer {
    /// `None`: no limit.
    bytes_per_s: Option<u64>,
    burst_bytes: u64,
    /// The time by which the bytes charged so far are paid for at the rate (virtual time).
    paid_until: Option<Instant>,
}

impl Pacer {
    pub fn new(bytes_per_s: Option<u64>, burst_bytes: u64) -> Pacer {
        Pacer {
            bytes_per_s: bytes_per_s.filter(|&rate| rate > 0),
            burst_bytes,
            paid_until: None,
        }
    }

    /// Charges `bytes` done at `now`; returns how long to wait before doing more.
    pub fn charge(&mut self, bytes: u64, now: Instant) -> Duration {
        let Some(rate) = self.bytes_per_s else {
            return Duration::ZERO;
        };
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let burst = Duration::from_secs_f64(self.burst_bytes as f64 / rate as f64);
        // Bytes are paid for up to `paid_until`; idle time refills the bucket, up to the burst.
        let refilled = now.checked_sub(burst).unwrap_or(now);
        let paid = self.paid_until.map_or(refilled, |paid| paid.max(refilled)) + cost;
        self.paid_until = Some(paid);
        paid.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn holds_the_rate_after_the_burst() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Some(10 * MIB), MIB);
        // The first MiB goes at once (the burst), then each MiB costs 100 ms.
        assert_eq!(pacer.charge(MIB, start), Duration::ZERO);
        let mut now = start;
        let mut waited = Duration::ZERO;
        for _ in 0..10 {
            let wait = pacer.charge(MIB, now);
            waited += wait;
            now += wait;
        }
        let ms = waited.as_millis();
        assert!(
            (990..=1010).contains(&ms),
            "10 MiB at 10 MiB/s after the burst: {ms} ms"
        );
    }

    #[test]
    fn idle_time_refills_only_the_burst() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Some(10 * MIB), MIB);
        pacer.charge(5 * MIB, start);
        // Long idle: one burst is free again, not the whole idle time's worth.
        let later = start + Duration::from_secs(60);
        assert_eq!(pacer.charge(MIB, later), Duration::ZERO);
        assert!(pacer.charge(MIB, later) >= Duration::from_millis(99));
    }

    #[test]
    fn no_rate_never_waits() {
        let mut pacer = Pacer::new(None, 0);
        assert_eq!(pacer.charge(u64::MAX / 2, Instant::now()), Duration::ZERO);
        let mut zero = Pacer::new(Some(0), 0);
        assert_eq!(zero.charge(MIB, Instant::now()), Duration::ZERO);
    }
}
