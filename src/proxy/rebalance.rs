//! Rebalancing after a scale-out (issue 21, item 6), for routes with `rebalance`: an
//! endpoint holding more than `maxSkew` times its fair share of the route's connections
//! (the connections on the route's ready endpoints over their number) has its oldest
//! connections closed with 1012 (service restart), at most `perSecond` per second each,
//! until it holds at most `maxSkew` times its share; their clients reconnect, and the
//! balancer sends them to a less loaded endpoint. An endpoint is never over by less than
//! one connection above its share: with a handful of connections (1 and 0 on two
//! endpoints) the skew says nothing, and closing would only move the one around.
//!
//! A periodic task (`run`, started by the `Server`) reads the registry of live relays
//! (`drain::LiveRelays`); it touches no relay but those it closes, through their control
//! handle. The fair share counts every live connection on the route's ready endpoints
//! (one asked to close comes back as a reconnection); what an endpoint may still lose
//! counts only those not yet asked to close.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::drain::{CloseReason, LiveRelays};
use crate::model::{EndpointState, RouteId};
use crate::table::{Publisher, RouteTable};
use crate::telemetry::DrainMetrics;

/// How often the skew is measured and closes are asked.
pub const TICK: Duration = Duration::from_millis(100);

/// Rebalances every `TICK` until the runtime ends.
pub async fn run(publisher: Arc<Publisher>, live: Arc<LiveRelays>, metrics: DrainMetrics) {
    let mut rebalancer = Rebalancer::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        rebalancer.step(&publisher.current(), &live, &metrics, Instant::now());
    }
}

/// What the rebalancer keeps between ticks.
#[derive(Default)]
pub struct Rebalancer {
    /// The table generation `routes` was taken from, and the indices of its routes with
    /// `rebalance` (so a tick over 10,000 routes without it costs a compare).
    generation: Option<u64>,
    routes: Vec<usize>,
    /// Closes each over-loaded endpoint may still make (refilled at `perSecond`, at most
    /// one second's worth); forgotten once the endpoint is back within its share.
    budgets: HashMap<(RouteId, Arc<str>), f64>,
    /// Routes with a skew series, to remove it when they stop rebalancing.
    measured: HashSet<RouteId>,
    last: Option<Instant>,
}

impl Rebalancer {
    /// One tick at `now`: measures each rebalanced route's skew and asks the oldest
    /// connections of over-loaded endpoints to close. Returns how many were asked.
    pub fn step(
        &mut self,
        table: &RouteTable,
        live: &LiveRelays,
        metrics: &DrainMetrics,
        now: Instant,
    ) -> usize {
        let elapsed = self
            .last
            .map_or(TICK, |last| now.saturating_duration_since(last))
            .min(Duration::from_secs(1));
        self.last = Some(now);
        if self.generation != Some(table.generation()) {
            self.generation = Some(table.generation());
            self.routes = (table.routes().iter().enumerate())
                .filter(|(_, r)| r.route.rebalance.is_some())
                .map(|(i, _)| i)
                .collect();
            let keep: HashSet<&RouteId> = self
                .routes
                .iter()
                .map(|&i| &table.routes()[i].route.id)
                .collect();
            for gone in self.measured.iter().filter(|id| !keep.contains(id)) {
                metrics.remove_skew(&gone.0);
            }
            self.measured.retain(|id| keep.contains(id));
            self.budgets.retain(|(id, _), _| keep.contains(id));
        }
        let mut asked = 0;
        for &i in &self.routes {
            let route = &table.routes()[i].route;
            let Some(rebalance) = route.rebalance else {
                continue;
            };
            let ready: Vec<String> = route
                .endpoints
                .iter()
                .filter(|e| e.state == EndpointState::Ready)
                .map(|e| e.authority())
                .collect();
            if ready.is_empty() {
                continue;
            }
            let views = live.endpoints(&route.id);
            // (live, not yet asked to close) per ready endpoint.
            let on = |authority: &str| {
                views
                    .iter()
                    .find(|v| &*v.endpoint == authority && v.mark.is_none())
                    .map_or((0, 0), |v| (v.live, v.open))
            };
            let counts: Vec<(&String, (usize, usize))> = ready.iter().map(|a| (a, on(a))).collect();
            let total: usize = counts.iter().map(|(_, (live, _))| live).sum();
            let fair = total as f64 / ready.len() as f64;
            let most = counts.iter().map(|(_, (live, _))| *live).max().unwrap_or(0);
            let skew = if total == 0 { 0.0 } else { most as f64 / fair };
            metrics.set_skew(&route.id.0, skew);
            self.measured.insert(route.id.clone());
            let allowed = (rebalance.max_skew * fair).max(fair + 1.0);
            for (authority, (_, n)) in counts {
                let key = (route.id.clone(), Arc::<str>::from(authority.as_str()));
                if (n as f64) <= allowed {
                    self.budgets.remove(&key);
                    continue;
                }
                let per_second = f64::from(rebalance.per_second);
                let budget = self.budgets.entry(key).or_insert(0.0);
                *budget = (*budget + per_second * elapsed.as_secs_f64()).min(per_second.max(1.0));
                let excess = n - allowed.floor() as usize;
                let want = (budget.floor() as usize).min(excess);
                if want == 0 {
                    continue;
                }
                let closed =
                    live.close_oldest(&route.id, authority, want, now, CloseReason::Rebalance);
                *budget -= closed as f64;
                if closed > 0 {
                    metrics.scheduled(&route.id.0, CloseReason::Rebalance.label(), closed as u64);
                    tracing::debug!(
                        route = %route.id,
                        endpoint = %authority,
                        connections = n,
                        fair_share = fair,
                        closed,
                        "rebalancing: closing the oldest connections of an over-loaded endpoint (1012)"
                    );
                }
                asked += closed;
            }
        }
        asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Rebalance};
    use crate::proxy::drain::LiveRelay;
    use crate::telemetry::Metrics;

