//! Load balancing through the gateway on loopback: LeastConnection with held WebSockets
//! and a backend added mid-way, sticky cookies honoured by a second replica with the same
//! key, ConsistentHash agreeing across replicas, and the CRD's rules for the options.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::header;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use support::{connect_with, eventually, route, spec, within, Echo, Gateway, Ws};
use wsgate::api::LoadBalancerOptions;
use wsgate::app::{Server, ServerOptions};
use wsgate::balance::StickyKey;
use wsgate::model::Route;
use wsgate::table::Publisher;
use wsgate::telemetry::Metrics;

/// Opens a WebSocket through the gateway and returns it with the echo backend's name.
async fn ws_to(gw: SocketAddr, headers: &[(&str, &str)]) -> (Ws, String) {
    let mut ws = connect_with(&format!("ws://{gw}/echo?hello=1"), headers).await;
    let hello = match within("echo hello", ws.next()).await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected the echo's hello, got {other:?}"),
    };
    let v: Value = serde_json::from_str(&hello).unwrap();
    (ws, v["echo"].as_str().unwrap().to_string())
}

fn options(kind: &str) -> LoadBalancerOptions {
    LoadBalancerOptions {
        kind: Some(kind.into()),
        ..Default::default()
    }
}

fn echo_route(backends: &[SocketAddr], lb: LoadBalancerOptions) -> Route {
    let mut s = spec("/{everything}", "/{everything}", backends);
    s.load_balancer_options = Some(lb);
    route("lb", 0, &s)
}

fn loads(gw: &Gateway) -> Vec<usize> {
    gw.publisher.current().routes()[0]
        .balancer
        .ready()
        .iter()
        .map(|b| b.load.current())
        .collect()
}

/// LeastConnection counts held WebSockets; after a backend joins (new table), new sockets
/// go to it until it has caught up, and a closed socket frees its backend's count.
#[tokio::test]
async fn least_connection_fills_a_backend_added_midway() {
    let (a, b, c) = (
        Echo::start("a").await,
        Echo::start("b").await,
        Echo::start("c").await,
    );
    let lc = || options("LeastConnection");
    let gw = Gateway::start(&[echo_route(&[a.addr, b.addr], lc())]).await;
    let addr = gw.server.listen_addr;

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(ws_to(addr, &[]).await);
    }
    let mut names: Vec<&str> = held.iter().map(|(_, n)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);

    let published = gw
        .publisher
        .publish(&[echo_route(&[a.addr, b.addr, c.addr], lc())]);
    assert!(published.problems.is_empty());
    assert_eq!(loads(&gw), [2, 2, 0], "counts survive the new table");

    for _ in 0..2 {
        let (ws, name) = ws_to(addr, &[]).await;
        assert_eq!(name, "c", "the new backend takes new sockets first");
        held.push((ws, name));
    }
    assert_eq!(loads(&gw), [2, 2, 2]);

    // Close one socket on `a`: the next one goes there.
    let i = held.iter().position(|(_, n)| n == "a").unwrap();
    let (mut ws, _) = held.remove(i);
    within("close", ws.close(None)).await.unwrap();
    eventually("a's count drops", || {
        (loads(&gw) == [1, 2, 2]).then_some(())
    })
    .await;
    let (_ws, name) = ws_to(addr, &[]).await;
    assert_eq!(name, "a");
}

/// A gateway replica with a given sticky key (what `--sticky-key-file` sets).
async fn replica(routes: &[Route], key: &StickyKey) -> (Server, Arc<Publisher>) {
    let metrics = Arc::new(Metrics::new());
    let publisher = Arc::new(Publisher::with_sticky_key(
        Arc::clone(&metrics),
        key.clone(),
    ));
    assert!(publisher.publish(routes).problems.is_empty());
    let server = Server::start(
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            relay_offload: Default::default(),
            listening_file: None,
            max_connections: None,
            client_address: Default::default(),
            drain_jitter: false,
            tls_listen: None,
            metrics: Default::default(),
            access_log: Default::default(),
        },
        Arc::clone(&publisher),
        metrics,
    )
    .await
    .unwrap();
    server.readiness.set_loaded();
    (server, publisher)
}

