//! Limits through the real gateway on loopback, with real WebSocket peers: `maxConnections`
//! (503), `maxConnectionsPerClient` (429), `rateLimitOptions` (429) and `--max-connections`
//! (503), each with its `Retry-After`; counts given back however a connection ends, on both
//! request paths, and kept across a reload. Clients come from distinct loopback addresses
//! (127.0.0.2, 127.0.0.3) to be distinct clients.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use wsgate::api::{LimitsSpec, RateLimitOptionsSpec, WsRouteSpec};
use wsgate::app::Server;
use wsgate::model::Route;
use wsgate::table::Publisher;

const ONE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const TWO: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const THREE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// The gateway with `routes` and an optional `--max-connections`.
async fn start(routes: &[Route], max_connections: Option<u32>) -> (Server, Arc<Publisher>) {
    start_with(routes, max_connections, OffloadOptions::default()).await
}

/// `start` with `relay_offload` deciding when relays move to relay threads.
async fn start_with(
    routes: &[Route],
    max_connections: Option<u32>,
    relay_offload: OffloadOptions,
) -> (Server, Arc<Publisher>) {
    let gw = Gateway::start_configured(
        routes,
        Duration::from_secs(5),
        relay_offload,
        max_connections,
        Default::default(),
    )
    .await;
    (gw.server, gw.publisher)
}

fn limited(name: &str, up: &str, backend: SocketAddr, limits: LimitsSpec) -> Route {
    let mut s: WsRouteSpec = spec(up, "/echo", &[backend]);
    s.limits = Some(limits);
    route(name, 0, &s)
}

/// A TCP connection to `gw` from the loopback address `source`.
async fn connect_from(source: IpAddr, gw: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    within("connect to the gateway", socket.connect(gw))
        .await
        .unwrap()
}

/// A raw WebSocket upgrade of `path` from `source`: the answer's head and the connection
/// (a live WebSocket when the answer is 101; dropping it ends the connection).
async fn upgrade_from(source: IpAddr, gw: SocketAddr, path: &str) -> (String, TcpStream) {
    let mut s = connect_from(source, gw).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{RAW_UPGRADE}\r\n").as_bytes())
        .await
        .unwrap();
    let head = within("the gateway's answer", read_http_head(&mut s))
        .await
        .expect("an answer to the upgrade");
    (head, s)
}

/// A plain GET of `path` from `source`: the answer's head.
async fn get_from(source: IpAddr, gw: SocketAddr, path: &str) -> String {
    let mut s = connect_from(source, gw).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    within("the gateway's answer", read_http_head(&mut s))
        .await
        .expect("an answer to the request")
}

fn status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Upgraded connections the route `name` counts now.
fn route_connections(publisher: &Publisher, name: &str) -> u32 {
    let table = publisher.current();
    let route = table
        .routes()
        .iter()
        .find(|r| r.route.id.0 == name)
        .unwrap_or_else(|| panic!("{name} is not in the table"));
    route.admission.connections()
}

