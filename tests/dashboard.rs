//! The Grafana dashboard the chart ships (`charts/wsgate/dashboards/wsgate.json`) queries
//! only metrics wsgate exports: a renamed or removed family fails here, not on a user's
//! screen.

use std::collections::BTreeSet;

use wsgate::source::kube::{KubeMetrics, PatchOutcome, Resource};
use wsgate::telemetry::{
    CloseSide, CloseTo, FailureReason, Metrics, RefusalReason, MESSAGE_SIZE_BOUNDS,
};

const DASHBOARD: &str = include_str!("../charts/wsgate/dashboards/wsgate.json");

/// Every sample name the process exports once each family has a series: a family with
/// per-route labels prints nothing (not even its `# TYPE` line) until a series exists, so
/// each is used through the public API first, as the data plane and the controller use it.
fn exported() -> BTreeSet<String> {
    let kube = KubeMetrics::default();
    let metrics = Metrics::with_extra(|r| kube.register(r));
    let route = metrics.route("ns/probe");
    route.connections_total().inc();
    route.connections_active().inc();
    route.http_requests_total().inc();
    route.relayed().bytes_up.inc_by(10);
    route.relayed().messages_up.inc();
    route.connect_seconds().observe(0.001);
    route.failure(FailureReason::NoEndpoint);
    route.refusal(RefusalReason::Origin);
    route.close_sent(CloseTo::Client, 1001);
    route.close_seen(CloseSide::Client, 1000);
    route.keepalive_pings(CloseTo::Client, 1);
    route.keepalive_timeout(CloseTo::Backend);
    let mut buckets = [0u32; MESSAGE_SIZE_BOUNDS.len() + 1];
    buckets[0] = 1;
    route.message_sizes()[0].add(&buckets, 10);
    route.connection_seconds().observe(1.0);
    metrics.unrouted_failure(FailureReason::NoRoute);
    metrics.drain().scheduled("ns/probe", "endpoint_removed", 1);
    metrics.drain().set_skew("ns/probe", 1.0);
    for resource in [Resource::WsRoute, Resource::EndpointSlice] {
        kube.watch_event(resource);
        kube.watch_error(resource);
        kube.relist(resource);
    }
    kube.status_patch(PatchOutcome::Written);
    let text = metrics.encode();
    let names: BTreeSet<String> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    // Each registered family printed samples: one left unused here would look unexported.
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split_whitespace().next().unwrap_or_default();
        assert!(
            names.iter().any(|n| n.starts_with(name)),
            "{name} has no sample: use it above"
        );
    }
    names
}

/// The `wsgate_…` names in every query of the dashboard (and its variables).
fn queried(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has queries");
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("wsgate_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "wsgate-overview");
    let exported = exported();
    let queried = queried(&dashboard);
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics wsgate does not export: {unknown:?}\nexported: {exported:?}"
    );
    // The dashboard covers what issue 21 asks for.
    for family in [
        "wsgate_connections_active",
        "wsgate_refusals_total",
        "wsgate_closes_sent_total",
        "wsgate_messages_total",
        "wsgate_bytes_total",
        "wsgate_closes_total",
        "wsgate_message_size_bytes_bucket",
        "wsgate_connection_duration_seconds_bucket",
        "wsgate_keepalive_pings_total",
        "wsgate_keepalive_timeouts_total",
        "wsgate_scheduled_closes_total",
        "wsgate_route_skew",
        "wsgate_route_tables_alive",
    ] {
        assert!(queried.contains(family), "no panel shows {family}");
    }
}
