//! The endpoint planner: after every table publish, the live connections whose endpoint
//! left its route, or is terminating, are asked to close gently.
//!
//! - An endpoint removed from a route (the route is still there, the endpoint is not):
//!   its connections get Close 1001 "endpoint removed", each at its own moment inside the
//!   route's drain budget (at once without jitter).
//! - An endpoint terminating (EndpointSlice `terminating`): its connections are kept for
//!   one budget (the backend finishes what it can), then closed the same way, spread over
//!   the next budget.
//!
//! A route that left the table leaves its connections alone (a rename or a broken reload
//! must not cut sockets). A connection asked to close keeps the earliest moment asked of
//! it; an endpoint that comes back does not cancel closes already asked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::CloseReason;
use super::live::{LiveRelays, Mark};
use crate::model::{EndpointState, Route};
use crate::table::{Publisher, RouteTable};
use crate::telemetry::DrainMetrics;

/// The process-wide drain (`--drain-timeout`, `--drain-jitter`), for routes without their
/// own `drain` block (and a block without `budget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainDefaults {
    pub budget: Duration,
    pub jitter: bool,
}

impl Default for DrainDefaults {
    fn default() -> Self {
        DrainDefaults {
            budget: Duration::from_secs(30),
            jitter: true,
        }
    }
}

impl DrainDefaults {
    /// The budget and jitter `route` drains by.
    pub fn for_route(&self, route: &Route) -> (Duration, bool) {
        match route.drain {
            None => (self.budget, self.jitter),
            Some(p) => (p.budget.unwrap_or(self.budget), p.jitter),
        }
    }

    /// The longest budget of any route in `table` (and of the default): how long wsgate's
    /// shutdown may take.
    pub fn longest(&self, table: &RouteTable) -> Duration {
        table
            .routes()
            .iter()
            .map(|r| self.for_route(&r.route).0)
            .fold(self.budget, Duration::max)
    }
}

/// Plans once per published generation until the publisher goes away.
pub async fn run(
    publisher: Arc<Publisher>,
    live: Arc<LiveRelays>,
    defaults: DrainDefaults,
    metrics: DrainMetrics,
) {
    let mut generations = publisher.subscribe();
    loop {
        plan(
            &publisher.current(),
            &live,
            defaults,
            &metrics,
            Instant::now(),
        );
        if generations.changed().await.is_err() {
            return;
        }
    }
}

/// Marks every endpoint of a live route that `table` removed or shows terminating; returns
/// how many connections were asked to close.
pub fn plan(
    table: &RouteTable,
    live: &LiveRelays,
    defaults: DrainDefaults,
    metrics: &DrainMetrics,
    now: Instant,
) -> usize {
    let live_routes = live.routes();
    if live_routes.is_empty() {
        return 0;
    }
    let routes: HashMap<_, _> = table
        .routes()
        .iter()
        .map(|r| (&r.route.id, &r.route))
        .collect();
    let mut asked = 0;
    for id in live_routes {
        let Some(route) = routes.get(&id) else {
            continue;
        };
        let (budget, jitter) = defaults.for_route(route);
        for view in live.endpoints(&id) {
            let state = route
                .endpoints
                .iter()
                .find(|e| e.authority() == *view.endpoint)
                .map(|e| e.state);
            let mark = match (state, view.mark) {
                (None, Some(CloseReason::EndpointRemoved)) => continue,
                (None, _) => Mark {
                    reason: CloseReason::EndpointRemoved,
                    from: now,
                    budget,
                    jitter,
                },
                (Some(EndpointState::Terminating), Some(CloseReason::EndpointTerminating)) => {
                    continue
                }
                (Some(EndpointState::Terminating), _) => Mark {
                    reason: CloseReason::EndpointTerminating,
                    from: now + budget,
                    budget,
                    jitter,
                },
                (Some(_), Some(_)) => {
                    // The endpoint is back: connections it gets from now on stay (those
                    // already asked to close still close; the soak test found new ones
                    // being closed by the old mark).
                    live.unmark(&id, &view.endpoint);
                    continue;
                }
                (Some(_), None) => continue,
            };
            let n = live.mark(&id, &view.endpoint, mark, now);
            if n > 0 {
                metrics.scheduled(&id.0, mark.reason.label(), n as u64);
                tracing::info!(
                    route = %id,
                    endpoint = %view.endpoint,
                    connections = n,
                    reason = mark.reason.label(),
                    budget_ms = budget.as_millis() as u64,
                    jitter,
                    "closing the endpoint's connections gently"
                );
            }
            asked += n;
        }
    }
    asked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, RouteId};
    use crate::telemetry::Metrics;

    fn publish(publisher: &Publisher, id: &str, endpoints: Vec<Endpoint>) -> Arc<RouteTable> {
        let spec = crate::api::WsRouteSpec::with_static_backends(
            &format!("/{id}"),
            "/",
            &["10.0.0.1:80".parse().unwrap()],
        );
        let mut route = crate::model::route_from_spec(
            RouteId(id.into()),
            0,
            &spec,
            crate::model::SpecBackends::Static,
        )
        .unwrap();
        route.endpoints = endpoints;
        assert!(publisher.publish(&[route]).problems.is_empty());
        publisher.current()
    }

    /// A removed endpoint's connections are asked once, a terminating one's from one
    /// budget on, a route that left the table keeps its connections.
    #[test]
    fn removed_and_terminating_endpoints_are_marked_once_and_a_gone_route_is_left_alone() {
        let publisher = Publisher::new(Arc::new(Metrics::new()));
        let metrics = Metrics::new().drain();
        let defaults = DrainDefaults {
            budget: Duration::from_secs(10),
            jitter: false,
        };
        let live = Arc::new(LiveRelays::default());
        let r = RouteId("r".into());
        let on = |ep: &str| live.register(&r, ep.into(), Duration::from_secs(10), false);
        let (a, b, c) = (on("10.0.0.1:80"), on("10.0.0.2:80"), on("10.0.0.3:80"));
        let now = Instant::now();
        // The route is gone from the table: nothing is touched.
        let other = publish(&publisher, "other", vec![Endpoint::new("10.0.0.1", 80)]);
        assert_eq!(plan(&other, &live, defaults, &metrics, now), 0);
        // b removed, c terminating.
        let table = publish(
            &publisher,
            "r",
            vec![
                Endpoint::new("10.0.0.1", 80),
                Endpoint::new("10.0.0.3", 80).with_state(EndpointState::Terminating),
            ],
        );
        assert_eq!(plan(&table, &live, defaults, &metrics, now), 2);
        assert!(!a.control().is_requested());
        assert!(b.control().is_requested() && c.control().is_requested());
        let seen = |l: &crate::proxy::drain::LiveRelay| {
            let waker = std::task::Waker::noop();
            match l
                .control()
                .poll_request(&mut std::task::Context::from_waker(waker))
            {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => panic!("no request"),
            }
        };
        let (at, reason) = seen(&b);
        assert_eq!(reason, CloseReason::EndpointRemoved);
        assert!(at >= now && at <= now + Duration::from_millis(2));
        let (at, reason) = seen(&c);
        assert_eq!(reason, CloseReason::EndpointTerminating);
        assert!(at >= now + Duration::from_secs(10));
        // Planned once: the next generation asks nothing more.
        assert_eq!(plan(&table, &live, defaults, &metrics, now), 0);
    }
}