    /// A table with one route `r` on `endpoints`, rebalanced at `per_second`.
    fn table(endpoints: &[&str], per_second: u32) -> Arc<RouteTable> {
        let spec = crate::api::WsRouteSpec::with_static_backends(
            "/r",
            "/",
            &["10.0.0.1:80".parse().unwrap()],
        );
        let mut route = crate::model::route_from_spec(
            RouteId("r".into()),
            0,
            &spec,
            crate::model::SpecBackends::Static,
        )
        .unwrap();
        route.endpoints = endpoints
            .iter()
            .map(|e| {
                let (host, port) = e.split_once(':').unwrap();
                Endpoint::new(host, port.parse().unwrap())
            })
            .collect();
        route.rebalance = Some(Rebalance {
            max_skew: 1.5,
            per_second,
        });
        let publisher = Publisher::new(Arc::new(Metrics::new()));
        assert!(publisher.publish(&[route]).problems.is_empty());
        publisher.current()
    }

    fn open(live: &Arc<LiveRelays>, endpoint: &str, n: usize) -> Vec<LiveRelay> {
        (0..n)
            .map(|_| {
                live.register(
                    &RouteId("r".into()),
                    endpoint.into(),
                    Duration::from_secs(1),
                    true,
                )
            })
            .collect()
    }

    /// Two endpoints with 100 connections each, two empty ones added: each loaded one
    /// loses 25 (down to 1.5 × its share of 50), at 10 per second, and nothing more.
    #[test]
    fn over_loaded_endpoints_lose_their_excess_at_the_rate_and_no_more() {
        let live = Arc::new(LiveRelays::default());
        let _a = open(&live, "10.0.0.1:80", 100);
        let _b = open(&live, "10.0.0.2:80", 100);
        let metrics = Metrics::new();
        let drain = metrics.drain();
        let balanced = table(&["10.0.0.1:80", "10.0.0.2:80"], 10);
        let mut rebalancer = Rebalancer::default();
        let t0 = Instant::now();
        assert_eq!(rebalancer.step(&balanced, &live, &drain, t0), 0);
        assert!(metrics
            .encode()
            .contains("wsgate_route_skew{route=\"r\"} 1.0"));
        let four = table(
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"],
            10,
        );
        let mut asked = Vec::new();
        for tick in 1..=40 {
            asked.push(rebalancer.step(&four, &live, &drain, t0 + TICK * tick));
        }
        // One close per endpoint per tick (10 per second), 25 ticks, then nothing.
        assert!(asked[..25].iter().all(|&n| n == 2), "{asked:?}");
        assert!(asked[25..].iter().all(|&n| n == 0), "{asked:?}");
        let views = live.endpoints(&RouteId("r".into()));
        assert!(views.iter().all(|v| v.open == 75 && v.live == 100));
        assert!(metrics
            .encode()
            .contains("wsgate_scheduled_closes_total{route=\"r\",reason=\"rebalance\"} 50"));
    }

    /// A handful of connections, at most one over the share, is left alone; a whole
    /// connection more is not.
    #[test]
    fn one_connection_over_the_share_is_no_skew() {
        let live = Arc::new(LiveRelays::default());
        let metrics = Metrics::new().drain();
        let two = table(&["10.0.0.1:80", "10.0.0.2:80"], 1000);
        let mut rebalancer = Rebalancer::default();
        let t0 = Instant::now();
        let mut a = open(&live, "10.0.0.1:80", 2);
        // 2 and 0: the share is 1, one over it.
        assert_eq!(rebalancer.step(&two, &live, &metrics, t0), 0);
        a.extend(open(&live, "10.0.0.1:80", 1));
        // 3 and 0: share 1.5, allowed 2.5: one closes.
        assert_eq!(rebalancer.step(&two, &live, &metrics, t0 + TICK), 1);
    }

    /// The oldest connections go first; a route without `rebalance` is never touched, and
    /// its skew series disappears once the route stops rebalancing.
    #[test]
    fn oldest_go_first_and_a_route_that_stops_rebalancing_loses_its_series() {
        let live = Arc::new(LiveRelays::default());
        let a = open(&live, "10.0.0.1:80", 10);
        let metrics = Metrics::new();
        let drain = metrics.drain();
        let mut rebalancer = Rebalancer::default();
        let two = table(&["10.0.0.1:80", "10.0.0.2:80"], 1000);
        let t0 = Instant::now();
        // Fair share 5, allowed 7: three close, the three oldest.
        assert_eq!(
            rebalancer.step(&two, &live, &drain, t0 + Duration::from_secs(1)),
            3
        );
        let asked: Vec<bool> = a.iter().map(|c| c.control().is_requested()).collect();
        assert_eq!(
            asked,
            [true, true, true, false, false, false, false, false, false, false]
        );
        assert!(metrics.encode().contains("wsgate_route_skew{route=\"r\"}"));
        // The same route without `rebalance`, in a later generation.
        let publisher = Publisher::new(Arc::new(Metrics::new()));
        let mut route = two.routes()[0].route.as_ref().clone();
        route.rebalance = None;
        publisher.publish(&[route.clone()]);
        publisher.publish(&[route]);
        assert_eq!(
            rebalancer.step(
                &publisher.current(),
                &live,
                &drain,
                t0 + Duration::from_secs(2)
            ),
            0
        );
        assert!(!metrics.encode().contains("wsgate_route_skew{"));
    }
}
