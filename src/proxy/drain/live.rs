//! The registry of live relays by route and endpoint: what the endpoint planner
//! (`plan.rs`) walks when a table is published, and what the rebalancer
//! (`proxy::rebalance`) counts and closes from.
//!
//! A connection registers once, when its backend switched protocols, and unregisters once,
//! when its account drops: one short lock each. Nothing here is touched per message. Within
//! one route and endpoint, connections are kept in the order they started, so the oldest
//! come first.
//!
//! (`balance::EndpointLoads` counts live connections per endpoint too, across routes and
//! without a handle per connection: the lock-free count `LeastConnection` reads on every
//! pick. This registry is by route, holds a handle per connection, and is only walked by
//! the control tasks.)

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::control::{random_spread, CloseReason, RelayControl};
use crate::model::RouteId;

/// What happened to an endpoint of a route, and so when its connections close: each at
/// `from` plus its own place in `budget` (at `from` without jitter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub reason: CloseReason,
    pub from: Instant,
    pub budget: Duration,
    pub jitter: bool,
}

#[derive(Default)]
struct Group {
    /// By start order (a sequence number): the oldest first.
    conns: BTreeMap<u64, Arc<RelayControl>>,
    mark: Option<Mark>,
}

impl Group {
    /// Asks `control` to close at its place in the mark's budget. A connection that comes
    /// late (routed under an older table, registered after the mark) takes its place from
    /// now but never later than the budget's end: the budget is a promise from the moment
    /// the endpoint left.
    fn close_by_mark(&self, control: &RelayControl, mark: Mark, now: Instant) -> bool {
        let place = mark.from.max(now) + control.offset_in(mark.budget, mark.jitter);
        let at = place.min(mark.from + mark.budget);
        control.request(at, mark.reason)
    }
}

/// Live relays by route, then by endpoint (`host:port` as the dial wrote it).
#[derive(Default)]
pub struct LiveRelays {
    routes: Mutex<HashMap<RouteId, HashMap<Arc<str>, Group>>>,
    next: AtomicU64,
}

/// One endpoint of a route as the registry sees it: its live connections, those of them
/// not yet asked to close, and whether it is marked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointView {
    pub endpoint: Arc<str>,
    pub live: usize,
    pub open: usize,
    pub mark: Option<CloseReason>,
}

impl LiveRelays {
    /// Registers a connection of `route` on `endpoint` whose route drains by `budget` and
    /// `jitter`. If the endpoint is already marked (the connection was routed under an
    /// older table), it gets its close at once, like its neighbours.
    pub fn register(
        self: &Arc<Self>,
        route: &RouteId,
        endpoint: Arc<str>,
        budget: Duration,
        jitter: bool,
    ) -> LiveRelay {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(RelayControl::new(
            Arc::downgrade(self),
            (route.clone(), Arc::clone(&endpoint), seq),
            budget,
            jitter,
            random_spread(),
        ));
        {
            let mut routes = lock(&self.routes);
            let group = routes
                .entry(route.clone())
                .or_default()
                .entry(Arc::clone(&endpoint))
                .or_default();
            if let Some(mark) = group.mark {
                group.close_by_mark(&control, mark, Instant::now());
            }
            group.conns.insert(seq, Arc::clone(&control));
        }
        LiveRelay { control }
    }

    fn unregister(&self, route: &RouteId, endpoint: &Arc<str>, seq: u64) {
        let mut routes = lock(&self.routes);
        let Some(endpoints) = routes.get_mut(route) else {
            return;
        };
        if let Some(group) = endpoints.get_mut(endpoint) {
            group.conns.remove(&seq);
            if group.conns.is_empty() {
                endpoints.remove(endpoint);
            }
        }
        if endpoints.is_empty() {
            routes.remove(route);
        }
    }

    /// The routes that have live connections.
    pub fn routes(&self) -> Vec<RouteId> {
        lock(&self.routes).keys().cloned().collect()
    }

    /// The endpoints of `route` with live connections.
    pub fn endpoints(&self, route: &RouteId) -> Vec<EndpointView> {
        let routes = lock(&self.routes);
        let Some(endpoints) = routes.get(route) else {
            return Vec::new();
        };
        endpoints
            .iter()
            .map(|(endpoint, group)| EndpointView {
                endpoint: Arc::clone(endpoint),
                live: group.conns.len(),
                open: group.conns.values().filter(|c| !c.is_requested()).count(),
                mark: group.mark.map(|m| m.reason),
            })
            .collect()
    }

    /// Marks `endpoint` of `route` and asks each of its connections to close by the mark.
    /// Returns how many requests took effect (a connection already asked to close earlier
    /// keeps its moment).
    pub fn mark(&self, route: &RouteId, endpoint: &str, mark: Mark, now: Instant) -> usize {
        let mut routes = lock(&self.routes);
        let Some(group) = routes.get_mut(route).and_then(|e| e.get_mut(endpoint)) else {
            return 0;
        };
        group.mark = Some(mark);
        group
            .conns
            .values()
            .filter(|c| group.close_by_mark(c, mark, now))
            .count()
    }

    /// Forgets the mark of `endpoint` of `route`: it came back (ready again), so the
    /// connections it gets from now on stay. Closes already asked are not cancelled.
    pub fn unmark(&self, route: &RouteId, endpoint: &str) {
        let mut routes = lock(&self.routes);
        if let Some(group) = routes.get_mut(route).and_then(|e| e.get_mut(endpoint)) {
            group.mark = None;
        }
    }

