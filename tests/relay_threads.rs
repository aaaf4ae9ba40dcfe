//! Relays that moved from the async runtime to a relay thread behave as before they moved:
//! every kind of message passes unchanged, a side that dies gets the other side a Close,
//! the drain and the idle timeout send Close 1001, and the route's metrics count what
//! passed. Here relays move after their first message (the default is 128), and every
//! test first checks, by the gateway's own metric, that its relay did move. The second half
//! does it all again over wss, where the relay thread drives rustls itself.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::relay_checks::*;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsgate::model::Route;

const MOVE_AFTER_FIRST_MESSAGE: OffloadOptions = OffloadOptions {
    threads: 2,
    after_messages: 1,
};

async fn moving_gateway(routes: &[Route]) -> Gateway {
    Gateway::start_with_offload(routes, Duration::from_secs(5), MOVE_AFTER_FIRST_MESSAGE).await
}

async fn gateway_to(backend: SocketAddr) -> Gateway {
    moving_gateway(&[route(
        "r",
        0,
        &spec("/{everything}", "/{everything}", &[backend]),
    )])
    .await
}

/// The value of the metric line starting with `series` (name and labels).
fn metric(gw: &Gateway, series: &str) -> Option<u64> {
    gw.metrics.encode().lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse::<f64>().ok().map(|v| v as u64)
    })
}

/// Waits until `n` relays have moved and `on_threads` run on relay threads.
async fn relays_moved(gw: &Gateway, n: u64, on_threads: u64) {
    eventually("relays moved to relay threads", || {
        (metric(gw, "wsgate_relays_moved_total") == Some(n)
            && metric(gw, "wsgate_relays_on_threads") == Some(on_threads))
        .then_some(())
    })
    .await;
}

/// Text, binary, empty and 16 MiB messages (which back up in the relay's backlog), then a
/// fragmented message with a ping between its fragments, all after the move; the Close
/// handshake ends the relay on its thread and the route's metrics count every message.
#[tokio::test]
async fn moved_relay_passes_every_kind_and_size_and_counts_them() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(echo.addr).await;
    let ws = connect(&gw.ws("/chat")).await;
    passes_every_kind_and_size_and_counts_them(&gw, ws).await;
}

