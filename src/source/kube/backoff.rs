//! How soon a failed watch tries again.
//!
//! kube-runtime's default (800 ms doubling to 30 s, reset after 120 s without a failure)
//! is kind to a struggling API server but slow to notice one that came back: measured
//! against a real API server stopped and restarted, a change made after its return reached
//! wsgate 21.6 s later, because each watch was sleeping out a backoff that had grown while
//! the server was away (issue 21). wsgate's table is only as fresh as its watches, so here
//! the delay doubles from 250 ms but never exceeds 1 s (±20 % jitter, so the replicas of a
//! Deployment do not retry in step): a watch is back at most 1.2 s after the API server
//! is. The price is bounded: while the API server is away, each watch of each replica
//! makes at most about one request per second, and a refused connection costs it little.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// The first delay after a failure.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest delay, before jitter.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// Each delay is scaled by a factor drawn from `1 ± JITTER`.
const JITTER: f64 = 0.2;

/// Exponential backoff from [`FIRST_DELAY`], capped at [`MAX_DELAY`], with jitter. Reset by
/// the watch stream after every successful event.
#[derive(Debug)]
pub struct WatchBackoff {
    next: Duration,
    /// xorshift state for the jitter (seeded per backoff from the process's random keys).
    rng: u64,
}

impl WatchBackoff {
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5851_F42D_4C95_7F2D);
        WatchBackoff {
            next: FIRST_DELAY,
            rng: h.finish() | 1,
        }
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (base * 2).min(MAX_DELAY);
        let factor = 1.0 - JITTER + 2.0 * JITTER * self.unit();
        Some(base.mul_f64(factor))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST_DELAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_delay_and_never_exceeds_the_cap_with_jitter() {
        let mut backoff = WatchBackoff::new();
        let delays: Vec<Duration> = backoff.by_ref().take(50).collect();
        let within = |d: Duration, base: Duration| {
            d >= base.mul_f64(1.0 - JITTER) && d <= base.mul_f64(1.0 + JITTER)
        };
        assert!(within(delays[0], FIRST_DELAY), "{delays:?}");
        assert!(within(delays[1], FIRST_DELAY * 2), "{delays:?}");
        for d in &delays[2..] {
            assert!(within(*d, MAX_DELAY), "{d:?} in {delays:?}");
        }
        // Jittered: not every capped delay is the same.
        assert!(delays[2..].windows(2).any(|w| w[0] != w[1]), "{delays:?}");
        backoff.reset();
        assert!(within(backoff.next().unwrap(), FIRST_DELAY));
    }
}
