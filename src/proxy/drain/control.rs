//! A live relay's control handle: a close the gateway asks of one connection (a gentle
//! drain, a rebalance), and how the relay hears of it.
//!
//! The request is one atomic word (the moment, as milliseconds since a process-wide epoch,
//! and the reason), written by whoever asks (the endpoint planner, the rebalancer) and
//! read by the relay's task with one atomic load per poll: no lock on the relay's path.
//! The relay's waker is stored once, on its first poll, the way `DrainSignal` keeps its
//! own; a request wakes it. A relay on a relay thread is still owned by its task on tokio,
//! which forwards the request to the thread (`relay/offload.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::model::RouteId;

/// Why the gateway closes a connection on its own schedule (the Close it sends the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CloseReason {
    /// wsgate shuts down (SIGTERM): 1001 "gateway shutting down".
    Shutdown = 1,
    /// The connection's endpoint left its route: 1001 "endpoint removed".
    EndpointRemoved = 2,
    /// The connection's endpoint is terminating: 1001 "endpoint terminating".
    EndpointTerminating = 3,
    /// The endpoint holds more than its share of the route (`rebalance`): 1012.
    Rebalance = 4,
}

impl CloseReason {
    /// The label of `wsgate_scheduled_closes_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::EndpointRemoved => "endpoint_removed",
            CloseReason::EndpointTerminating => "endpoint_terminating",
            CloseReason::Rebalance => "rebalance",
        }
    }

    fn from_u8(n: u8) -> Option<CloseReason> {
        Some(match n {
            1 => CloseReason::Shutdown,
            2 => CloseReason::EndpointRemoved,
            3 => CloseReason::EndpointTerminating,
            4 => CloseReason::Rebalance,
            _ => return None,
        })
    }
}

/// The instant the request words count from (the first use in the process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The moment as the word stores it: milliseconds since `epoch`, rounded up so a close
/// never comes early, at least 1 (0 is "no request").
fn encode(at: Instant, reason: CloseReason) -> u64 {
    let since = at.saturating_duration_since(epoch());
    let ms = since.as_nanos().div_ceil(1_000_000).max(1);
    let ms = u64::try_from(ms)
        .unwrap_or(u64::MAX >> 8)
        .min(u64::MAX >> 8);
    (ms << 8) | reason as u64
}

fn decode(word: u64) -> Option<(Instant, CloseReason)> {
    let reason = CloseReason::from_u8((word & 0xFF) as u8)?;
    Some((epoch() + Duration::from_millis(word >> 8), reason))
}

/// One live relay's handle, shared by its task and the registry (`drain::live`).
#[derive(Debug)]
pub struct RelayControl {
    /// The requested close (see `encode`), 0 until one is asked.
    request: AtomicU64,
    /// The relay's task, stored on its first poll.
    waker: Mutex<Option<Waker>>,
    /// Read and written only by the relay's task: the request word it saw last, and
    /// whether its waker is stored (kept here, not in every relay's future).
    seen: AtomicU64,
    registered: AtomicBool,
    /// Where the registry keeps it (`live.rs`).
    pub(super) registry: Weak<super::LiveRelays>,
    pub(super) route: RouteId,
    pub(super) endpoint: Arc<str>,
    pub(super) seq: u64,
    /// Where inside a drain budget this connection's close falls, as a fraction of the
    /// budget's spread window in 1/65536 (drawn once, when the connection starts).
    spread: u16,
    /// The route's drain budget and jitter when the connection started (wsgate's own
    /// shutdown closes it at `shutdown_offset`).
    shutdown_offset: Duration,
}

impl RelayControl {
    /// A handle for a connection whose route drains by `budget` and `jitter`; `spread` is
    /// the connection's random place in a budget (0..=65535).
    pub(super) fn new(
        registry: Weak<super::LiveRelays>,
        (route, endpoint, seq): (RouteId, Arc<str>, u64),
        budget: Duration,
        jitter: bool,
        spread: u16,
    ) -> RelayControl {
        RelayControl {
            request: AtomicU64::new(0),
            waker: Mutex::new(None),
            seen: AtomicU64::new(0),
            registered: AtomicBool::new(false),
            registry,
            route,
            endpoint,
            seq,
            spread,
            shutdown_offset: spread_offset(budget, jitter, spread),
        }
    }

    /// When, after wsgate's shutdown starts, this connection gets its Close 1001.
    pub fn shutdown_offset(&self) -> Duration {
        self.shutdown_offset
    }

    /// This connection's moment in a drain window of `budget` (see [`spread_offset`]).
    pub fn offset_in(&self, budget: Duration, jitter: bool) -> Duration {
        spread_offset(budget, jitter, self.spread)
    }