/// The checks of `moved_relay_passes_every_kind_and_size_and_counts_them` on `ws`, a fresh
/// connection through `gw`'s route `r` (plain or TLS).
async fn passes_every_kind_and_size_and_counts_them(
    gw: &Gateway,
    mut ws: WebSocketStream<impl Peer>,
) {
    round_trip(&mut ws, Message::text("first")).await;
    relays_moved(gw, 1, 1).await;

    every_kind_and_size_round_trips(&mut ws).await;
    fragmented_message_with_ping_round_trips(&mut ws).await;

    within("close", ws.close(None)).await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    relays_moved(gw, 1, 0).await;
    // "first", five messages and the fragmented one, each way.
    eventually("message counts", || {
        let up = r#"wsgate_messages_total{route="r",direction="ClientToUpstream"}"#;
        let down = r#"wsgate_messages_total{route="r",direction="UpstreamToClient"}"#;
        (metric(gw, up) == Some(7) && metric(gw, down) == Some(7)).then_some(())
    })
    .await;
    assert_eq!(
        metric(gw, r#"wsgate_connections_active{route="r"}"#),
        Some(0)
    );
}

/// The backend dies without a Close after the move: the client gets Close 1011.
#[tokio::test]
async fn moved_relay_sends_1011_when_the_backend_dies() {
    let (backend, _seen) = backend_dying_on_cue().await;
    let gw = gateway_to(backend).await;
    let ws = connect(&gw.ws("/x")).await;
    sends_1011_when_the_backend_dies(&gw, ws).await;
}

/// After the move, `ws`'s backend (`backend_dying_on_cue`) is told to die: the client gets
/// Close 1011, and the relay ends once the client's Close reply went out.
async fn sends_1011_when_the_backend_dies(gw: &Gateway, mut ws: WebSocketStream<impl Peer>) {
    round_trip(&mut ws, Message::text("one")).await;
    relays_moved(gw, 1, 1).await;
    within("send", ws.send(Message::text("die"))).await.unwrap();
    match next_msg(&mut ws).await {
        Message::Close(Some(c)) => assert_eq!(c.code, CloseCode::Error),
        other => panic!("expected Close 1011, got {other:?}"),
    }
    // The client's Close reply goes out as it reads on; then the relay ends.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    relays_moved(gw, 1, 0).await;
}

/// The client vanishes without a Close after the move: the backend gets Close 1001.
#[tokio::test]
async fn moved_relay_sends_1001_to_the_backend_when_the_client_vanishes() {
    let (backend, seen) = backend_dying_on_cue().await;
    let gw = gateway_to(backend).await;
    let ws = connect(&gw.ws("/bye")).await;
    client_vanishing_gets_the_backend_1001(&gw, ws, seen).await;
}

/// After the move, `ws` is dropped without a Close (its TCP connection just ends): its
/// backend (`backend_dying_on_cue`, reporting on `seen`) gets Close 1001.
async fn client_vanishing_gets_the_backend_1001(
    gw: &Gateway,
    mut ws: WebSocketStream<impl Peer>,
    seen: tokio::sync::oneshot::Receiver<Option<CloseCode>>,
) {
    round_trip(&mut ws, Message::text("one")).await;
    relays_moved(gw, 1, 1).await;
    drop(ws.into_inner());
    let seen = within("backend sees a Close", seen).await.unwrap();
    assert_eq!(seen, Some(CloseCode::Away));
}

/// The client's own Close code reaches the backend through the relay thread.
#[tokio::test]
async fn moved_relay_passes_the_clients_close_code() {
    let (backend, seen) = backend_dying_on_cue().await;
    let gw = gateway_to(backend).await;
    let mut ws = connect(&gw.ws("/c")).await;
    round_trip(&mut ws, Message::text("one")).await;
    relays_moved(&gw, 1, 1).await;
    let close = CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye".into(),
    };
    within("close", ws.close(Some(close))).await.unwrap();
    let seen = within("backend sees a Close", seen).await.unwrap();
    assert_eq!(seen, Some(CloseCode::Library(4001)));
}

/// The drain reaches moved relays: each client gets Close 1001 "gateway shutting down", and
/// once the clients answer, the drain completes within its budget.
#[tokio::test]
async fn drain_sends_1001_through_relay_threads_and_completes() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(echo.addr).await;
    let mut sockets = Vec::new();
    for i in 0..3 {
        sockets.push(connect(&gw.ws(&format!("/s{i}"))).await);
    }
    drain_sends_1001_and_completes(&gw, sockets).await;
}

/// The drain check on fresh connections through `gw` (plain or TLS): each moves after a
/// message, then the shutdown sends each Close 1001 and completes once they answer.
async fn drain_sends_1001_and_completes(
    gw: &Gateway,
    mut sockets: Vec<WebSocketStream<impl Peer>>,
) {
    for ws in &mut sockets {
        round_trip(ws, Message::text("before")).await;
    }
    let n = sockets.len() as u64;
    relays_moved(gw, n, n).await;
    let (clean, ()) = tokio::join!(gw.server.shutdown(), async {
        for ws in &mut sockets {
            match next_msg(ws).await {
                Message::Close(Some(c)) => {
                    assert_eq!(c.code, CloseCode::Away);
                    assert_eq!(c.reason.as_str(), "gateway shutting down");
                }
                other => panic!("expected Close 1001, got {other:?}"),
            }
            // Reading on flushes the client's Close reply; then the gateway ends it.
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(5), ws.next()).await
            {}
        }
    });
    assert!(clean, "the drain must complete within its budget");
    relays_moved(gw, n, 0).await;
}

