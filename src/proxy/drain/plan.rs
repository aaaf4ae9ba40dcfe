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
                (Some(EndpointState::Terminating), None) => Mark {
                    reason: CloseReason::EndpointTerminating,
                    from: now + budget,
                    budget,
                    jitter,
                },
                _ => continue,
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
