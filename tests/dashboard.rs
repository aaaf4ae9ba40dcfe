//! The Grafana dashboard the chart ships (`charts/wsgate/dashboards/wsgate.json`) queries
//! only metrics wsgate exports: a renamed or removed family fails here, not on a user's
//! screen.

use std::collections::BTreeSet;

use wsgate::source::kube::KubeMetrics;
use wsgate::telemetry::Metrics;

const DASHBOARD: &str = include_str!("../charts/wsgate/dashboards/wsgate.json");

/// Every sample name the process can export: from each family's `# TYPE` line, with the
/// suffixes its samples carry.
fn exported() -> BTreeSet<String> {
    let kube = KubeMetrics::default();
    let metrics = Metrics::with_extra(|r| kube.register(r));
    let mut names = BTreeSet::new();
    for line in metrics.encode().lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
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
    ] {
        assert!(queried.contains(family), "no panel shows {family}");
    }
}