/// `timeouts.idle` after the move: a quiet socket gets Close 1001 "idle timeout", one that
/// keeps talking past the limit stays open.
#[tokio::test]
async fn moved_relay_idle_timeout_closes_only_quiet_sockets() {
    let echo = Echo::start("e").await;
    let mut s = spec("/{everything}", "/{everything}", &[echo.addr]);
    s.timeouts = Some(wsgate::api::RouteTimeouts {
        idle: Some("400ms".into()),
        ..Default::default()
    });
    let gw = moving_gateway(&[route("idle", 0, &s)]).await;
    let quiet = connect(&gw.ws("/quiet")).await;
    let busy = connect(&gw.ws("/busy")).await;
    moved_then_idle_limit_closes_only_the_quiet_one(&gw, quiet, busy).await;
}

/// Both connections move after a message; then `idle_limit_closes_only_the_quiet_one`.
async fn moved_then_idle_limit_closes_only_the_quiet_one(
    gw: &Gateway,
    mut quiet: WebSocketStream<impl Peer>,
    mut busy: WebSocketStream<impl Peer>,
) {
    round_trip(&mut quiet, Message::text("moved")).await;
    round_trip(&mut busy, Message::text("moved")).await;
    relays_moved(gw, 2, 2).await;
    idle_limit_closes_only_the_quiet_one(&mut quiet, &mut busy).await;
}

/// With no relay threads (`--relay-threads 0`) nothing moves, however busy.
#[tokio::test]
async fn no_relay_threads_keeps_every_relay_on_the_runtime() {
    let echo = Echo::start("e").await;
    let gw = Gateway::start_with_offload(
        &[route(
            "r",
            0,
            &spec("/{everything}", "/{everything}", &[echo.addr]),
        )],
        Duration::from_secs(5),
        OffloadOptions {
            threads: 0,
            after_messages: 1,
        },
    )
    .await;
    let mut ws = connect(&gw.ws("/x")).await;
    for i in 0..20 {
        round_trip(&mut ws, Message::text(format!("m{i}"))).await;
    }
    assert_eq!(metric(&gw, "wsgate_relays_moved_total"), Some(0));
}

/// A hundred relays moving at once to two threads while every one of them talks, pipelined:
/// each client gets its own messages back in order, and every relay ends when its client
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_relays_move_talk_and_end_at_once() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(echo.addr).await;
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let url = gw.ws(&format!("/c{i}"));
            tokio::spawn(async move {
                let mut ws = connect(&url).await;
                for j in 0..50 {
                    within("send", ws.send(Message::text(format!("{i}-{j}"))))
                        .await
                        .unwrap();
                }
                for j in 0..50 {
                    assert_eq!(next_msg(&mut ws).await, Message::text(format!("{i}-{j}")));
                }
                within("close", ws.close(None)).await.unwrap();
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::from_secs(5), ws.next()).await
                {}
            })
        })
        .collect();
    for client in clients {
        within("client", client).await.unwrap();
    }
    relays_moved(&gw, 100, 0).await;
}

/// `keepalive` after the move: peers that answer keep a quiet connection open past several
/// Pings, and neither sees the other's Pong to wsgate.
#[tokio::test]
async fn moved_relay_keepalive_answered_pings_keep_a_quiet_connection_open() {
    let (backend, mut seen) = recording_backend().await;
    let s = with_keepalive(spec("/{everything}", "/{everything}", &[backend]));
    let gw = moving_gateway(&[route("ka", 0, &s)]).await;
    let mut ws = connect(&gw.ws("/quiet")).await;
    round_trip(&mut ws, Message::text("moved")).await;
    relays_moved(&gw, 1, 1).await;
    keepalive_answered_keeps_a_quiet_connection_open(&mut ws, &mut seen).await;
}

