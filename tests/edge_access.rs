//! Who may use a route, through the real gateway on loopback (docs/security.md):
//! `allowedOrigins` on WebSocket upgrades (both request paths) and plain HTTP, Ocelot's IP
//! lists (`securityOptions`) against clients bound to different loopback addresses, and
//! `--trusted-proxies` deciding whether `X-Forwarded-For` names the client. Each refusal is
//! 403 with wsgate's JSON body and counted by reason; what is admitted reaches a real echo
//! backend.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use wsgate::api::{SecurityOptions, WsRouteSpec};
use wsgate::app::Server;
use wsgate::model::{IpNet, Route};
use wsgate::proxy::ClientAddressOptions;
use wsgate::telemetry::Metrics;

fn message_of(resp: &str) -> String {
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not wsgate's JSON ({e}): {resp}"));
    json["message"].as_str().unwrap_or_default().to_string()
}

/// The gateway on port 0 with `routes`, believing `X-Forwarded-For` from `trusted`.
async fn gateway(routes: &[Route], trusted: &[&str]) -> (Server, Arc<Metrics>) {
    let client_address = ClientAddressOptions {
        trusted_proxies: trusted.iter().map(|t| IpNet::parse(t).unwrap()).collect(),
        proxy_protocol: false,
    };
    gateway_with(routes, client_address).await
}

async fn gateway_with(
    routes: &[Route],
    client_address: ClientAddressOptions,
) -> (Server, Arc<Metrics>) {
    let gw = Gateway::start_configured(
        routes,
        Duration::from_secs(5),
        OffloadOptions::default(),
        None,
        client_address,
    )
    .await;
    (gw.server, gw.metrics)
}

/// How a request is sent.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A WebSocket upgrade as a connection's first request (connection.rs).
    DirectUpgrade,
    /// A WebSocket upgrade after a plain request on a kept-alive connection (hyper).
    KeptAliveUpgrade,
    /// Plain HTTP (hyper).
    PlainHttp,
}

/// Sends `GET path` with `headers` from the local address `from` and returns the answer's
/// status line and headers plus body (the connection is closed after it).
async fn send(gw: SocketAddr, from: &str, via: Via, path: &str, headers: &[&str]) -> String {
    within("request", async {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut s: TcpStream = socket.connect(gw).await.unwrap();
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: a\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        let upgrade = !matches!(via, Via::PlainHttp);
        if upgrade {
            head.push_str(RAW_UPGRADE);
        }
        if matches!(via, Via::PlainHttp) {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        if matches!(via, Via::KeptAliveUpgrade) {
            // A plain request first (whatever its answer), on a connection that stays open.
            s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            read_response(&mut s).await;
        }
        s.write_all(head.as_bytes()).await.unwrap();
        read_response(&mut s).await
    })
    .await
}

const UPGRADES: [Via; 2] = [Via::DirectUpgrade, Via::KeptAliveUpgrade];

fn refusals(metrics: &Metrics, route: &str, reason: &str) -> u64 {
    let prefix = format!(r#"wsgate_refusals_total{{route="{route}",reason="{reason}"}} "#);
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|n| n.parse().unwrap()))
        .unwrap_or(0)
}

fn with_origins(echo: &Echo, origins: &[&str]) -> WsRouteSpec {
    let mut s = spec("/{everything}", "/{everything}", &[echo.addr]);
    s.allowed_origins = Some(origins.iter().map(|o| o.to_string()).collect());
    s
}

