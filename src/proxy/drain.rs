//! Shutdown and drain: one signal every listener and relay watches, and a tracker of the
//! tasks that must finish (or be cut at the drain budget) before the process exits.
//!
//! A relay checks the signal on every step, so checking must not touch anything shared
//! under a lock: it is an atomic load. A relay's waker is registered once, on its first
//! check, and woken when the drain starts.
//!
//! Gentle drains (issue 21): a relay's signal may carry its connection's control handle
//! (`control.rs`: a close asked of this one connection, at a moment and for a reason), and
//! the handle sits in the registry of live relays by route and endpoint (`live.rs`) that
//! the endpoint planner (`plan.rs`) walks when a table is published. On wsgate's own
//! shutdown each relay closes at its own moment inside its route's budget
//! (`RelayControl::shutdown_offset`).

pub mod control;
pub mod live;
pub mod plan;

pub use control::{CloseReason, RelayControl};
pub use live::{LiveRelay, LiveRelays};

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio_util::task::TaskTracker;

#[derive(Default)]
struct Shared {
    draining: AtomicBool,
    /// When the drain started: each relay's Close is due at this plus its own offset,
    /// however late it hears of the drain.
    started: std::sync::OnceLock<std::time::Instant>,
    next_key: AtomicU64,
    /// Tasks to wake when the drain starts; touched once per connection, never per step.
    wakers: Mutex<HashMap<u64, Waker>>,
}

/// Owned by the process: starts the drain and waits for connections to finish.
#[derive(Clone)]
pub struct Drain {
    shared: Arc<Shared>,
    tasks: TaskTracker,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Drain {
            shared: Arc::default(),
            tasks: TaskTracker::new(),
        }
    }

    /// A receiver for one listener or connection.
    pub fn signal(&self) -> DrainSignal {
        DrainSignal {
            shared: Arc::clone(&self.shared),
            key: None,
            control: None,
        }
    }

    /// Runs a connection's task so that `wait` can account for it.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Tells every listener to stop accepting and every relay to send Close 1001.
    pub fn start(&self) {
        self.shared.started.get_or_init(std::time::Instant::now);
        self.shared.draining.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *lock(&self.shared.wakers));
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// Live tracked tasks (connections being served or relayed).
    pub fn active(&self) -> usize {
        self.tasks.len()
    }

    /// Waits until every tracked task ended, or `budget` passed. True if all ended.
    pub async fn wait(&self, budget: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(budget, self.tasks.wait())
            .await
            .is_ok()
    }
}

/// A connection's view of the drain signal.
pub struct DrainSignal {
    shared: Arc<Shared>,
    /// Set once this signal's waker is registered.
    key: Option<u64>,
    /// The connection's control handle (a relay registered in `LiveRelays`), if any.
    control: Option<Arc<RelayControl>>,
}

impl Clone for DrainSignal {
    fn clone(&self) -> Self {
        DrainSignal {
            shared: Arc::clone(&self.shared),
            key: None,
            control: None,
        }
    }
}

impl DrainSignal {
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Ready once the drain has started. After the first call, `Pending` costs one atomic
    /// load; the waker of that first call is the one woken.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_draining() {
            return Poll::Ready(());
        }
        if self.key.is_none() {
            let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
            lock(&self.shared.wakers).insert(key, cx.waker().clone());
            self.key = Some(key);
            // The drain may have started between the check and the registration.
            if self.is_draining() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Resolves once the drain has started (immediately if it already has).
    pub async fn wait(&mut self) {
        poll_fn(|cx| self.poll_drain(cx)).await
    }

    /// This signal with the connection's control handle: the relay also hears the closes
    /// asked of this one connection ([`DrainSignal::poll_close_request`]).
    pub fn with_control(mut self, control: Arc<RelayControl>) -> Self {
        self.control = Some(control);
        self
    }

    /// When, after the drain started, this connection gets its Close 1001: its own moment
    /// inside its route's budget (zero without a control handle or without jitter).
    pub fn shutdown_offset(&self) -> Duration {
        self.control
            .as_ref()
            .map_or(Duration::ZERO, |c| c.shutdown_offset())
    }

    /// The moment this connection gets its Close 1001 once the drain started: the drain's
    /// start plus [`DrainSignal::shutdown_offset`].
    pub fn shutdown_at(&self) -> std::time::Instant {
        let started = self
            .shared
            .started
            .get()
            .copied()
            .unwrap_or_else(std::time::Instant::now);
        started + self.shutdown_offset()
    }

    /// Ready with a close asked of this connection (when, why) once a new one is asked;
    /// never without a control handle. After the first call, `Pending` is one atomic load.
    pub fn poll_close_request(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<(std::time::Instant, CloseReason)> {
        match &self.control {
            None => Poll::Pending,
            Some(control) => control.poll_request(cx),
        }
    }
}

impl Drop for DrainSignal {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            lock(&self.shared.wakers).remove(&key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registered signal is woken by `start`, and a signal dropped before unregisters.
    #[tokio::test]
    async fn start_wakes_every_waiting_signal_and_drop_unregisters() {
        let drain = Drain::new();
        let mut waiting = drain.signal();
        let task = tokio::spawn(async move { waiting.wait().await });
        let mut dropped = drain.signal();
        poll_fn(|cx| {
            assert!(dropped.poll_drain(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        drop(dropped);
        // The spawned task registers on its first poll; wait for it to be in the map.
        while lock(&drain.shared.wakers).len() != 1 {
            tokio::task::yield_now().await;
        }
        drain.start();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("woken")
            .expect("task");
        assert!(drain.signal().is_draining());
    }
}