    /// Asks the relay to close at `at` with `reason`. An earlier moment replaces a later
    /// one; a later one never postpones a close already asked. Returns whether this
    /// request took effect.
    pub fn request(&self, at: Instant, reason: CloseReason) -> bool {
        let word = encode(at, reason);
        let took = self
            .request
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old == 0 || word >> 8 < old >> 8).then_some(word)
            })
            .is_ok();
        if took {
            if let Some(waker) = lock(&self.waker).as_ref() {
                waker.wake_by_ref();
            }
        }
        took
    }

    /// Whether a close was asked of this connection.
    pub fn is_requested(&self) -> bool {
        self.request.load(Ordering::Acquire) != 0
    }

    /// Ready with the request once one differs from the one last returned; stores the
    /// task's waker on the first call. After that, `Pending` costs two atomic loads (the
    /// task's own flags are uncontended). Only the relay's task calls it.
    pub fn poll_request(&self, cx: &mut Context<'_>) -> Poll<(Instant, CloseReason)> {
        if !self.registered.load(Ordering::Relaxed) {
            *lock(&self.waker) = Some(cx.waker().clone());
            self.registered.store(true, Ordering::Relaxed);
        }
        let word = self.request.load(Ordering::Acquire);
        if word == self.seen.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        self.seen.store(word, Ordering::Relaxed);
        match decode(word) {
            Some(request) => Poll::Ready(request),
            None => Poll::Pending,
        }
    }
}

/// Where in `budget` a connection with random place `spread` closes: uniformly in
/// `[0, budget − margin)` with jitter, at once without. The margin (a tenth of the budget,
/// at most 2 s) leaves the close handshake its time inside the budget.
pub fn spread_offset(budget: Duration, jitter: bool, spread: u16) -> Duration {
    if !jitter {
        return Duration::ZERO;
    }
    let margin = (budget / 10).min(Duration::from_secs(2));
    let window = budget.saturating_sub(margin);
    window.mul_f64(f64::from(spread) / 65536.0)
}

/// A random place in a budget for a new connection (`proxy::random`: closes need spreading,
/// not secrecy).
pub fn random_spread() -> u16 {
    (crate::proxy::random::next_u64() >> 48) as u16
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The earliest request wins, a later one does not postpone it, and the relay sees a
    /// new word once.
    #[test]
    fn earlier_requests_replace_later_ones_and_are_seen_once() {
        let c = RelayControl::new(
            Weak::new(),
            (RouteId("r".into()), "a:1".into(), 0),
            Duration::from_secs(10),
            true,
            0,
        );
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(c.poll_request(&mut cx).is_pending());
        let now = Instant::now();
        assert!(c.request(
            now + Duration::from_secs(5),
            CloseReason::EndpointTerminating
        ));
        assert!(!c.request(now + Duration::from_secs(6), CloseReason::Rebalance));
        let Poll::Ready((at, reason)) = c.poll_request(&mut cx) else {
            panic!("request not seen");
        };
        assert_eq!(reason, CloseReason::EndpointTerminating);
        let late = at.saturating_duration_since(now + Duration::from_secs(5));
        assert!(late <= Duration::from_millis(1), "{late:?}");
        assert!(at >= now + Duration::from_secs(5), "never early");
        assert!(c.poll_request(&mut cx).is_pending());
        assert!(c.request(now + Duration::from_secs(1), CloseReason::EndpointRemoved));
        assert!(matches!(
            c.poll_request(&mut cx),
            Poll::Ready((_, CloseReason::EndpointRemoved))
        ));
    }

    /// What a live connection's handle costs on the heap (besides its route id's bytes
    /// and its registry entry): it must stay small, every relayed connection has one.
    #[test]
    fn a_control_handle_stays_small() {
        let size = std::mem::size_of::<RelayControl>();
        eprintln!("RelayControl: {size} bytes");
        assert!(size <= 128, "RelayControl grew to {size} bytes");
    }

    /// With jitter, places spread over the budget minus the margin; without, zero.
    #[test]
    fn offsets_stay_inside_the_budget_minus_the_margin() {
        let budget = Duration::from_secs(2);
        assert_eq!(spread_offset(budget, false, 65535), Duration::ZERO);
        assert_eq!(spread_offset(budget, true, 0), Duration::ZERO);
        let last = spread_offset(budget, true, 65535);
        assert!(last < Duration::from_millis(1800) && last > Duration::from_millis(1790));
        let long = spread_offset(Duration::from_secs(60), true, 65535);
        assert!(long < Duration::from_secs(58) && long > Duration::from_millis(57_990));
    }
}