/// An upgrade whose `Origin` is listed (exactly, or under a wildcard; any case, default
/// port spelled or not) reaches the backend; another origin, a look-alike, another scheme
/// or port, `null` and no `Origin` at all get 403, on both request paths.
#[tokio::test]
async fn upgrades_need_an_allowed_origin() {
    let echo = Echo::start("e").await;
    let s = with_origins(&echo, &["https://app.example.com", "https://*.example.com"]);
    let (gw, metrics) = gateway(&[route("origins", 0, &s)], &[]).await;
    let addr = gw.listen_addr;
    for origin in [
        "https://app.example.com",
        "https://APP.example.com:443",
        "https://a.b.example.com",
    ] {
        for via in UPGRADES {
            let resp = send(
                addr,
                "127.0.0.1",
                via,
                "/chat",
                &[&format!("Origin: {origin}")],
            )
            .await;
            assert_eq!(status_of(&resp), 101, "{via:?} {origin}: {resp}");
        }
    }
    let mut refused = 0;
    for origin in [
        Some("https://evil.com"),
        Some("https://example.com"),
        Some("https://app.example.com.evil.com"),
        Some("http://app.example.com"),
        Some("https://app.example.com:8443"),
        Some("null"),
        None,
    ] {
        for via in UPGRADES {
            let header = origin.map(|o| format!("Origin: {o}"));
            let headers: Vec<&str> = header.iter().map(String::as_str).collect();
            let resp = send(addr, "127.0.0.1", via, "/chat", &headers).await;
            assert_eq!(status_of(&resp), 403, "{via:?} {origin:?}: {resp}");
            let message = message_of(&resp);
            match origin {
                Some(o) => assert!(message.contains(&format!("`Origin: {o}`")), "{message}"),
                None => assert!(message.contains("without `Origin`"), "{message}"),
            }
            refused += 1;
        }
    }
    // Two `Origin` headers, the first one allowed: refused.
    for via in UPGRADES {
        let resp = send(
            addr,
            "127.0.0.1",
            via,
            "/chat",
            &[
                "Origin: https://app.example.com",
                "Origin: https://evil.com",
            ],
        )
        .await;
        assert_eq!(status_of(&resp), 403, "{via:?}: {resp}");
        refused += 1;
    }
    assert_eq!(refusals(&metrics, "origins", "origin"), refused);
}

/// A real WebSocket client with an allowed `Origin` talks through the route.
#[tokio::test]
async fn an_allowed_origin_gets_a_working_websocket() {
    let echo = Echo::start("e").await;
    let s = with_origins(&echo, &["http://localhost:3000"]);
    let (gw, _metrics) = gateway(&[route("origins", 0, &s)], &[]).await;
    let url = format!("ws://{}/chat", gw.listen_addr);
    let mut ws = connect_with(&url, &[("Origin", "http://localhost:3000")]).await;
    relay_checks::round_trip(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("hello"),
    )
    .await;
}

/// Plain HTTP on a route with `allowedOrigins`: a listed `Origin` and no `Origin` (a
/// browser's same-origin GET) pass; another `Origin` gets 403.
#[tokio::test]
async fn plain_http_is_refused_only_with_another_origin() {
    let echo = Echo::start("e").await;
    let s = with_origins(&echo, &["https://app.example.com"]);
    let (gw, metrics) = gateway(&[route("origins", 0, &s)], &[]).await;
    let addr = gw.listen_addr;
    let ok = send(addr, "127.0.0.1", Via::PlainHttp, "/negotiate", &[]).await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    let ok = send(
        addr,
        "127.0.0.1",
        Via::PlainHttp,
        "/negotiate",
        &["Origin: https://app.example.com"],
    )
    .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    let refused = send(
        addr,
        "127.0.0.1",
        Via::PlainHttp,
        "/negotiate",
        &["Origin: https://evil.com"],
    )
    .await;
    assert_eq!(status_of(&refused), 403, "{refused}");
    assert!(
        message_of(&refused).contains("route origins does not allow `Origin: https://evil.com`")
    );
    assert_eq!(refusals(&metrics, "origins", "origin"), 1);
}

fn with_ip_rules(echo: &Echo, allowed: &[&str], blocked: &[&str], exclude: bool) -> WsRouteSpec {
    let mut s = spec("/{everything}", "/{everything}", &[echo.addr]);
    s.security_options = Some(SecurityOptions {
        ip_allowed_list: allowed.iter().map(|a| a.to_string()).collect(),
        ip_blocked_list: blocked.iter().map(|a| a.to_string()).collect(),
        exclude_allowed_from_blocked: Some(exclude),
    });
    s
}

