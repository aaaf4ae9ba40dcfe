//! Scenario 6 of the benchmark: the control plane with 10,000 routes.
//!
//! - compile: 10,000 `WsRoute`s (100 hosts × 100 paths, each on its own Service) through
//!   the cluster translation (EndpointSlices → endpoints, spec → validated model) and
//!   `table::compile`, and the memory the live table takes;
//! - propagation: one EndpointSlice gains an endpoint; the time until a lookup in the live
//!   table sees it: the controller's whole rebuild (translate every route, compile, swap),
//!   without its 75 ms debounce window.
//!
//! `cargo bench --bench control_plane` prints one JSON line per measurement (medians of 5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use wsgate::api::WsRoute;
use wsgate::source::kube::{translate, Backends};
use wsgate::table::Publisher;
use wsgate::telemetry::Metrics;

const ROUNDS: usize = 5;

/// 100 hosts × 100 paths; `CONTROL_PLANE_SMOKE=1` (CI) runs 10 × 10 so the bench is
/// exercised without its cost.
fn shape() -> (usize, usize) {
    if std::env::var_os("CONTROL_PLANE_SMOKE").is_some() {
        (10, 10)
    } else {
        (100, 100)
    }
}

fn route(i: usize, paths: usize) -> Arc<WsRoute> {
    let (h, p) = (i / paths, i % paths);
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute",
            "metadata": {"namespace": "apps", "name": format!("r{i}"), "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "upstreamHost": format!("host{h}.example.com"),
                "upstreamPathTemplate": format!("/svc{p}/{{room}}/{{rest}}"),
                "downstreamPathTemplate": "/{room}/{rest}",
                "serviceName": format!("s{i}"), "servicePort": 80,
                "loadBalancerOptions": {"type": "RoundRobin"}
            }
        }))
        .expect("route"),
    )
}

fn service(i: usize) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": "apps", "name": format!("s{i}")},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .expect("service"),
    )
}

fn slice(i: usize, pods: usize) -> Arc<EndpointSlice> {
    let endpoints: Vec<_> = (0..pods)
        .map(|p| {
            json!({"addresses": [format!("10.{}.{}.{}", i / 250, i % 250, p + 1)],
                        "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": "apps", "name": format!("s{i}-abc"),
                         "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .expect("slice"),
    )
}

/// Resident memory of this process, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let (hosts, paths) = shape();
    let n = hosts * paths;
    let routes: Vec<_> = (0..n).map(|i| route(i, paths)).collect();
    let services: Vec<_> = (0..n).map(service).collect();
    let mut slices: Vec<_> = (0..n).map(|i| slice(i, 2)).collect();

    let metrics = Arc::new(Metrics::new());
    let publisher = Publisher::new(Arc::clone(&metrics));
    let phases = std::cell::RefCell::new([Duration::ZERO; 3]);
    let rebuild = |slices: &[Arc<EndpointSlice>]| {
        let t0 = Instant::now();
        let backends = Backends::new(services.iter().cloned(), slices.iter().cloned());
        let t1 = Instant::now();
        let t = translate(routes.iter().cloned(), &backends);
        let t2 = Instant::now();
        let published = publisher.publish(&t.routes);
        let mut p = phases.borrow_mut();
        p[0] += t1 - t0;
        p[1] += t2 - t1;
        p[2] += t2.elapsed();
        assert!(
            published.problems.is_empty(),
            "{:?}",
            published.problems.first()
        );
        t.routes.len()
    };

    // Compile: translation + compile + swap of the whole set, from an empty table.
    let rss_before = rss_bytes();
    let mut compile = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        assert_eq!(rebuild(&slices), n);
        compile.push(started.elapsed());
    }
    let rss_after = rss_bytes();
    let p = *phases.borrow();
    eprintln!(
        "phases over {ROUNDS} rebuilds: backends {:?}, translate {:?}, compile+swap {:?}",
        p[0], p[1], p[2]
    );
    println!(
        "{}",
        json!({"scenario": "control_plane_compile", "routes": n,
               "median_ms": median(compile).as_secs_f64() * 1000.0,
               "rss_growth_mib": (rss_after.saturating_sub(rss_before)) as f64 / (1 << 20) as f64})
    );

    // Propagation: one slice gains a pod; time until a lookup finds a route with 3 endpoints.
    let target = n / 2;
    let (host, path) = (
        format!("host{}.example.com", target / paths),
        format!("/svc{}/lobby/x", target % paths),
    );
    let mut propagate = Vec::new();
    for round in 0..ROUNDS {
        let pods = 3 + round;
        slices[target] = slice(target, pods);
        let started = Instant::now();
        rebuild(&slices);
        let table = publisher.current();
        let m = table
            .find(Some(&host), &path, None, &http::Method::GET)
            .expect("route found");
        assert_eq!(m.route.balancer.ready().len(), pods);
        propagate.push(started.elapsed());
    }
    let lookup_started = Instant::now();
    let table = publisher.current();
    let mut found = 0;
    for i in 0..100_000usize {
        let j = (i * 7919) % n;
        let host = format!("host{}.example.com", j / paths);
        let path = format!("/svc{}/r/x", j % paths);
        found += table
            .find(Some(&host), &path, None, &http::Method::GET)
            .is_some() as usize;
    }
    let lookup = lookup_started.elapsed();
    assert_eq!(found, 100_000);
    println!(
        "{}",
        json!({"scenario": "control_plane_endpoint_change", "routes": n,
               "median_ms": median(propagate).as_secs_f64() * 1000.0,
               "note": "translate + compile + swap, excluding the controller's 75 ms debounce"})
    );
    println!(
        "{}",
        json!({"scenario": "route_lookup", "routes": n,
               "ns_per_lookup_incl_key_formatting": lookup.as_nanos() as f64 / 100_000.0})
    );
}