/// The value of `wsgate_refusals_total` for `route` and `reason`.
fn refusals(server: &Server, route: &str, reason: &str) -> u64 {
    let text = server.gateway.metrics.encode();
    let labels = format!("route=\"{route}\",reason=\"{reason}\"");
    text.lines()
        .find(|l| l.starts_with("wsgate_refusals_total{") && l.contains(&labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no refusals line for {labels} in\n{text}"))
}

/// Polls upgrades from `source` until one gets 101; returns its connection.
async fn upgrade_eventually(what: &str, source: IpAddr, gw: SocketAddr, path: &str) -> TcpStream {
    eventually_async(what, DEADLINE, || async move {
        let (head, s) = upgrade_from(source, gw, path).await;
        (status(&head) == 101).then_some(s)
    })
    .await
}

/// `maxConnections`: the route's next handshake gets 503 with `Retry-After: 1`, counted as a
/// `connections` refusal, until one of its connections ends; the other route is not limited.
#[tokio::test]
async fn max_connections_is_503_with_retry_after_until_a_connection_ends() {
    let echo = Echo::start("b").await;
    let limits = LimitsSpec {
        max_connections: Some(2),
        ..LimitsSpec::default()
    };
    let routes = [
        limited("capped", "/capped", echo.addr, limits),
        route("open", 1, &spec("/open", "/echo", &[echo.addr])),
    ];
    let (server, publisher) = start(&routes, None).await;
    let gw = server.listen_addr;
    let (h1, c1) = upgrade_from(ONE, gw, "/capped").await;
    let (h2, _c2) = upgrade_from(TWO, gw, "/capped").await;
    assert_eq!((status(&h1), status(&h2)), (101, 101));
    let (h3, _) = upgrade_from(THREE, gw, "/capped").await;
    assert_eq!(status(&h3), 503, "{h3}");
    assert_eq!(header(&h3, "retry-after"), Some("1"));
    assert!(header(&h3, "x-request-id").is_some());
    assert_eq!(refusals(&server, "capped", "connections"), 1);
    let (h4, _c4) = upgrade_from(THREE, gw, "/open").await;
    assert_eq!(status(&h4), 101, "another route has its own count");
    assert_eq!(route_connections(&publisher, "capped"), 2);

    // A client that goes away (TCP closed, no Close frame) gives its slot back.
    drop(c1);
    eventually("the closed connection is given back", || {
        (route_connections(&publisher, "capped") == 1).then_some(())
    })
    .await;
    let _c5 = upgrade_eventually("a slot after a close", THREE, gw, "/capped").await;
    assert_eq!(route_connections(&publisher, "capped"), 2);
}

/// `maxConnectionsPerClient`: the same client's next handshake gets 429 with
/// `Retry-After`; another client address is admitted.
#[tokio::test]
async fn max_connections_per_client_is_429_for_that_client_only() {
    let echo = Echo::start("b").await;
    let limits = LimitsSpec {
        max_connections_per_client: Some(2),
        ..LimitsSpec::default()
    };
    let (server, publisher) = start(&[limited("r", "/chat", echo.addr, limits)], None).await;
    let gw = server.listen_addr;
    let (a, _a) = upgrade_from(ONE, gw, "/chat").await;
    let (b, b_conn) = upgrade_from(ONE, gw, "/chat").await;
    assert_eq!((status(&a), status(&b)), (101, 101));
    let (c, _) = upgrade_from(ONE, gw, "/chat").await;
    assert_eq!(status(&c), 429, "{c}");
    assert_eq!(header(&c, "retry-after"), Some("1"));
    assert!(c.contains("maxConnectionsPerClient"), "{c}");
    let (d, _d) = upgrade_from(TWO, gw, "/chat").await;
    assert_eq!(status(&d), 101, "another client is not limited");
    assert_eq!(refusals(&server, "r", "connections"), 1);
    drop(b_conn);
    let _e = upgrade_eventually("the client's slot back", ONE, gw, "/chat").await;
    assert_eq!(route_connections(&publisher, "r"), 3);
}

/// `rateLimitOptions`: handshakes and plain HTTP requests share one window per client;
/// over `limit`, both get 429 with `Retry-After: periodTimespan`; another client has its
/// own window; a whitelisted client is never counted.
#[tokio::test]
async fn rate_limit_counts_handshakes_and_requests_per_client() {
    let echo = Echo::start("b").await;
    let mut s = spec("/chat", "/echo", &[echo.addr]);
    s.rate_limit_options = Some(RateLimitOptionsSpec {
        enable_rate_limiting: Some(true),
        period: Some("1m".into()),
        period_timespan: Some(30.0),
        limit: Some(3),
        client_whitelist: vec!["127.0.0.3".into()],
    });
    let (server, _publisher) = start(&[route("rated", 0, &s)], None).await;
    let gw = server.listen_addr;
    let (h1, _c1) = upgrade_from(ONE, gw, "/chat").await;
    assert_eq!(status(&h1), 101);
    assert_eq!(status(&get_from(ONE, gw, "/chat").await), 200);
    let (h3, _c3) = upgrade_from(ONE, gw, "/chat").await;
    assert_eq!(status(&h3), 101);
    let (h4, _) = upgrade_from(ONE, gw, "/chat").await;
    assert_eq!(status(&h4), 429, "{h4}");
    assert_eq!(header(&h4, "retry-after"), Some("30"));
    let g = get_from(ONE, gw, "/chat").await;
    assert_eq!(status(&g), 429, "{g}");
    assert_eq!(header(&g, "retry-after"), Some("30"));
    assert_eq!(refusals(&server, "rated", "rate"), 2);

    let (other, _o) = upgrade_from(TWO, gw, "/chat").await;
    assert_eq!(status(&other), 101, "another client has its own window");
    for i in 0..8 {
        let (h, _) = upgrade_from(THREE, gw, "/chat").await;
        assert_eq!(status(&h), 101, "whitelisted client, handshake {i}");
    }
    assert_eq!(refusals(&server, "rated", "rate"), 2);
}

/// A reload (a changed route, a new route) keeps the counts: the route stays full; a reload
/// that raises `maxConnections` admits at once.
#[tokio::test]
async fn connection_counts_survive_a_reload() {
    let echo = Echo::start("b").await;
    let limits = |max| LimitsSpec {
        max_connections: Some(max),
        ..LimitsSpec::default()
    };
    let (server, publisher) = start(&[limited("r", "/chat", echo.addr, limits(1))], None).await;
    let gw = server.listen_addr;
    let (h1, _c1) = upgrade_from(ONE, gw, "/chat").await;
    assert_eq!(status(&h1), 101);

    let mut changed = limited("r", "/chat", echo.addr, limits(1));
    changed.priority = 5;
    let other = route("other", 1, &spec("/other", "/echo", &[echo.addr]));
    let published = publisher.publish(&[changed, other.clone()]);
    assert!(published.problems.is_empty(), "{:?}", published.problems);
    assert_eq!(route_connections(&publisher, "r"), 1);
    let (h2, _) = upgrade_from(TWO, gw, "/chat").await;
    assert_eq!(status(&h2), 503, "still full after the reload: {h2}");

    let published = publisher.publish(&[limited("r", "/chat", echo.addr, limits(2)), other]);
    assert!(published.problems.is_empty(), "{:?}", published.problems);
    let (h3, _c3) = upgrade_from(TWO, gw, "/chat").await;
    assert_eq!(status(&h3), 101, "{h3}");
    assert_eq!(route_connections(&publisher, "r"), 2);
}

/// Counts come back however a connection ends and on either request path: a Close from the
/// client, the backend closing, and an upgrade on a kept-alive connection (hyper's path).
#[tokio::test]
async fn counts_are_released_on_every_end_and_both_paths() {
    let echo = Echo::start("b").await;
    let limits = LimitsSpec {
        max_connections: Some(1),
        ..LimitsSpec::default()
    };
    let mut s = spec("/{everything}", "/{everything}", &[echo.addr]);
    s.limits = Some(limits);
    let (server, publisher) = start(&[route("r", 0, &s)], None).await;
    let gw = server.listen_addr;
    let url = format!("ws://{gw}/chat");
    let released = |what: &'static str| {
        let publisher = Arc::clone(&publisher);
        async move {
            eventually(what, || {
                (route_connections(&publisher, "r") == 0).then_some(())
            })
            .await
        }
    };

    // A Close from the client.
    let mut ws = connect(&url).await;
    let (full, _) = upgrade_from(TWO, gw, "/chat").await;
    assert_eq!(status(&full), 503);
    within("close", ws.close(None)).await.unwrap();
    released("a client's Close gives the slot back").await;

    // The backend closing (echo's `close=1000`).
    // The client reads it (answering the Close, as a client does) and the relay ends.
    let mut ws = connect(&format!("ws://{gw}/chat?close=1000")).await;
    within("the backend's Close", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    released("the backend's Close gives the slot back").await;

    // hyper's path: a plain request (a 204, no body), then an upgrade on the same
    // connection.
    let mut kept = connect_from(ONE, gw).await;
    kept.write_all(b"GET /plain/status/204 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut kept, &mut buf, b"\r\n\r\n").await;
    assert_eq!(status(&String::from_utf8_lossy(&buf)), 204);
    kept.write_all(format!("GET /chat HTTP/1.1\r\nHost: gw\r\n{RAW_UPGRADE}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    read_until(&mut kept, &mut answer, b"\r\n\r\n").await;
    assert_eq!(status(&String::from_utf8_lossy(&answer)), 101);
    eventually("hyper's upgrade is counted", || {
        (route_connections(&publisher, "r") == 1).then_some(())
    })
    .await;
    let (full, _) = upgrade_from(TWO, gw, "/chat").await;
    assert_eq!(
        status(&full),
        503,
        "the direct path sees hyper's connection"
    );
    drop(kept);
    released("hyper's relay gives the slot back").await;
    let _again = upgrade_eventually("a slot again", TWO, gw, "/chat").await;
}

/// `--max-connections`: upgraded connections and plain HTTP requests in flight across
/// routes; over it, 503 with `Retry-After: 1` on both, counted without a route; a long
/// poll holds its slot until its response ends.
#[tokio::test]
async fn process_max_connections_counts_upgrades_and_requests_in_flight() {
    let echo = Echo::start("b").await;
    let routes = [
        route("a", 0, &spec("/a/{rest}", "/{rest}", &[echo.addr])),
        route("b", 1, &spec("/b/{rest}", "/{rest}", &[echo.addr])),
    ];
    let (server, publisher) = start(&routes, Some(2)).await;
    let gw = server.listen_addr;
    let (h1, c1) = upgrade_from(ONE, gw, "/a/chat").await;
    let (h2, _c2) = upgrade_from(TWO, gw, "/b/chat").await;
    assert_eq!((status(&h1), status(&h2)), (101, 101));
    let (h3, _) = upgrade_from(THREE, gw, "/a/chat").await;
    assert_eq!(status(&h3), 503, "{h3}");
    assert_eq!(header(&h3, "retry-after"), Some("1"));
    assert!(h3.contains("--max-connections"), "{h3}");
    let g = get_from(THREE, gw, "/b/plain").await;
    assert_eq!(status(&g), 503, "{g}");
    assert_eq!(refusals(&server, "", "connections"), 2);
    assert_eq!(
        route_connections(&publisher, "a"),
        1,
        "a refusal by the process's limit gives the route's slot back"
    );

    drop(c1);
    let gateway = Arc::clone(&server.gateway);
    eventually("the closed connection is given back", || {
        (gateway.connections.get() == 1).then_some(())
    })
    .await;
    // A held long poll takes the free slot until it is answered.
    let poll = tokio::spawn(get_from(ONE, gw, "/a/poll?hold_ms=1500"));
    eventually("the long poll is counted", || {
        (gateway.connections.get() == 2).then_some(())
    })
    .await;
    let (h4, _) = upgrade_from(THREE, gw, "/a/chat").await;
    assert_eq!(status(&h4), 503, "the long poll holds a slot: {h4}");
    assert_eq!(status(&within("the long poll", poll).await.unwrap()), 200);
    eventually("the answered poll is given back", || {
        (gateway.connections.get() == 1).then_some(())
    })
    .await;
    let _c5 = upgrade_eventually("a slot after the poll", THREE, gw, "/a/chat").await;
}

/// A relay that moved to a relay thread still holds its slot, and gives it back when it ends
/// there.
#[tokio::test]
async fn a_relay_on_a_relay_thread_holds_and_gives_back_its_slot() {
    use tokio_tungstenite::tungstenite::Message;
    let echo = Echo::start("b").await;
    let limits = LimitsSpec {
        max_connections: Some(1),
        ..LimitsSpec::default()
    };
    let move_at_once = OffloadOptions {
        threads: 1,
        after_messages: 1,
    };
    let routes = [limited("r", "/chat", echo.addr, limits)];
    let (server, publisher) = start_with(&routes, None, move_at_once).await;
    let gw = server.listen_addr;
    let mut ws = connect(&format!("ws://{gw}/chat")).await;
    within("send", ws.send(Message::text("one"))).await.unwrap();
    let echoed = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("one"));
    let metrics = Arc::clone(&server.gateway.metrics);
    eventually("the relay moved to a relay thread", || {
        metrics
            .encode()
            .lines()
            .any(|l| l == "wsgate_relays_on_threads 1")
            .then_some(())
    })
    .await;
    assert_eq!(route_connections(&publisher, "r"), 1);
    let (full, _) = upgrade_from(TWO, gw, "/chat").await;
    assert_eq!(status(&full), 503);
    within("close", ws.close(None)).await.unwrap();
    within("the close handshake", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    eventually("the slot given back from the relay thread", || {
        (route_connections(&publisher, "r") == 0).then_some(())
    })
    .await;
}

/// `--max-connections` on the real binary's command line.
#[tokio::test]
async fn max_connections_flag_limits_the_binary() {
    let echo = Echo::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!(
            "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata: {{name: chat}}\nspec:\n  upstreamPathTemplate: /chat\n  downstreamPathTemplate: /echo\n  downstreamHostAndPorts: [{{host: 127.0.0.1, port: {}}}]\n",
            echo.addr.port()
        ),
    )
    .unwrap();
    let args = [
        "run",
        "--routes",
        "routes.yaml",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--max-connections",
        "1",
    ];
    let process = Process::start(&args, dir.path()).await;
    let gw = process.listening.listen;
    let (first, _first) = upgrade_from(ONE, gw, "/chat").await;
    assert_eq!(status(&first), 101, "{first}");
    let (second, _) = upgrade_from(TWO, gw, "/chat").await;
    assert_eq!(status(&second), 503, "{second}");
    assert_eq!(header(&second, "retry-after"), Some("1"));
    assert!(second.contains("--max-connections"), "{second}");
}