/// Clients on different loopback addresses: the allowed list admits only its addresses,
/// the blocked list refuses its own, and with `excludeAllowedFromBlocked` an allowed
/// address inside a blocked block gets in. Every request kind is checked.
#[tokio::test]
async fn ip_lists_admit_and_refuse_by_client_address() {
    let echo = Echo::start("e").await;
    let allowed = with_ip_rules(&echo, &["127.0.0.2", "127.0.1.0/24"], &[], false);
    let mut blocked = with_ip_rules(&echo, &[], &["127.0.0.3/32"], false);
    blocked.upstream_path_template = "/blocked/{everything}".into();
    let mut carved = with_ip_rules(&echo, &["127.0.2.7"], &["127.0.2.0/24"], true);
    carved.upstream_path_template = "/carved/{everything}".into();
    // Where a kept-alive connection's first request goes: a route open to everyone.
    let open = spec("/first", "/first", &[echo.addr]);
    let (gw, metrics) = gateway(
        &[
            route("open", 0, &open),
            route("blocked", 0, &blocked),
            route("carved", 1, &carved),
            route("allowed", 2, &allowed),
        ],
        &[],
    )
    .await;
    let addr = gw.listen_addr;
    for via in [Via::DirectUpgrade, Via::KeptAliveUpgrade, Via::PlainHttp] {
        let want_ok = if matches!(via, Via::PlainHttp) {
            200
        } else {
            101
        };
        for (from, path, status) in [
            ("127.0.0.2", "/x", want_ok),
            ("127.0.1.9", "/x", want_ok),
            ("127.0.0.1", "/x", 403),
            ("127.0.0.4", "/x", 403),
            ("127.0.0.1", "/blocked/x", want_ok),
            ("127.0.0.3", "/blocked/x", 403),
            ("127.0.2.7", "/carved/x", want_ok),
            ("127.0.2.8", "/carved/x", 403),
        ] {
            let resp = send(addr, from, via, path, &[]).await;
            assert_eq!(
                status_of(&resp),
                status,
                "{via:?} from {from} to {path}: {resp}"
            );
            if status == 403 {
                assert!(
                    message_of(&resp).contains(&format!("does not allow client address {from}")),
                    "{resp}"
                );
            }
        }
    }
    assert_eq!(refusals(&metrics, "allowed", "ip"), 6);
    assert_eq!(refusals(&metrics, "blocked", "ip"), 3);
    assert_eq!(refusals(&metrics, "carved", "ip"), 3);
}

/// `X-Forwarded-For` names the client only when the peer is a trusted proxy, and then
/// its rightmost untrusted address: a client cannot pick its address by sending the
/// header, neither directly nor by prepending to a proxy's.
#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let echo = Echo::start("e").await;
    let s = with_ip_rules(&echo, &["198.51.100.0/24", "127.0.0.2"], &[], false);
    let routes = [route("fwd", 0, &s)];
    let (trusting, trusting_metrics) = gateway(&routes, &["127.0.0.1/32", "10.0.0.0/8"]).await;
    let (untrusting, _) = gateway(&routes, &[]).await;
    for via in [Via::DirectUpgrade, Via::PlainHttp] {
        let ok = if matches!(via, Via::PlainHttp) {
            200
        } else {
            101
        };
        for (gw, from, xff, status) in [
            // The trusted proxy 127.0.0.1 forwards for an allowed client.
            (&trusting, "127.0.0.1", Some("198.51.100.7"), ok),
            (
                &trusting,
                "127.0.0.1",
                Some("203.0.113.1, 198.51.100.7, 10.1.2.3"),
                ok,
            ),
            // A client that prepends an allowed address is still itself.
            (
                &trusting,
                "127.0.0.1",
                Some("198.51.100.7, 203.0.113.1"),
                403,
            ),
            (&trusting, "127.0.0.1", None, 403),
            // Not a trusted proxy: the header is not believed either way.
            (&trusting, "127.0.0.2", Some("203.0.113.1"), ok),
            (&trusting, "127.0.0.3", Some("198.51.100.7"), 403),
            (&untrusting, "127.0.0.1", Some("198.51.100.7"), 403),
        ] {
            let header = xff.map(|x| format!("X-Forwarded-For: {x}"));
            let headers: Vec<&str> = header.iter().map(String::as_str).collect();
            let resp = send(gw.listen_addr, from, via, "/x", &headers).await;
            assert_eq!(
                status_of(&resp),
                status,
                "{via:?} from {from} with {xff:?}: {resp}"
            );
        }
    }
    let resp = send(
        trusting.listen_addr,
        "127.0.0.1",
        Via::PlainHttp,
        "/x",
        &["X-Forwarded-For: 198.51.100.7, 203.0.113.9"],
    )
    .await;
    assert!(
        message_of(&resp).contains("does not allow client address 203.0.113.9"),
        "the refusal names the forwarded client: {resp}"
    );
    assert_eq!(refusals(&trusting_metrics, "fwd", "ip"), 7);
}

/// Sends `first` bytes then a request on one connection; the whole answer, empty when the
/// gateway closed without one.
async fn raw_after(gw: SocketAddr, first: &[u8], request: &str) -> String {
    let mut bytes = first.to_vec();
    bytes.extend_from_slice(request.as_bytes());
    raw_request(gw, &bytes).await
}