/// `keepalive` after the move: a client that never answers is gone; the backend gets
/// Close 1001.
#[tokio::test]
async fn moved_relay_keepalive_silent_client_is_found_gone() {
    use support::raw_ws::{frame, open_raw_client, FIN, TEXT};
    let (backend, mut seen) = recording_backend().await;
    let s = with_keepalive(spec("/{everything}", "/{everything}", &[backend]));
    let gw = moving_gateway(&[route("ka", 0, &s)]).await;
    let mut client = open_raw_client(gw.server.listen_addr, "/silent").await;
    client.send(&frame(FIN | TEXT, true, b"moved")).await;
    let echo = client.next_frame().await.expect("the echo");
    assert_eq!(echo.payload, b"moved");
    relays_moved(&gw, 1, 1).await;
    keepalive_silent_client_gets_the_backend_1001(client, &mut seen).await;
}

/// `keepalive` after the move: a backend that never answers is gone; the client gets
/// Close 1011.
#[tokio::test]
async fn moved_relay_keepalive_silent_backend_is_found_gone() {
    use support::raw_ws::{accept_raw_backend, frame, FIN, TEXT};
    let backends = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = with_keepalive(spec(
        "/{everything}",
        "/{everything}",
        &[backends.local_addr().unwrap()],
    ));
    let gw = moving_gateway(&[route("ka", 0, &s)]).await;
    let url = gw.ws("/silent");
    let (client, backend) = tokio::join!(connect(&url), accept_raw_backend(&backends));
    let (mut client, mut backend) = (client, backend);
    within("send", client.send(Message::text("moved")))
        .await
        .unwrap();
    let got = backend.next_frame().await.expect("the client's message");
    assert_eq!(got.payload, b"moved");
    backend.send(&frame(FIN | TEXT, false, b"moved")).await;
    assert_eq!(next_msg(&mut client).await, Message::text("moved"));
    relays_moved(&gw, 1, 1).await;
    keepalive_silent_backend_gets_the_client_1011(&mut client, backend).await;
}

// ---- wss: TLS relays on relay threads -----------------------------------------------------
//
// The same checks over TLS: the client speaks wss to the gateway's TLS listener (and in
// one test the backend is wss too), so after the move the relay thread drives rustls
// itself (records read, decrypted, encrypted and written there; close_notify before the
// FIN).

use support::certs::{self, Ca, TlsEcho, Wss};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WSS_HOST: &str = "chat.test";

/// A route for `WSS_HOST` on the TLS listener, its certificate issued by `ca`.
fn wss_route(
    name: &str,
    backend: SocketAddr,
    ca: &Ca,
    edit: impl FnOnce(&mut wsgate::api::WsRouteSpec),
) -> Route {
    let mut s = spec("/{everything}", "/{everything}", &[backend]);
    s.upstream_host = Some(WSS_HOST.into());
    edit(&mut s);
    let mut r = route(name, 0, &s);
    r.certificate = Some(ca.issue(&[WSS_HOST]).certificate(name));
    r
}

async fn wss(gw: &Gateway, path: &str) -> Wss {
    let addr = gw
        .server
        .tls_addr
        .expect("the test gateway has a TLS listener");
    certs::wss_connect(addr, WSS_HOST, path).await.0
}

/// A gateway whose one route `r` relays wss clients to `backend` (plain ws).
async fn wss_gateway_to(backend: SocketAddr) -> Gateway {
    let ca = Ca::new("relay threads CA");
    moving_gateway(&[wss_route("r", backend, &ca, |_| {})]).await
}

/// Every kind and size (16 MiB backs up behind TLS, in rustls' send buffer and the relay's
/// backlog), a fragmented message with a ping, after the move; the Close handshake ends
/// the relay on its thread, and the metrics count every message.
#[tokio::test]
async fn moved_wss_relay_passes_every_kind_and_size_and_counts_them() {
    let echo = Echo::start("e").await;
    let gw = wss_gateway_to(echo.addr).await;
    let ws = wss(&gw, "/chat").await;
    passes_every_kind_and_size_and_counts_them(&gw, ws).await;
}