/// GET through the gateway: (backend name, Set-Cookie).
async fn get(gw: SocketAddr, headers: &[(&str, &str)]) -> (String, Option<String>) {
    within("http get", async {
        let stream = TcpStream::connect(gw).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::get("/echo").header(header::HOST, gw.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(
                req.body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let name = resp.headers()["x-echo-name"].to_str().unwrap().to_string();
        let cookie = resp
            .headers()
            .get(header::SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_string());
        let _ = resp.into_body().collect().await;
        (name, cookie)
    })
    .await
}

fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// A sticky cookie set by one replica keeps HTTP requests and WebSockets on the same
/// backend through another replica with the same key; once that backend is gone, the
/// next request gets a new backend and a new cookie.
#[tokio::test]
async fn sticky_cookie_holds_across_replicas_and_falls_back_when_the_backend_leaves() {
    let echoes = [
        Echo::start("a").await,
        Echo::start("b").await,
        Echo::start("c").await,
    ];
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let sticky = LoadBalancerOptions {
        kind: Some("CookieStickySessions".into()),
        key: Some("affinity".into()),
        expiry: Some(60_000),
        ..Default::default()
    };
    let key = StickyKey::new(b"a key both replicas read from a Secret").unwrap();
    let routes = [echo_route(&addrs, sticky.clone())];
    let (one, _) = replica(&routes, &key).await;
    let (two, two_publisher) = replica(&routes, &key).await;

    // Two cookie-less requests rotate: stickiness is only for clients with the cookie.
    let (first, set) = get(one.listen_addr, &[]).await;
    let (second, _) = get(one.listen_addr, &[]).await;
    assert_ne!(first, second);
    let cookie = pair(&set.expect("Set-Cookie on a cookie-less request"));

    for _ in 0..6 {
        let (name, refreshed) = get(two.listen_addr, &[("cookie", &cookie)]).await;
        assert_eq!(name, first, "replica two honours replica one's cookie");
        assert!(refreshed.is_some(), "every response refreshes the cookie");
    }
    let (_ws, name) = ws_to(two.listen_addr, &[("cookie", &cookie)]).await;
    assert_eq!(name, first, "the WebSocket follows the cookie too");

    // A replica with another key ignores the cookie and rotates.
    let (other, _) = replica(
        &routes,
        &StickyKey::new(b"some other sixteen+ key").unwrap(),
    )
    .await;
    let mut names = std::collections::HashSet::new();
    for _ in 0..3 {
        names.insert(get(other.listen_addr, &[("cookie", &cookie)]).await.0);
    }
    assert_eq!(names.len(), 3, "a foreign cookie does not steer: {names:?}");

    // The cookie's backend leaves.
    let remaining: Vec<SocketAddr> = ["a", "b", "c"]
        .iter()
        .zip(&addrs)
        .filter(|(name, _)| **name != first)
        .map(|(_, addr)| *addr)
        .collect();
    assert!(two_publisher
        .publish(&[echo_route(&remaining, sticky)])
        .problems
        .is_empty());
    let (moved, renewed) = get(two.listen_addr, &[("cookie", &cookie)]).await;
    assert_ne!(moved, first);
    let renewed = pair(&renewed.expect("a new cookie for the new backend"));
    assert_ne!(renewed, cookie);
    for _ in 0..3 {
        assert_eq!(get(two.listen_addr, &[("cookie", &renewed)]).await.0, moved);
    }
}

/// ConsistentHash on a header sends each value to the same backend on two independent
/// replicas (different sticky keys do not matter), and different values spread.
#[tokio::test]
async fn consistent_hash_agrees_across_replicas() {
    let echoes = [
        Echo::start("a").await,
        Echo::start("b").await,
        Echo::start("c").await,
    ];
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let hashed = LoadBalancerOptions {
        kind: Some("ConsistentHash".into()),
        hash_on: Some("header".into()),
        key: Some("X-User".into()),
        ..Default::default()
    };
    let routes = [echo_route(&addrs, hashed)];
    let one = Gateway::start(&routes).await;
    let two = Gateway::start(&routes).await;
    let mut used = std::collections::HashSet::new();
    for i in 0..30 {
        let user = format!("user-{i}");
        let h = [("x-user", user.as_str())];
        let (a, _) = get(one.server.listen_addr, &h).await;
        let (b, _) = get(two.server.listen_addr, &h).await;
        let (_ws, ws_name) = ws_to(two.server.listen_addr, &h).await;
        assert_eq!(a, b, "{user}");
        assert_eq!(a, ws_name, "{user}: WebSocket and HTTP agree");
        used.insert(a);
    }
    assert_eq!(used.len(), 3, "30 users spread over 3 backends");
}

fn cel_errors(lb: Value) -> Vec<String> {
    use kube::CustomResourceExt;
    let crd = wsgate::api::WsRoute::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap())
        .unwrap();
    let object = json!({
        "apiVersion": "wsgate.io/v1alpha1",
        "kind": "WsRoute",
        "metadata": {"name": "chat", "namespace": "apps"},
        "spec": {
            "upstreamPathTemplate": "/chat",
            "downstreamPathTemplate": "/chat",
            "serviceName": "chat",
            "servicePort": 80,
            "loadBalancerOptions": lb,
        },
    });
    match kube::core::cel::Validator::new().validate(&schema, &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.to_string().lines().map(str::to_string).collect(),
    }
}

/// The CRD rejects balancer options that cannot work at `kubectl apply` time.
#[test]
fn crd_rules_for_balancer_options() {
    for ok in [
        json!({"type": "CookieStickySessions", "key": "sid", "expiry": 60000}),
        json!({"type": "ConsistentHash", "hashOn": "clientIp"}),
        json!({"type": "ConsistentHash", "hashOn": "header", "key": "X-User"}),
        json!({"type": "RoundRobin", "pinSignalRConnections": true}),
        json!({"type": "LeastConnection", "key": "ignored", "expiry": 0}),
    ] {
        assert!(
            cel_errors(ok.clone()).is_empty(),
            "{ok}: {:?}",
            cel_errors(ok.clone())
        );
    }
    for (bad, message) in [
        (json!({"type": "CookieStickySessions"}), "needs key"),
        (json!({"type": "ConsistentHash"}), "hashOn is required"),
        (
            json!({"type": "RoundRobin", "hashOn": "clientIp"}),
            "hashOn is required",
        ),
        (
            json!({"type": "ConsistentHash", "hashOn": "query"}),
            "need key",
        ),
    ] {
        let errors = cel_errors(bad.clone());
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{bad}: {errors:?}"
        );
    }
}