/// A PROXY protocol v2 header for a TCP over IPv4 connection from `source`.
fn proxy_v2(source: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(source) = source else {
        panic!("IPv4 only here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&source.ip().octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

/// With `--proxy-protocol`, the address in each connection's PROXY header (v1 text or v2
/// binary) is the client: the IP lists check it and the backend gets it in
/// `X-Forwarded-For`. A health check's `UNKNOWN` keeps the TCP peer; a connection without a
/// valid header is closed without an answer.
#[tokio::test]
async fn proxy_protocol_headers_name_the_client() {
    let echo = Echo::start("e").await;
    let s = with_ip_rules(&echo, &["203.0.113.0/24"], &[], false);
    let mut health = spec("/healthz", "/healthz", &[echo.addr]);
    health.upstream_http_method = vec!["GET".into()];
    let (gw, metrics) = gateway_with(
        &[route("health", 0, &health), route("pp", 1, &s)],
        ClientAddressOptions {
            trusted_proxies: vec![],
            proxy_protocol: true,
        },
    )
    .await;
    let addr = gw.listen_addr;
    let upgrade = format!("GET /chat HTTP/1.1\r\nHost: a\r\n{RAW_UPGRADE}\r\n");
    let plain = "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let v1_in = b"PROXY TCP4 203.0.113.7 127.0.0.1 4711 8080\r\n";
    let v1_out = b"PROXY TCP4 192.0.2.7 127.0.0.1 4711 8080\r\n";
    let v2_in = proxy_v2("203.0.113.9:5000".parse().unwrap());
    let v2_out = proxy_v2("192.0.2.9:5000".parse().unwrap());
    for (first, status) in [
        (v1_in.as_slice(), 101),
        (v2_in.as_slice(), 101),
        (v1_out.as_slice(), 403),
        (v2_out.as_slice(), 403),
    ] {
        let resp = raw_after(addr, first, &upgrade).await;
        assert_eq!(status_of(&resp), status, "{first:?}: {resp}");
    }
    let resp = raw_after(addr, v1_out, plain).await;
    assert!(
        message_of(&resp).contains("does not allow client address 192.0.2.7"),
        "{resp}"
    );
    assert_eq!(refusals(&metrics, "pp", "ip"), 3);
    // The echo answers plain HTTP with the request's headers: the PROXY source was appended.
    let resp = raw_after(addr, &v2_in, plain).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(
        resp.contains("203.0.113.9"),
        "X-Forwarded-For names the client: {resp}"
    );
    // A health check without a client address: the TCP peer (127.0.0.1) is the client.
    let resp = raw_after(
        addr,
        b"PROXY UNKNOWN\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    for no_header in [
        b"".as_slice(),
        b"PROXY TCP4 nobody 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4",
    ] {
        let resp = raw_after(addr, no_header, plain).await;
        assert_eq!(resp, "", "closed without an answer after {no_header:?}");
    }
}

/// `hashOn: clientIp` hashes the client address `--trusted-proxies` found, not the proxy's:
/// behind one trusted proxy, one client stays on one backend and many clients spread over
/// both.
#[tokio::test]
async fn consistent_hash_on_client_ip_uses_the_forwarded_client() {
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let mut s = spec("/{everything}", "/{everything}", &[a.addr, b.addr]);
    s.load_balancer_options = Some(wsgate::api::LoadBalancerOptions {
        kind: Some("ConsistentHash".into()),
        hash_on: Some("clientIp".into()),
        ..Default::default()
    });
    let (gw, _) = gateway(&[route("hash", 0, &s)], &["127.0.0.1/32"]).await;
    let backend_of = |resp: &str| {
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        json["echo"].as_str().unwrap().to_string()
    };
    let mut seen = std::collections::BTreeSet::new();
    for client in 1..=20 {
        let xff = format!("X-Forwarded-For: 198.51.100.{client}");
        let first = send(gw.listen_addr, "127.0.0.1", Via::PlainHttp, "/x", &[&xff]).await;
        let again = send(gw.listen_addr, "127.0.0.1", Via::PlainHttp, "/x", &[&xff]).await;
        assert_eq!(
            backend_of(&first),
            backend_of(&again),
            "client {client} moved"
        );
        seen.insert(backend_of(&first));
    }
    assert_eq!(
        seen.len(),
        2,
        "20 clients behind one proxy all hashed alike: {seen:?}"
    );
}