/// TLS on both sides (a wss backend): both sessions move to the relay thread and every
/// kind and size still crosses.
#[tokio::test]
async fn moved_relay_with_tls_on_both_sides_passes_every_kind_and_size() {
    let ca = Ca::new("relay threads CA");
    let backend = TlsEcho::start("tls-echo", &ca.issue(&["backend.test"])).await;
    let mut r = wss_route("both", backend.addr, &ca, |s| {
        s.downstream_scheme = Some(wsgate::api::DownstreamScheme::Wss);
        s.backend_tls = Some(wsgate::api::BackendTlsSpec {
            server_name: Some("backend.test".into()),
            ..Default::default()
        });
    });
    r.backend_tls.ca = Some(ca.bundle());
    let gw = moving_gateway(&[r]).await;
    let mut ws = wss(&gw, "/both").await;
    round_trip(&mut ws, Message::text("first")).await;
    relays_moved(&gw, 1, 1).await;
    every_kind_and_size_round_trips(&mut ws).await;
    fragmented_message_with_ping_round_trips(&mut ws).await;
    within("close", ws.close(None)).await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    relays_moved(&gw, 1, 0).await;
}

/// The backend dies without a Close after a wss relay moved: the client gets Close 1011,
/// encrypted by the relay thread.
#[tokio::test]
async fn moved_wss_relay_sends_1011_when_the_backend_dies() {
    let (backend, _seen) = backend_dying_on_cue().await;
    let gw = wss_gateway_to(backend).await;
    let ws = wss(&gw, "/x").await;
    sends_1011_when_the_backend_dies(&gw, ws).await;
}

/// The wss client vanishes (TCP closed, no close_notify, no Close) after the move: the
/// backend gets Close 1001.
#[tokio::test]
async fn moved_wss_relay_sends_1001_to_the_backend_when_the_client_vanishes() {
    let (backend, seen) = backend_dying_on_cue().await;
    let gw = wss_gateway_to(backend).await;
    let ws = wss(&gw, "/bye").await;
    client_vanishing_gets_the_backend_1001(&gw, ws, seen).await;
}

/// The drain reaches moved wss relays: each client gets Close 1001 "gateway shutting down"
/// over TLS, and the drain completes within its budget.
#[tokio::test]
async fn drain_sends_1001_through_wss_relays_on_threads_and_completes() {
    let echo = Echo::start("e").await;
    let gw = wss_gateway_to(echo.addr).await;
    let mut sockets = Vec::new();
    for i in 0..3 {
        sockets.push(wss(&gw, &format!("/s{i}")).await);
    }
    drain_sends_1001_and_completes(&gw, sockets).await;
}

/// `timeouts.idle` after a wss relay moved: the quiet one gets Close 1001 "idle timeout",
/// the busy one stays open.
#[tokio::test]
async fn moved_wss_relay_idle_timeout_closes_only_quiet_sockets() {
    let echo = Echo::start("e").await;
    let ca = Ca::new("relay threads CA");
    let r = wss_route("idle", echo.addr, &ca, |s| {
        s.timeouts = Some(wsgate::api::RouteTimeouts {
            idle: Some("400ms".into()),
            ..Default::default()
        });
    });
    let gw = moving_gateway(&[r]).await;
    let quiet = wss(&gw, "/quiet").await;
    let busy = wss(&gw, "/busy").await;
    moved_then_idle_limit_closes_only_the_quiet_one(&gw, quiet, busy).await;
}

/// `keepalive` after a wss relay moved: wsgate's Pings go out encrypted, the client's Pongs
/// are taken in, and the quiet connection stays open.
#[tokio::test]
async fn moved_wss_relay_keepalive_answered_pings_keep_a_quiet_connection_open() {
    let (backend, mut seen) = recording_backend().await;
    let ca = Ca::new("relay threads CA");
    let r = wss_route("ka", backend, &ca, |s| *s = with_keepalive(s.clone()));
    let gw = moving_gateway(&[r]).await;
    let mut ws = wss(&gw, "/quiet").await;
    round_trip(&mut ws, Message::text("moved")).await;
    relays_moved(&gw, 1, 1).await;
    keepalive_answered_keeps_a_quiet_connection_open(&mut ws, &mut seen).await;
}

