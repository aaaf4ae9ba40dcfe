//! The families of gentle drains and rebalancing (issue 21, items 5 and 6). Per-route
//! series are created the first time a route uses them, never at zero for every route.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    route: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// `wsgate_scheduled_closes_total{route,reason}` and `wsgate_route_skew{route}`.
#[derive(Clone, Default, Debug)]
pub struct DrainMetrics {
    scheduled: Family<ReasonLabel, Counter>,
    skew: Family<RouteLabel, Gauge<f64, AtomicU64>>,
}

impl DrainMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "scheduled_closes",
            "Connections wsgate asked to close on its own schedule, by reason (endpoint_removed, endpoint_terminating, rebalance)",
            self.scheduled.clone(),
        );
        registry.register(
            "route_skew",
            "Connections on a route's most loaded ready endpoint over its fair share (routes with rebalance)",
            self.skew.clone(),
        );
    }

    /// `n` connections of `route` asked to close for `reason` (off the relay path: the
    /// planner and the rebalancer, a few times a second at most).
    pub fn scheduled(&self, route: &str, reason: &'static str, n: u64) {
        self.scheduled
            .get_or_create(&ReasonLabel {
                route: route.to_string(),
                reason,
            })
            .inc_by(n);
    }

    /// The skew of `route` now.
    pub fn set_skew(&self, route: &str, skew: f64) {
        self.skew
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .set(skew);
    }

    /// Forgets the skew of a route that no longer rebalances.
    pub fn remove_skew(&self, route: &str) {
        self.skew.remove(&RouteLabel {
            route: route.to_string(),
        });
    }
}