    /// Asks the `n` oldest connections of `route` on `endpoint` not yet asked to close to
    /// close at `at` with `reason`. Returns how many were asked.
    pub fn close_oldest(
        &self,
        route: &RouteId,
        endpoint: &str,
        n: usize,
        at: Instant,
        reason: CloseReason,
    ) -> usize {
        let routes = lock(&self.routes);
        let Some(group) = routes.get(route).and_then(|e| e.get(endpoint)) else {
            return 0;
        };
        group
            .conns
            .values()
            .filter(|c| !c.is_requested())
            .take(n)
            .filter(|c| c.request(at, reason))
            .count()
    }
}

/// A registered connection; unregisters when dropped (with the relay's account).
pub struct LiveRelay {
    /// Also where the registry keeps it (the registry, route, endpoint, start order).
    control: Arc<RelayControl>,
}

impl LiveRelay {
    /// The handle the relay's drain signal carries.
    pub fn control(&self) -> Arc<RelayControl> {
        Arc::clone(&self.control)
    }
}

impl Drop for LiveRelay {
    fn drop(&mut self) {
        let c = &self.control;
        if let Some(registry) = c.registry.upgrade() {
            registry.unregister(&c.route, &c.endpoint, c.seq);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The oldest connections not yet asked are asked first; a dropped one leaves the
    /// registry, and an empty endpoint disappears.
    #[test]
    fn oldest_first_and_unregistered_on_drop() {
        let live = Arc::new(LiveRelays::default());
        let route = RouteId("r".into());
        let ep: Arc<str> = "10.0.0.1:80".into();
        let conns: Vec<LiveRelay> = (0..5)
            .map(|_| live.register(&route, Arc::clone(&ep), Duration::from_secs(1), true))
            .collect();
        let now = Instant::now();
        assert_eq!(
            live.close_oldest(&route, &ep, 2, now, CloseReason::Rebalance),
            2
        );
        let asked: Vec<bool> = conns.iter().map(|c| c.control.is_requested()).collect();
        assert_eq!(asked, [true, true, false, false, false]);
        assert_eq!(live.endpoints(&route)[0].open, 3);
        assert_eq!(
            live.close_oldest(&route, &ep, 1, now, CloseReason::Rebalance),
            1
        );
        assert!(conns[2].control.is_requested() && !conns[3].control.is_requested());
        drop(conns);
        assert!(live.routes().is_empty());
    }

    /// Marking an endpoint asks each of its connections, and a connection registered
    /// later on the marked endpoint is asked at once.
    #[test]
    fn a_mark_reaches_every_connection_and_later_ones() {
        let live = Arc::new(LiveRelays::default());
        let route = RouteId("r".into());
        let a: Arc<str> = "a:1".into();
        let b: Arc<str> = "b:1".into();
        let on_a = live.register(&route, Arc::clone(&a), Duration::from_secs(1), true);
        let on_b = live.register(&route, Arc::clone(&b), Duration::from_secs(1), true);
        let mark = Mark {
            reason: CloseReason::EndpointRemoved,
            from: Instant::now(),
            budget: Duration::from_secs(1),
            jitter: true,
        };
        assert_eq!(live.mark(&route, &a, mark, Instant::now()), 1);
        assert!(on_a.control.is_requested());
        assert!(!on_b.control.is_requested());
        let later = live.register(&route, Arc::clone(&a), Duration::from_secs(1), true);
        assert!(later.control.is_requested());
    }

    /// What the soak test found: an endpoint removed and added back kept its mark, so the
    /// connections it got after coming back were closed too.
    #[test]
    fn an_endpoint_back_keeps_its_new_connections_and_late_ones_close_inside_the_budget() {
        let live = Arc::new(LiveRelays::default());
        let route = RouteId("r".into());
        let a: Arc<str> = "a:1".into();
        let budget = Duration::from_secs(10);
        let before = live.register(&route, Arc::clone(&a), budget, true);
        let removed_at = Instant::now();
        let mark = Mark {
            reason: CloseReason::EndpointRemoved,
            from: removed_at,
            budget,
            jitter: true,
        };
        assert_eq!(live.mark(&route, &a, mark, removed_at), 1);

        // Routed under the older table, registered long after the removal: its close is
        // still inside the budget counted from the removal.
        let late_now = removed_at + Duration::from_secs(9);
        let late = Arc::new(RelayControl::new(
            std::sync::Weak::new(),
            (route.clone(), Arc::clone(&a), 99),
            budget,
            true,
            u16::MAX,
        ));
        let group = Group {
            conns: BTreeMap::new(),
            mark: Some(mark),
        };
        assert!(group.close_by_mark(&late, mark, late_now));
        let waker = futures_util::task::noop_waker();
        let (at, _) = match late.poll_request(&mut std::task::Context::from_waker(&waker)) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => panic!("a close was asked"),
        };
        // (Moments are kept in whole milliseconds, rounded up.)
        assert!(
            at <= removed_at + budget + Duration::from_millis(1),
            "closes past the budget"
        );

        live.unmark(&route, &a);
        let after = live.register(&route, Arc::clone(&a), budget, true);
        assert!(
            !after.control.is_requested(),
            "a connection to the endpoint back stays"
        );
        assert!(
            before.control.is_requested(),
            "a close asked is not cancelled"
        );
    }
}