/// The end of a wss relay is a clean TLS end, moved or not: after the Close handshake the
/// client reads the backend's Close and then close_notify (a clean end of stream, where a
/// FIN alone is an error).
#[tokio::test]
async fn moved_wss_relay_ends_with_close_notify_before_the_fin() {
    let echo = Echo::start("e").await;
    let gw = wss_gateway_to(echo.addr).await;
    ends_with_close_notify(&gw, true).await;
}

#[tokio::test]
async fn wss_relay_on_the_runtime_ends_with_close_notify_before_the_fin() {
    let echo = Echo::start("e").await;
    let ca = Ca::new("relay threads CA");
    let gw = Gateway::start(&[wss_route("r", echo.addr, &ca, |_| {})]).await;
    ends_with_close_notify(&gw, false).await;
}

/// One message, then the client's Close; the stream must then end with close_notify.
async fn ends_with_close_notify(gw: &Gateway, moves: bool) {
    use support::raw_ws::{close_payload, frame, parse_all, CLOSE, FIN, TEXT};
    let addr = gw.server.tls_addr.expect("TLS listener");
    let (mut tls, _) = certs::tls_connect(addr, WSS_HOST).await.unwrap();
    let upgrade = format!(
        "GET /raw HTTP/1.1\r\nHost: {WSS_HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    within("upgrade", tls.write_all(upgrade.as_bytes()))
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within("101", tls.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let hi = frame(FIN | TEXT, true, b"hi");
    within("send", tls.write_all(&hi)).await.unwrap();
    let mut echoed = vec![0u8; 4];
    within("echo", tls.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed[2..], b"hi");
    if moves {
        relays_moved(gw, 1, 1).await;
    }

    let close = frame(FIN | CLOSE, true, &close_payload(1000, b""));
    within("send Close", tls.write_all(&close)).await.unwrap();
    let mut rest = Vec::new();
    let end = within("the end of the stream", tls.read_to_end(&mut rest)).await;
    assert!(
        end.is_ok(),
        "the stream must end with close_notify, not a bare FIN: {end:?}"
    );
    let frames = parse_all(&rest);
    assert_eq!(frames.len(), 1, "only the Close reply: {frames:?}");
    assert_eq!(frames[0].close_code(), Some(1000));
    if moves {
        relays_moved(gw, 1, 0).await;
    }
}

/// A wss client whose records stop decrypting after the move (bytes written under the TLS
/// layer): the relay thread sends rustls' alert, reads that side no more, and the backend
/// gets Close 1001 as from a client that vanished; the relay ends.
#[tokio::test]
async fn moved_wss_relay_treats_a_corrupt_record_as_the_client_gone() {
    let (backend, seen) = backend_dying_on_cue().await;
    let gw = wss_gateway_to(backend).await;
    let mut ws = wss(&gw, "/corrupt").await;
    round_trip(&mut ws, Message::text("one")).await;
    relays_moved(&gw, 1, 1).await;
    // An application-data record of 64 bytes that no key decrypts.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    let tcp = ws.get_mut().get_mut().0;
    within("write the corrupt record", tcp.write_all(&record))
        .await
        .unwrap();
    let seen = within("backend sees a Close", seen).await.unwrap();
    assert_eq!(seen, Some(CloseCode::Away));
    relays_moved(&gw, 1, 0).await;
}

/// TLS 1.3 key updates after the move, asked by the client (with a request for the
/// gateway's own): the relay thread answers through rustls, and messages keep flowing both
/// ways under the new keys.
#[tokio::test]
async fn moved_wss_relay_follows_key_updates() {
    let echo = Echo::start("e").await;
    let gw = wss_gateway_to(echo.addr).await;
    let mut ws = wss(&gw, "/keys").await;
    round_trip(&mut ws, Message::text("one")).await;
    relays_moved(&gw, 1, 1).await;
    for i in 0..3 {
        ws.get_mut()
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("a TLS 1.3 session can update its keys");
        round_trip(&mut ws, Message::text(format!("after key update {i}"))).await;
    }
    within("close", ws.close(None)).await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    relays_moved(&gw, 1, 0).await;
}
